from __future__ import annotations

import multiprocessing as mp
import os
import threading
import time
from pathlib import Path
from signal import SIGKILL
from typing import Any

import pytest

import pbtune
from pbtune.store import open_store
from pbtune.testing.trainables import Flaky, Quadratic
from pbtune.types import MemberState

SPACE = {"lr": {"type": "float", "low": 0.001, "high": 0.3, "log": True}}


def settings(tmp_path: Path, **overrides: Any) -> dict[str, Any]:
    base: dict[str, Any] = dict(name="t", space=SPACE, population=4, workers=2, budget=20, ready={"interval": 5},
                                exploit={"name": "truncation", "quantile": 0.25}, storage=f"sqlite:///{tmp_path}/p.db",
                                checkpoints=str(tmp_path / "ck"), progress=False)
    base.update(overrides)
    return base


def test_run_trains_every_member_to_budget_and_returns_the_best(tmp_path: Path) -> None:
    result = pbtune.run(Quadratic, **settings(tmp_path, population=5))
    store = open_store(f"sqlite:///{tmp_path}/p.db")
    members = store.list_members("t")
    assert all(m.state is MemberState.FINISHED and m.step == 20 for m in members)
    assert result.best.score == max(m.score for m in members)
    assert result.checkpoint_path is not None and Path(result.checkpoint_path).exists()
    # one score row per member-step: nothing lost, nothing doubled
    assert len(store.scores("t")) == 5 * 20
    exploits = [e for e in store.events("t") if e.kind == "exploit"]
    assert exploits, "a 5-member population over 4 ready points must exploit"
    for event in exploits:
        assert event.donor_id in {m.member_id for m in members} and event.donor_id != event.member_id
    assert result.schedule[0].step == 0
    # the worst initial lr was replaced: the final population is better than the initial one
    first_scores = {s.member_id: s.score for s in store.scores("t") if s.step == 5}
    assert min(m.score for m in members) > min(first_scores.values())


def test_reopening_a_finished_run_returns_at_once(tmp_path: Path) -> None:
    first = pbtune.run(Quadratic, **settings(tmp_path))
    started = time.monotonic()
    again = pbtune.run(Quadratic, **settings(tmp_path))
    assert again.best.member_id == first.best.member_id
    assert len(open_store(f"sqlite:///{tmp_path}/p.db").scores("t")) == 4 * 20
    assert time.monotonic() - started < 30


def test_failing_trainable_marks_the_member_failed_and_the_run_goes_on(tmp_path: Path) -> None:
    space = {"lr": SPACE["lr"], "tag": {"type": "choice", "values": ["ok", "boom", "nan"]}}
    initial = [{"lr": 0.1, "tag": "ok"}, {"lr": 0.1, "tag": "boom"}, {"lr": 0.05, "tag": "ok"},
               {"lr": 0.2, "tag": "nan"}]
    result = pbtune.run(Flaky, initial=initial, **settings(tmp_path, space=space, explore="resample",
                                                           ready={"interval": 100}))
    store = open_store(f"sqlite:///{tmp_path}/p.db")
    failed = store.get_member("t", 1)
    assert failed.state is MemberState.FAILED
    assert "RuntimeError: this member always fails" in (failed.error or "")
    assert [m.state for m in store.list_members("t")].count(MemberState.FINISHED) == 3
    assert result.best.member_id in (0, 2)  # the NaN member never ranks best


def test_nan_member_is_the_one_that_exploits(tmp_path: Path) -> None:
    space = {"lr": SPACE["lr"], "tag": {"type": "choice", "values": ["ok", "nan"]}}
    initial = [{"lr": 0.1, "tag": "ok"}, {"lr": 0.05, "tag": "ok"}, {"lr": 0.2, "tag": "ok"}, {"lr": 0.2, "tag": "nan"}]
    pbtune.run(Flaky, initial=initial,
               **settings(tmp_path, space=space, exploit={"name": "truncation", "quantile": 0.25}, budget=10))
    store = open_store(f"sqlite:///{tmp_path}/p.db")
    exploits = [e for e in store.events("t") if e.kind == "exploit"]
    assert any(e.member_id == 3 for e in exploits), "the NaN member ranks worst, so it copies a donor"
    assert all(e.donor_id != 3 for e in exploits), "a NaN member is never a donor"


def test_sigkill_of_a_worker_mid_run_loses_nothing(tmp_path: Path) -> None:
    kwargs = settings(tmp_path, budget=60, lease_seconds=1.0, trainable_args={"step_seconds": 0.01})
    outcome: dict[str, Any] = {}

    def drive() -> None:
        try:
            outcome["result"] = pbtune.run(Quadratic, **kwargs)
        except BaseException as exc:  # surfaced below
            outcome["error"] = exc

    thread = threading.Thread(target=drive)
    thread.start()
    store = open_store(f"sqlite:///{tmp_path}/p.db") if _wait_for(lambda: (tmp_path / "p.db").exists()) else None
    assert store is not None
    assert _wait_for(lambda: len(store.scores("t")) >= 20)
    victims = _worker_pids()
    assert victims, "the run's worker processes should be descendants of this process"
    os.kill(victims[0], SIGKILL)
    thread.join(timeout=120)
    assert not thread.is_alive() and "error" not in outcome, outcome.get("error")
    members = store.list_members("t")
    assert all(m.state is MemberState.FINISHED and m.step == 60 for m in members)
    checkpoints = pbtune.CheckpointStore(str(tmp_path / "ck"))
    for m in members:  # every final checkpoint is intact
        assert m.checkpoint and checkpoints.fetch(m.checkpoint, m.checkpoint_sha256 or "")
    steps_seen = {(s.member_id, s.step) for s in store.scores("t")}
    assert steps_seen == {(i, s) for i in range(4) for s in range(1, 61)}


def _worker_pids() -> list[int]:
    """Worker processes of runs started here: forked by the engine's zygote (a child of this
    process), or spawned children when the engine falls back to spawn."""
    parents: dict[int, int] = {}
    for entry in os.listdir("/proc"):
        try:
            with open(f"/proc/{entry}/stat") as handle:
                fields = handle.read().rpartition(")")[2].split()
            parents[int(entry)] = int(fields[1])
        except (ValueError, OSError):
            continue
    children = {pid for pid, parent in parents.items() if parent == os.getpid()}
    grandchildren = [pid for pid, parent in parents.items() if parent in children]
    return grandchildren or [p.pid for p in mp.active_children() if p.is_alive() and p.pid is not None]


def _wait_for(condition: Any, timeout: float = 60.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if condition():
                return True
        except pbtune.PBTuneError:
            pass
        time.sleep(0.05)
    return False


def test_missing_metric_key_fails_the_member_with_a_clear_message(tmp_path: Path) -> None:
    with pytest.raises(pbtune.PBTuneError, match="every member of run 't' failed"):
        pbtune.run(Quadratic, **settings(tmp_path, metric="accuracy", budget=5, population=2, workers=1))
    member = open_store(f"sqlite:///{tmp_path}/p.db").get_member("t", 0)
    assert member.state is MemberState.FAILED and "'accuracy'" in (member.error or "")


def test_trainable_must_be_importable(tmp_path: Path) -> None:
    with pytest.raises(pbtune.InvalidConfigError, match="`trainable`"):
        pbtune.run("no.such.module:Thing", **settings(tmp_path))


def test_the_engine_updates_the_display_its_caller_hands_in(tmp_path: Path) -> None:
    from pbtune.config import RunConfig
    from pbtune.engine.local import run as run_local

    class Recorder:
        def __init__(self) -> None:
            self.steps: list[int] = []
            self.closed = False

        def update(self, store: Any, config: RunConfig) -> None:
            self.steps.append(sum(m.step for m in store.list_members(config.name)))

        def close(self) -> None:
            self.closed = True

    fields = settings(tmp_path, budget=6, population=2, workers=1)
    fields.pop("progress")
    display = Recorder()
    run_local(Quadratic, RunConfig(**fields), display=display)
    assert display.closed and display.steps[-1] == 2 * 6  # the last update saw the finished population
