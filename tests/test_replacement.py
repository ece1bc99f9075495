"""Failed members are replaced by a copy of the best member (up to max_failures), not dropped."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from pbtune.config import RunConfig
from pbtune.engine.worker import Worker
from pbtune.member import Population
from pbtune.round import ExploitPlan, plan_replacement
from pbtune.testing.trainables import Quadratic
from pbtune.types import MemberRecord, MemberState

SPACE = {"lr": {"type": "float", "low": 0.001, "high": 0.3, "log": True}}


def _failing_first_trainable() -> Any:
    """Member 0's trainable raises once, at the member's third step (the others have checkpoints then)."""
    steps: dict[int | None, int] = {}

    class FailsOnce(Quadratic):
        def step(self) -> Any:
            steps[self.member_id] = steps.get(self.member_id, 0) + 1
            if self.member_id == 0 and steps[0] == 3:
                raise RuntimeError("CUDA error: an illegal memory access (once)")
            return super().step()

    return FailsOnce


def _run(tmp_path: Path, max_failures: int) -> Population:
    config = RunConfig(name="t", space=SPACE, population=3, workers=1, budget=6, ready={"interval": 2},
                       max_failures=max_failures, storage=f"sqlite:///{tmp_path}/p.db",
                       checkpoints=str(tmp_path / "ck"))
    population = Population(config)
    Worker(config, _failing_first_trainable()).run()
    return population


def test_a_failed_member_restarts_from_the_best_member(tmp_path: Path) -> None:
    population = _run(tmp_path, max_failures=2)
    members = population.members()
    assert all(m.state is MemberState.FINISHED and m.step == 6 for m in members)  # nobody dropped
    kinds = [(e.kind, e.summary) for e in population.store.events("t", 0) if e.kind != "init"]
    assert kinds[0][0] == "fail" and kinds[0][1].endswith("illegal memory access (once); replaced")
    assert kinds[1][0] == "exploit" and kinds[1][1].startswith("replaced failed member 0 with a copy of member")
    assert kinds[2][0] == "explore"
    # each exploit (the replacement's too) gave the member its donor's lineage, as the events replay it
    lineage = [0, 1, 2]
    for event in population.store.events("t"):
        if event.kind == "exploit" and event.donor_id is not None:
            lineage[event.member_id] = lineage[event.donor_id]
    assert [m.lineage for m in members] == lineage


def test_without_replacements_left_the_member_fails(tmp_path: Path) -> None:
    population = _run(tmp_path, max_failures=0)
    states = {m.member_id: m.state for m in population.members()}
    assert states == {0: MemberState.FAILED, 1: MemberState.FINISHED, 2: MemberState.FINISHED}


def test_replacement_plan_copies_the_best_member_with_a_checkpoint() -> None:
    cfg = RunConfig(name="r", space=SPACE, population=4)
    snapshot = [
        MemberRecord("r", 0, MemberState.RUNNING, 5, {"lr": 0.01}, score=0.1, checkpoint="k0"),
        MemberRecord("r", 1, MemberState.FAILED, 5, {"lr": 0.02}, score=0.99, checkpoint="k1"),  # never a donor
        MemberRecord("r", 2, MemberState.RUNNING, 5, {"lr": 0.03}, score=0.9, checkpoint=None),  # nothing to copy
        MemberRecord("r", 3, MemberState.RUNNING, 5, {"lr": 0.04}, score=0.5, checkpoint="k3", checkpoint_step=4),
    ]
    plan = plan_replacement(cfg, snapshot, 0)
    assert isinstance(plan, ExploitPlan) and (plan.donor_id, plan.donor_step, plan.taken) == (3, 4, {"lr": 0.04})
    assert plan_replacement(cfg, snapshot[:3], 0) is None


def test_trainables_know_their_member_and_a_seed_that_changes_after_an_exploit(tmp_path: Path) -> None:
    from pbtune.engine.trainable import member_seed

    seen: list[tuple[str, int | None, int | None]] = []

    class Recording(Quadratic):
        def setup(self, hparams: Any) -> None:
            seen.append(("setup", self.member_id, self.seed))
            super().setup(hparams)

        def load(self, path: str) -> None:
            seen.append(("load", self.member_id, self.seed))
            super().load(path)

    config = RunConfig(name="s", space=SPACE, population=4, workers=1, budget=6, ready={"interval": 2}, seed=3,
                       exploit={"name": "truncation", "quantile": 0.25}, storage=f"sqlite:///{tmp_path}/p.db",
                       checkpoints=str(tmp_path / "ck"))
    population = Population(config)
    Worker(config, Recording).run()
    assert {(m, s) for kind, m, s in seen if kind == "setup" and s == member_seed(3, m or 0, 0)} == {
        (i, member_seed(3, i, 0)) for i in range(4)}  # every member starts from its own seed
    exploits = [e for e in population.store.events("s") if e.kind == "exploit"]
    assert exploits, "a 4-member population over 2 ready points exploits"
    for event in exploits:  # the copy loads the donor's weights under its own, new seed
        copy_seed = member_seed(3, event.member_id, event.step)
        assert ("load", event.member_id, copy_seed) in seen
        assert copy_seed != member_seed(3, event.donor_id or 0, event.donor_step or 0)
