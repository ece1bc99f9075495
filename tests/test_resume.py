"""A resumed run is the same run; storage faults pause and retry instead of failing members."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

import pbtune
from pbtune.checkpoints import CheckpointStore
from pbtune.cli import app
from pbtune.config import RunConfig
from pbtune.engine.worker import Worker
from pbtune.errors import CheckpointWriteError, ConfigMismatchError
from pbtune.member import Population
from pbtune.store import open_store
from pbtune.testing.trainables import Quadratic
from pbtune.types import MemberState

SPACE = {"lr": {"type": "float", "low": 0.001, "high": 0.3, "log": True}}


def _config(tmp_path: Path, **overrides: Any) -> RunConfig:
    fields: dict[str, Any] = dict(name="t", space=SPACE, population=3, workers=1, budget=6, ready={"interval": 2},
                                  storage=f"sqlite:///{tmp_path}/p.db", checkpoints=str(tmp_path / "ck"))
    fields.update(overrides)
    return RunConfig(**fields)


@pytest.mark.parametrize(("field", "value"), [
    ("seed", 1), ("budget", 4), ("population", 4), ("space", {"lr": {"type": "float", "low": 0.01, "high": 0.3}}),
    ("exploit", "tournament"), ("trainable_args", {"target": 1.0}),
])
def test_reopening_a_run_with_another_config_is_an_error_that_writes_nothing(
    tmp_path: Path, field: str, value: Any
) -> None:
    Population(_config(tmp_path))
    store = open_store(f"sqlite:///{tmp_path}/p.db")
    before = (store.get_run("t").config, store.list_members("t"), store.events("t"))
    with pytest.raises(ConfigMismatchError, match=f"{field}: stored") as caught:
        Population(_config(tmp_path, **{field: value}))
    assert [d[0] for d in caught.value.differences] == [field]
    assert "new run name" in str(caught.value)
    assert (store.get_run("t").config, store.list_members("t"), store.events("t")) == before


def test_how_a_run_is_run_may_change_on_resume(tmp_path: Path) -> None:
    Population(_config(tmp_path))
    Population(_config(tmp_path, workers=3, lease_seconds=5.0, checkpoints=str(tmp_path / "ck2")))


def test_a_seed_loop_with_one_name_never_returns_the_first_seed_s_result(tmp_path: Path) -> None:
    first = pbtune.run(Quadratic, config=_config(tmp_path), progress=False)
    assert first.best.score is not None
    with pytest.raises(ConfigMismatchError, match="seed: stored 0, given 1"):
        pbtune.run(Quadratic, config=_config(tmp_path, seed=1), progress=False)


def test_extend_budget_trains_a_finished_run_further(tmp_path: Path) -> None:
    pbtune.run(Quadratic, config=_config(tmp_path), progress=False)
    with pytest.raises(ConfigMismatchError, match="--extend-budget"):
        pbtune.run(Quadratic, config=_config(tmp_path, budget=10), progress=False)
    result = pbtune.run(Quadratic, config=_config(tmp_path, budget=10), progress=False, extend_budget=True)
    store = open_store(f"sqlite:///{tmp_path}/p.db")
    assert store.get_run("t").config["budget"] == 10
    assert all(m.state is MemberState.FINISHED and m.step == 10 for m in result.members)
    steps = sorted(s.step for s in store.scores("t", 0))
    assert steps == list(range(1, 11))  # trained on from step 6, not from scratch
    assert [e.summary for e in store.events("t", 0) if e.kind == "reopen"] == ["budget extended from 6 to 10"]
    with pytest.raises(ConfigMismatchError, match="budget"):  # a smaller budget is never an extension
        Population(_config(tmp_path, budget=8), extend_budget=True)


def test_cli_run_of_a_changed_config_fails_and_names_the_fields(tmp_path: Path) -> None:
    config = tmp_path / "run.yaml"
    config.write_text(
        f"name: t\nspace: {{lr: {{type: float, low: 0.001, high: 0.3, log: true}}}}\npopulation: 3\n"
        f"budget: 4\nready: 2\ntrainable: pbtune.testing.trainables:Quadratic\nstorage: sqlite:///{tmp_path}/p.db\n"
        f"checkpoints: {tmp_path}/ck\n"
    )
    runner = CliRunner()
    assert runner.invoke(app, ["run", str(config), "-q"]).exit_code == 0
    config.write_text(config.read_text().replace("budget: 4", "budget: 6").replace("population: 3", "population: 5"))
    failed = runner.invoke(app, ["run", str(config), "-q"])
    assert failed.exit_code != 0
    output = " ".join(failed.output.split())  # rich wraps long lines
    assert "population: stored 3, given 5" in output and "budget: stored 4, given 6" in output


class _FullDisk(CheckpointStore):
    """A checkpoint store whose writes fail ``failures`` times with ENOSPC, then work."""

    def __init__(self, url: str, failures: int) -> None:
        super().__init__(url)
        self.failures = failures

    def put(self, local_path: str, **where: Any) -> Any:
        if self.failures > 0:
            self.failures -= 1
            raise CheckpointWriteError(f"could not write checkpoint to {self.url}: [Errno 28] No space left")
        return super().put(local_path, **where)


def test_a_full_checkpoint_disk_is_retried_until_it_has_room(tmp_path: Path) -> None:
    config = _config(tmp_path, population=2)
    Population(config)
    worker = Worker(config, Quadratic, checkpoints=_FullDisk(config.checkpoints, failures=3),
                    storage_retry_seconds=30.0)
    worker.run()
    members = open_store(config.storage).list_members("t")
    assert all(m.state is MemberState.FINISHED and m.step == 6 for m in members)


def test_a_member_failed_by_storage_resumes_with_retry_failed(tmp_path: Path) -> None:
    config = _config(tmp_path, population=2)
    Population(config)
    Worker(config, Quadratic, checkpoints=_FullDisk(config.checkpoints, failures=1000),
           storage_retry_seconds=0.0).run()
    store = open_store(config.storage)
    assert all(m.state is MemberState.FAILED for m in store.list_members("t"))
    assert "No space left" in (store.list_members("t")[0].error or "")
    result = pbtune.run(Quadratic, config=config, progress=False, retry_failed=True)
    assert all(m.state is MemberState.FINISHED and m.step == 6 for m in result.members)
    assert any(e.kind == "reopen" and e.summary == "failed member retried" for e in store.events("t"))


def test_a_corrupt_donor_checkpoint_is_skipped_not_fatal(tmp_path: Path) -> None:
    config = _config(tmp_path, population=2, exploit={"name": "truncation", "quantile": 0.5})
    population = Population(config)
    low, high = population.member(0), population.member(1)
    for member, score in ((low, 0.1), (high, 0.9)):
        path = tmp_path / f"w{member.member_id}.json"
        path.write_text('{"theta": 1.0}')
        member.save(str(path), score, step=2)
    donor = high.refresh()
    with open(os.path.join(config.checkpoints, donor.checkpoint or ""), "w") as handle:
        handle.write("garbage")  # bit rot on the donor's checkpoint
    assert low.should_exploit()
    assert low.exploit() is None  # skipped, not raised
    me = low.refresh()
    assert me.state is MemberState.RUNNING and me.last_ready_step == 2 and me.hparams == low.hparams
    assert not [e for e in population.store.events("t", 0) if e.kind == "exploit"]


def test_device_fields_and_older_stored_exploit_configs_resume(tmp_path: Path) -> None:
    from pbtune.resume import config_differences

    stored = _config(tmp_path).to_dict()
    stored["exploit"] = {"name": "truncation", "quantile": 0.2, "copy_hparams": True, "max_copies": None}
    del stored["gpus_per_worker"], stored["devices"]  # a run stored before these fields existed
    assert config_differences(stored, _config(tmp_path, workers=2, gpus_per_worker=0.5, devices=[0])) == []
    ceil = _config(tmp_path, exploit={"name": "truncation", "rounding": "ceil"})
    assert [d[0] for d in config_differences(stored, ceil)] == ["exploit"]  # another selection rule: another run
