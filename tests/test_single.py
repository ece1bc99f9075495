"""Single-model configs (pbtune.single) and `--mode test` checks that need no torch."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

import pbtune
from pbtune.cli import app
from pbtune.errors import NotFoundError
from pbtune.evaluate import evaluate_checkpoint, evaluate_run
from pbtune.single import SingleModelConfig, evaluate_single, load_single_config, read_single_result, train_single
from pbtune.testing.trainables import Quadratic


class Evaluated(Quadratic):
    """A Quadratic with test metrics: how far theta ended from a held-out target."""

    def evaluate(self) -> dict[str, float]:
        return {"test_error": abs(self.theta - 2.5), "theta": self.theta}


def _write(tmp_path: Path, data: dict[str, Any], name: str = "one.json") -> str:
    path = tmp_path / name
    path.write_text(json.dumps(data))
    return str(path)


def _single(tmp_path: Path, **extra: Any) -> dict[str, Any]:
    return {"name": "one", "trainable": f"{__name__}:Evaluated", "hparams": {"lr": 0.1}, "budget": 3,
            "checkpoints": str(tmp_path / "ck"), **extra}


def test_train_then_test_a_native_single_model_file(tmp_path: Path) -> None:
    config = load_single_config(_write(tmp_path, _single(tmp_path)))
    with pytest.raises(NotFoundError, match="train it first"):
        read_single_result(config)
    result = train_single(config)
    theta = 0.0
    for _ in range(3):  # Quadratic's update with lr 0.1 towards 3.0
        theta += 0.1 * 2 * (3.0 - theta)
    assert result.scores[-1] == pytest.approx(-((theta - 3.0) ** 2)) and len(result.scores) == 3
    assert result.metrics["theta"] == pytest.approx(theta)
    saved, metrics = evaluate_single(config)
    assert saved.scores == result.scores and metrics == {"test_error": pytest.approx(abs(theta - 2.5)),
                                                          "theta": pytest.approx(theta)}
    assert sorted(os.listdir(config.folder)) == ["single-model.ckpt", "single-model.json"]  # no temp files left


@pytest.mark.parametrize("patch, field, fragment", [
    ({"space": {}}, "space", "one of"),
    ({"budget": 0}, "budget", "integer >= 1"),
    ({"hparams": [1]}, "hparams", "a mapping"),
    ({"trainable": "nocolon"}, "trainable", "'module:Class'"),
    ({"checkpoints": "s3://bucket/x"}, "checkpoints", "a local folder"),
    ({"devices": [0], "gpus_per_worker": 2}, "gpus_per_worker", "at most 1 for 1 workers"),
])
def test_single_model_config_errors_name_the_field(tmp_path: Path, patch: dict[str, Any], field: str,
                                                   fragment: str) -> None:
    with pytest.raises(pbtune.InvalidConfigError) as info:
        SingleModelConfig.from_dict({**_single(tmp_path), **patch})
    assert info.value.field == field and fragment in str(info.value)


def test_load_config_points_single_model_files_to_pbtune_run(tmp_path: Path) -> None:
    with pytest.raises(pbtune.InvalidConfigError, match="this file trains one model"):
        pbtune.load_config(_write(tmp_path, _single(tmp_path)))


def test_evaluate_needs_an_evaluate_method(tmp_path: Path) -> None:
    trainable = Quadratic()
    trainable.setup({"lr": 0.1})
    trainable.save(str(tmp_path / "q.json"))
    with pytest.raises(pbtune.InvalidConfigError, match="`trainable` of `--mode test` must be a Trainable with an "
                                                        "evaluate"):
        evaluate_checkpoint(Quadratic, {}, {"lr": 0.1}, str(tmp_path / "q.json"))


def test_cli_modes(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    runner = CliRunner()
    single = _write(tmp_path, _single(tmp_path))
    out = runner.invoke(app, ["run", single, "--quiet"])
    assert out.exit_code == 0 and "done model one: score" in out.output, out.output
    out = runner.invoke(app, ["run", single, "-m", "test"])
    assert out.exit_code == 0 and "test: test_error" in out.output, out.output
    out = runner.invoke(app, ["run", single, "--workers", "2"])
    assert out.exit_code == 2 and "`--workers` of `pbtune run` must be left out" in out.output
    population = _write(tmp_path, {"name": "pop", "trainable": f"{__name__}:Evaluated", "population": 2,
                                   "space": {"lr": {"type": "float", "low": 0.05, "high": 0.2}}, "budget": 2,
                                   "ready": {"interval": 1}, "storage": f"sqlite:///{tmp_path}/p.db",
                                   "checkpoints": str(tmp_path / "ck")}, "pop.json")
    out = runner.invoke(app, ["run", population, "--member", "all"])
    assert out.exit_code == 2 and "`--member` of `pbtune run` must be used with --mode test" in out.output
    out = runner.invoke(app, ["run", population, "-m", "test"])
    assert out.exit_code == 2 and "is not in" in out.output and "train it first" in out.output


def test_evaluate_run_in_process(tmp_path: Path) -> None:
    config = pbtune.RunConfig(name="pop", trainable=f"{__name__}:Evaluated", population=3, budget=2,
                              space={"lr": {"type": "float", "low": 0.05, "high": 0.2}}, ready={"interval": 1},
                              storage=f"sqlite:///{tmp_path}/p.db", checkpoints=str(tmp_path / "ck"))
    population = pbtune.Population(config)
    pbtune.Worker(config, Evaluated).run()
    members = population.store.list_members("pop")
    rows = evaluate_run(config, "all")
    assert [r.member_id for r in rows] == [0, 1, 2]
    best = max(members, key=lambda m: m.score)  # type: ignore[arg-type, return-value]
    assert [r.member_id for r in rows if r.best] == [best.member_id]
    for row, member in zip(rows, members, strict=True):
        assert row.hparams == member.hparams and row.step == 2
        assert row.metrics["test_error"] == pytest.approx(abs(row.metrics["theta"] - 2.5))
