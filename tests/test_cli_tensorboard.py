"""``pbtune run --tensorboard DIR``: every member's score and hyperparameters, and each exploit."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from pbtune.cli import app
from pbtune.store import SQLStore

pytest.importorskip("tensorboardX")


def test_run_writes_tensorboard_event_files(tmp_path: Path) -> None:
    from pbtune.testing.tensorboard_events import read_events

    config = tmp_path / "config.json"
    config.write_text(json.dumps({
        "name": "tb", "trainable": "pbtune.testing.trainables:Quadratic", "population": 4, "workers": 2,
        "budget": 10, "ready": {"interval": 2},
        "space": {"lr": {"type": "float", "low": 0.001, "high": 0.3, "log": True}},
        "storage": f"sqlite:///{tmp_path}/tb.db", "checkpoints": str(tmp_path / "ck"),
    }))
    logdir = tmp_path / "events"
    result = CliRunner().invoke(app, ["run", str(config), "--quiet", "--tensorboard", str(logdir)])
    assert result.exit_code == 0, result.output
    assert f"view with: tensorboard --logdir {logdir} (pip install 'pbtune[tensorboard]')" in result.output
    store = SQLStore(f"sqlite:///{tmp_path}/tb.db")
    try:
        exploits = [e for e in store.events("tb") if e.kind == "exploit"]
        for member_id in range(4):
            scalars, texts = read_events(str(logdir / "tb" / f"member-{member_id:03d}"))
            steps = [s.step for s in store.scores("tb", member_id)]
            assert [step for step, _ in scalars["score"]] == steps == list(range(1, 11))
            assert [step for step, _ in scalars["hparams/lr"]] == steps
            assert sorted(step for step, text in texts if "exploit" in text) == sorted(
                e.step for e in exploits if e.member_id == member_id)
    finally:
        store.close()
    assert exploits, "the run made no exploit: nothing to check"
