"""Generational (synchronous) PBT: a generation is ranked at one step, and a failing member
never blocks it."""

from __future__ import annotations

from pathlib import Path

import pytest

import pbtune
from pbtune.config import RunConfig
from pbtune.round import at_step, generation_waiting
from pbtune.store import open_store
from pbtune.testing.trainables import Flaky, Quadratic
from pbtune.types import MemberRecord, MemberState

SPACE = {"lr": {"type": "float", "low": 0.001, "high": 0.3, "log": True}}


def test_a_member_waits_for_every_member_behind_it_except_failed_and_finished_ones() -> None:
    cfg = RunConfig(name="r", space=SPACE, population=4, sync=True)
    members = [MemberRecord("r", 0, MemberState.RUNNING, 10, {}), MemberRecord("r", 1, MemberState.PAUSED, 6, {}),
               MemberRecord("r", 2, MemberState.FAILED, 2, {}), MemberRecord("r", 3, MemberState.FINISHED, 10, {})]
    assert generation_waiting(cfg, members, 0)
    members[1] = MemberRecord("r", 1, MemberState.PAUSED, 10, {})
    assert not generation_waiting(cfg, members, 0)  # the failed member at step 2 holds nobody up
    assert not generation_waiting(RunConfig(name="r", space=SPACE, population=4), members[:1] + [
        MemberRecord("r", 1, MemberState.PAUSED, 6, {})], 0)  # asynchronous: never waits


def test_a_generation_is_ranked_at_one_step() -> None:
    ahead = MemberRecord("r", 0, MemberState.RUNNING, 12, {}, score=0.9, recent=((8, 0.2), (10, 0.3), (12, 0.9)))
    (seen,) = at_step([ahead], 10)
    assert (seen.step, seen.score, seen.recent) == (10, 0.3, ((8, 0.2), (10, 0.3)))


@pytest.mark.parametrize(("workers", "population"), [(1, 4), (2, 4), (1, 8)])
def test_every_decision_waits_for_its_generation(tmp_path: Path, workers: int, population: int) -> None:
    result = pbtune.run(Quadratic, name="g", space=SPACE, population=population, workers=workers, budget=8,
                        ready={"interval": 2}, sync=True, exploit={"name": "truncation", "quantile": 0.25},
                        storage=f"sqlite:///{tmp_path}/p.db", checkpoints=str(tmp_path / "ck"), progress=False)
    assert all(m.state is MemberState.FINISHED and m.step == 8 for m in result.members)
    store = open_store(f"sqlite:///{tmp_path}/p.db")
    reached = {}  # (member, step) -> when that score was written
    for score in store.scores("g"):
        reached.setdefault((score.member_id, score.step), score.time)
    exploits = [e for e in store.events("g") if e.kind == "exploit"]
    assert exploits
    for event in exploits:  # decided only once the whole generation had reached that step
        assert all(reached[(m, event.step)] <= event.time for m in range(population))
        assert event.donor_step == event.step  # and copied the donor's model of that step, not a later one


def test_a_failing_member_never_blocks_the_generation(tmp_path: Path) -> None:
    space = {**SPACE, "tag": {"type": "choice", "values": ["ok", "boom"]}}  # Flaky raises for "boom"
    result = pbtune.run(Flaky, name="f", space=space, population=3, workers=2, budget=6, ready={"interval": 2},
                        sync=True, exploit="none", initial=[{"lr": 0.1, "tag": "boom"}, {"lr": 0.1, "tag": "ok"},
                                                             {"lr": 0.05, "tag": "ok"}],
                        storage=f"sqlite:///{tmp_path}/p.db", checkpoints=str(tmp_path / "ck"), progress=False)
    states = {m.member_id: (m.state, m.step) for m in result.members}
    assert states[0][0] is MemberState.FAILED
    assert states[1] == states[2] == (MemberState.FINISHED, 6)
