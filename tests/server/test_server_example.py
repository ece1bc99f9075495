"""The server example end to end: 1 server + 4 client processes training the digits MLP."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from server_helpers import free_port

from pbtune.store import SQLStore
from pbtune.types import MemberState

RUN = Path(__file__).resolve().parents[2] / "examples" / "server_digits" / "run.py"


@pytest.mark.slow
def test_server_digits_example_trains_four_clients_through_one_server(tmp_path: Path) -> None:
    pytest.importorskip("torch")
    pytest.importorskip("sklearn")
    port = free_port()
    result = subprocess.run(
        [sys.executable, str(RUN), "--epochs", "8", "--port", str(port), "--workdir", str(tmp_path)],
        capture_output=True, text=True, timeout=600, env={**os.environ, "OMP_NUM_THREADS": "1"},
    )
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
    summary = json.loads(result.stdout.strip().splitlines()[-1])
    assert summary["best_accuracy"] > 0.5  # ten classes: chance is 0.1
    store = SQLStore(f"sqlite:///{tmp_path}/pbt.db")
    members = store.list_members("pbt")
    assert [m.state for m in members] == [MemberState.FINISHED] * 4
    for member in members:
        assert [s.step for s in store.scores("pbt", member.member_id)] == list(range(1, 9))
    store.close()
