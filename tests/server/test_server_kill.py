"""SIGKILL the server in the middle of a run with 4 client processes; restart it; nothing is lost."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from server_helpers import KEY, free_port

from pbtune.store import SQLStore
from pbtune.testing.server_process import start_server
from pbtune.types import MemberState

STEPS = 30
CLIENT = Path(__file__).with_name("server_kill_client.py")


def _scores_so_far(db: str) -> int:
    store = SQLStore(db)
    try:
        return len(store.scores("pbt")) if store.list_runs() else 0
    finally:
        store.close()


def test_sigkilled_server_restarted_on_its_store_loses_no_score(tmp_path: Path) -> None:
    key_file = tmp_path / "key"
    key_file.write_text(KEY)
    key_file.chmod(0o600)
    space = tmp_path / "space.csv"
    space.write_text("name,min,max,scale\nlr,1e-4,1,log\n")
    port = free_port()
    db = f"sqlite:///{tmp_path}/pbt.db"
    server = start_server(tmp_path, port, key_file, f"sqlite:///{tmp_path}/pbt.db", 4)
    clients = [
        subprocess.Popen([sys.executable, str(CLIENT), f"http://127.0.0.1:{port}", str(key_file), str(space),
                          str(STEPS), str(tmp_path / f"client{i}.json")], cwd=tmp_path,
                         stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
        for i in range(4)
    ]
    try:
        deadline = time.monotonic() + 60
        while _scores_so_far(db) < STEPS * 4 // 3:
            assert time.monotonic() < deadline, "the clients made no progress"
            time.sleep(0.05)
        os.kill(server.pid, signal.SIGKILL)
        server.wait()
        at_kill = _scores_so_far(db)
        assert at_kill < 4 * STEPS, "the run finished before the kill"
        time.sleep(1.0)  # clients keep retrying meanwhile
        server = start_server(tmp_path, port, key_file, f"sqlite:///{tmp_path}/pbt.db", 4)
        for client in clients:
            output, _ = client.communicate(timeout=120)
            assert client.returncode == 0, output.decode()[-3000:]
    finally:
        for process in (*clients, server):
            if process.poll() is None:
                process.kill()
                process.wait()
    results = [json.loads((tmp_path / f"client{i}.json").read_text()) for i in range(4)]
    assert sorted(r["member_id"] for r in results) == [0, 1, 2, 3]
    store = SQLStore(db)
    try:
        for result in results:
            stored = [[s.step, s.score] for s in store.scores("pbt", result["member_id"])]
            assert stored == result["reported"]  # every score once, none lost, none doubled
        assert all(m.state is MemberState.FINISHED for m in store.list_members("pbt"))
        assert sum(r["exploits"] for r in results) == sum(e.kind == "exploit" for e in store.events("pbt")) > 0
    finally:
        store.close()
