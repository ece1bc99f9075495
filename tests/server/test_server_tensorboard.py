"""``pbtune server --tensorboard DIR``: the run's event files are written while the server serves."""

from __future__ import annotations

import importlib.util
import time
from collections.abc import Callable
from pathlib import Path

import pytest
from typer.testing import CliRunner

from pbtune.cli import app
from pbtune.server.client import PBTClient
from pbtune.server.runner import PBTServer
from pbtune.testing.tensorboard_events import read_events

pytest.importorskip("tensorboardX")


def _wait_for(check: Callable[[], bool], seconds: float = 15.0) -> bool:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if check():
            return True
        time.sleep(0.2)
    return check()


def test_the_server_writes_scores_hyperparameters_and_exploits_while_it_serves(
    start_server: Callable[..., PBTServer], connect: Callable[..., PBTClient], tmp_path: Path
) -> None:
    csv = tmp_path / "space.csv"
    csv.write_text("lr,0.001,0.1,log\nmomentum,0.5,0.99,linear\n")
    logdir = tmp_path / "tb"
    server = start_server(tensorboard=str(logdir))
    good, bad = connect(server, str(csv)), connect(server, str(csv))
    for client, score in ((good, 0.9), (bad, 0.1)):
        path = tmp_path / f"ckpt-{client.member_id}.bin"
        path.write_bytes(b"weights")
        client.save(str(path), score)
    assert bad.should_exploit() and bad.exploit() is not None
    bad.explore()
    bad.report(2, 0.95)
    folder = logdir / "pbt" / f"member-{bad.member_id:03d}"

    def written() -> bool:
        scalars, texts = read_events(str(folder)) if folder.exists() else ({}, [])
        return len(scalars.get("score", [])) == 2 and any("exploit" in text for _, text in texts)

    assert _wait_for(written), "nothing written while serving"  # the server is still running here
    scalars, texts = read_events(str(folder))
    assert scalars["score"] == [(1, pytest.approx(0.1)), (2, pytest.approx(0.95))]
    assert {"hparams/lr", "hparams/momentum"} <= set(scalars)
    assert scalars["hparams/lr"][-1][1] == pytest.approx(bad.hparams["lr"])  # the explored value trained step 2
    assert any(step == 1 and f"member {good.member_id}" in text for step, text in texts if "exploit" in text)
    good_scalars, _ = read_events(str(logdir / "pbt" / f"member-{good.member_id:03d}"))
    assert good_scalars["score"] == [(1, pytest.approx(0.9))]


def test_server_command_passes_tensorboard_on_and_checks_tensorboardx_first(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    key_file = tmp_path / "key"
    key_file.write_text("a-key-0123456789")
    key_file.chmod(0o600)
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a: None if name == "tensorboardX" else real(name, *a))
    result = CliRunner().invoke(app, ["server", "--auth-key-file", str(key_file), "--port", "0", "--storage",
                                      f"sqlite:///{tmp_path}/pbt.db", "--tensorboard", str(tmp_path / "tb")])
    assert result.exit_code == 2 and "pip install 'pbtune[report]'" in result.output, result.output
    assert not (tmp_path / "pbt.db").exists()  # refused before opening anything
