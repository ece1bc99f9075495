"""Chaos: SIGKILL a client process and the server in the middle of a run, on SQLite and on
PostgreSQL; restart both. Asserted: every client finishes (no 5xx reached it: a 500 would have
failed it), no acknowledged score is lost, no score is stored twice, and every member's last
checkpoint verifies against its SHA-256."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from abuse_helpers import KEY

from pbtune.checkpoints import CheckpointStore
from pbtune.scaleout.postgres import DEFAULT_ADMIN_URL, reachable, temporary_database
from pbtune.store import SQLStore
from pbtune.testing.server_process import start_server
from pbtune.types import MemberState

STEPS = 30
MEMBERS = 4
CLIENT = Path(__file__).with_name("chaos_client.py")
ADMIN_URL = os.environ.get("PBTUNE_TEST_POSTGRES", DEFAULT_ADMIN_URL)


@pytest.fixture(params=["sqlite", "postgresql"])
def storage(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path}/chaos.db"
        return
    reason = reachable(ADMIN_URL)
    if reason is not None:
        pytest.skip(f"{reason} (set PBTUNE_TEST_POSTGRES)")
    with temporary_database(ADMIN_URL, prefix="pbtune_chaos") as url:
        yield url


def _free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _client(tmp_path: Path, port: int, index: int) -> subprocess.Popen[bytes]:
    return subprocess.Popen([sys.executable, str(CLIENT), f"http://127.0.0.1:{port}", str(tmp_path / "key"),
                             str(tmp_path / "space.csv"), str(STEPS), str(tmp_path / f"client{index}")],
                            cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)


def _logged(tmp_path: Path) -> list[list[float]]:
    rows = []
    for index in range(MEMBERS):
        path = tmp_path / f"client{index}.jsonl"
        if path.exists():
            rows += [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    return rows


def _wait_for(tmp_path: Path, count: int, processes: list[subprocess.Popen[bytes]]) -> None:
    deadline = time.monotonic() + 90
    while len(_logged(tmp_path)) < count:
        assert time.monotonic() < deadline, "the clients made no progress"
        for proc in processes:
            assert proc.poll() in (None, 0), proc.communicate()[0].decode()[-2000:]
        time.sleep(0.05)


@pytest.mark.slow
def test_sigkill_of_a_client_and_of_the_server_loses_and_doubles_nothing(tmp_path: Path, storage: str) -> None:
    (tmp_path / "key").write_text(KEY)
    (tmp_path / "key").chmod(0o600)
    (tmp_path / "space.csv").write_text("name,min,max,scale\nlr,1e-4,1,log\n")
    port = _free_port()
    server = start_server(tmp_path, port, tmp_path / "key", storage, MEMBERS)
    clients = [_client(tmp_path, port, i) for i in range(MEMBERS)]
    try:
        _wait_for(tmp_path, MEMBERS * STEPS // 4, clients)
        os.kill(clients[0].pid, signal.SIGKILL)  # a training script dies mid-step ...
        clients[0].wait()
        clients[0] = _client(tmp_path, port, 0)  # ... and is restarted (its identity file rejoins)
        _wait_for(tmp_path, MEMBERS * STEPS // 2, clients)
        os.kill(server.pid, signal.SIGKILL)  # then the server dies mid-request
        server.wait()
        assert len(_logged(tmp_path)) < MEMBERS * STEPS, "the run finished before the kill"
        time.sleep(1.0)  # the clients retry meanwhile
        server = start_server(tmp_path, port, tmp_path / "key", storage, MEMBERS)
        for client in clients:
            output, _ = client.communicate(timeout=180)
            assert client.returncode == 0, output.decode()[-3000:]
    finally:
        for process in (*clients, server):
            if process.poll() is None:
                process.kill()
                process.wait()
    server_log = (tmp_path / "server.log").read_text()
    assert "unexpected error" not in server_log and "store error" not in server_log, server_log[-3000:]  # no 5xx
    store = SQLStore(storage)
    try:
        members = store.list_members("pbt")
        assert [m.state for m in members] == [MemberState.FINISHED] * MEMBERS
        for member in members:
            steps = [s.step for s in store.scores("pbt", member.member_id)]
            assert steps == list(range(1, STEPS + 1)), (member.member_id, steps)  # none lost, none twice
        stored = {(s.member_id, s.step): s.score for s in store.scores("pbt")}
        for member_id, step, metric in _logged(tmp_path):  # every acknowledged report is there
            assert stored[(int(member_id), int(step))] == metric
        checkpoints = CheckpointStore(str(tmp_path / "ckpts"))
        for member in members:
            assert member.checkpoint is not None
            path = checkpoints.fetch(member.checkpoint, member.checkpoint_sha256 or "")  # verifies the SHA-256
            assert Path(path).read_text().startswith("member ")
    finally:
        store.close()
