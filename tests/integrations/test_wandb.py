"""W&B monitor: every member's scores, hyperparameters and exploits, checked through a recording
``init`` and through a real offline W&B run."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

pytest.importorskip("wandb", reason="wandb is not installed (pip install 'pbtune[wandb]')")

from pbtune import Population, RunConfig  # noqa: E402
from pbtune.engine.worker import Worker  # noqa: E402
from pbtune.integrations.wandb import WandbMonitor  # noqa: E402
from pbtune.report.data import hparam_history, hparams_at, load_run, score_curves  # noqa: E402
from pbtune.testing.trainables import Quadratic  # noqa: E402


def _small_run(tmp_path: Path) -> RunConfig:
    config = RunConfig(
        name="wb", population=3, budget=12, ready={"interval": 3}, seed=2,
        space={"lr": {"type": "float", "low": 0.001, "high": 0.3, "log": True}},
        exploit={"name": "truncation", "quantile": 0.34},
        storage=f"sqlite:///{tmp_path}/pbt.db", checkpoints=str(tmp_path / "ckpts"),
    )
    Population(config, initial=[{"lr": 0.2}, {"lr": 0.002}, {"lr": 0.05}])
    Worker(config, Quadratic, worker_id="w").run()
    return config


class FakeRun:
    def __init__(self, **kwargs: Any) -> None:
        self.kwargs = kwargs
        self.history: list[tuple[int, dict[str, Any]]] = []
        self.summary: dict[str, Any] = {}
        self.exit_code: int | None = None

    def log(self, values: dict[str, Any], step: int) -> None:
        assert not self.history or step >= self.history[-1][0], "W&B drops steps older than the current one"
        self.history.append((step, values))

    def finish(self, exit_code: int = 0) -> None:
        self.exit_code = exit_code


def test_logs_scores_hparams_and_exploits_per_member(tmp_path: Path) -> None:
    config = _small_run(tmp_path)
    runs: list[FakeRun] = []

    def init(**kwargs: Any) -> FakeRun:
        runs.append(FakeRun(**kwargs))
        return runs[-1]

    population = Population(config)
    monitor = WandbMonitor(project="p", min_interval=0.0, init=init)
    monitor.update(population.store, config)
    monitor.close()

    data = load_run(population.store, "wb")
    curves = score_curves(data.scores, data.events)
    assert sorted(monitor.member_runs) == [0, 1, 2]
    exploits = [e for e in data.events if e.kind == "exploit"]
    assert exploits, "the run must exploit for this test to mean something"
    for member_id, run in monitor.member_runs.items():
        assert run.kwargs["group"] == "wb" and run.kwargs["name"] == f"wb/member-{member_id}"
        assert run.kwargs["config"]["init/lr"] == hparam_history(data.events, member_id)[0][1]["lr"]
        scores = [(step, values["score"]) for step, values in run.history if "score" in values]
        assert scores == list(zip(curves[member_id].steps, curves[member_id].values, strict=True))
        history = hparam_history(data.events, member_id)
        for step, values in run.history:
            if "hparams/lr" in values:
                assert values["hparams/lr"] == hparams_at(history, step)["lr"]
        marks = {step: values["lineage/donor"] for step, values in run.history if "lineage/donor" in values}
        assert marks == {e.step: e.donor_id for e in exploits if e.member_id == member_id}
        assert run.summary["pbtune/state"] == "finished" and run.exit_code == 0
        mine = [e for e in data.events if e.member_id == member_id and e.kind in ("exploit", "explore")]
        if mine:
            table = run.history[-1][1]["pbtune/lineage"]
            assert [row[:2] for row in table.data] == [[e.step, e.kind] for e in mine]


def _records(path: Path) -> list[Any]:
    """The protobuf records of an offline ``.wandb`` file (a LevelDB-style log of 32 KiB blocks)."""
    import struct

    from wandb.proto import wandb_internal_pb2

    raw = path.read_bytes()
    assert struct.unpack("<4sHB", raw[:7]) == (b":W&B", 0xBEE1, 0)
    block, pos, chunk, records = 32768, 7, b"", []
    while pos + 7 <= len(raw):
        left = block - pos % block
        if left < 7:  # a record header never straddles blocks: the rest of the block is padding
            pos += left
            continue
        _, length, kind = struct.unpack("<IHB", raw[pos:pos + 7])
        pos += 7
        chunk += raw[pos:pos + length]
        pos += length
        if kind in (1, 4):  # FULL or LAST
            record = wandb_internal_pb2.Record()
            record.ParseFromString(chunk)
            records.append(record)
            chunk = b""
    return records


def test_offline_wandb_writes_one_run_per_member(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    config = _small_run(tmp_path)
    population = Population(config)
    monitor = WandbMonitor(project="pbtune-test", dir=str(tmp_path), min_interval=0.0)
    monitor.update(population.store, config)
    monitor.close()

    data = load_run(population.store, "wb")
    curves = score_curves(data.scores, data.events)
    files = sorted((tmp_path / "wandb").glob("offline-run-*/run-*.wandb"))
    assert len(files) == 3
    seen: dict[int, list[tuple[int, float]]] = {}
    marks: dict[int, dict[int, int]] = {}
    for file in files:
        records = _records(file)
        run = next(r.run for r in records if r.WhichOneof("record_type") == "run")
        settings = {item.key: json.loads(item.value_json) for item in run.config.update}
        member_id = settings["pbtune_member"]
        assert run.run_group == "wb" and run.display_name == f"wb/member-{member_id}"
        rows = []
        for record in records:
            if record.WhichOneof("record_type") == "history":
                items = {"/".join(i.nested_key) or i.key: json.loads(i.value_json) for i in record.history.item}
                if "score" in items:
                    rows.append((items["_step"], items["score"]))
                if "lineage/donor" in items:
                    marks.setdefault(member_id, {})[items["_step"]] = items["lineage/donor"]
        seen[member_id] = rows
    for member_id, curve in curves.items():
        assert seen[member_id] == list(zip(curve.steps, curve.values, strict=True))
    exploits = [e for e in data.events if e.kind == "exploit"]
    assert exploits and marks == {m: {e.step: e.donor_id for e in exploits if e.member_id == m}
                                  for m in {e.member_id for e in exploits}}
