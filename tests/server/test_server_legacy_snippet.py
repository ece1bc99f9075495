"""The older project's server/client snippet, run as its users run it: a server script that
constructs ``PBTServer(port, key, maximize)`` and goes on, and 4 client processes."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from server_helpers import free_port

from pbtune.store import SQLStore
from pbtune.types import MemberState

SNIPPET = Path(__file__).resolve().parent / "legacy_snippet"


@pytest.mark.slow  # 5 Python processes: ~20 s on 2 shared cores
def test_the_older_projects_snippet_runs_unchanged_with_four_clients(tmp_path: Path) -> None:
    for name in ("server.py", "client.py", "space.csv"):
        shutil.copy(SNIPPET / name, tmp_path / name)
    src = str(Path(__file__).resolve().parents[2] / "src")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([src, os.environ.get("PYTHONPATH", "")]),
           "OMP_NUM_THREADS": "1"}
    result = subprocess.run([sys.executable, "server.py", str(free_port()), "client.py"], cwd=tmp_path, env=env,
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-3000:]
    assert "clients exited with [0, 0, 0, 0]" in result.stdout
    store = SQLStore(f"sqlite:///{tmp_path}/pbtune-runs/pbtune.db")
    try:
        config = store.get_run("pbt").config
        members = store.list_members("pbt")
        events = store.events("pbt")
    finally:
        store.close()
    assert config["population"] == 4 and len(members) == 4  # grew with the 4 clients, none pending
    assert all(m.step == 8 for m in members)
    # no finish(): the members stay running until their leases expire (then shown as gone)
    assert all(m.state is MemberState.RUNNING for m in members)
    assert all(0.01 <= m.hparams["lr"] <= 0.5 for m in members)
    assert any(e.kind == "exploit" for e in events)  # PBT happened, not 4 independent runs
