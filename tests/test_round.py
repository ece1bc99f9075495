"""The round planner as pure functions: same snapshot and seed, same plans."""

from __future__ import annotations

import random

import pytest

from pbtune.config import RunConfig
from pbtune.round import ExploitPlan, ReadyCheck, decision_rng, explore_hparams, plan_member, plan_round, ready_members
from pbtune.types import MemberRecord, MemberState

SPACE = {"lr": {"type": "float", "low": 0.001, "high": 1.0, "log": True}, "depth": {"type": "int", "low": 1, "high": 8}}


def _config(**overrides: object) -> RunConfig:
    settings: dict = dict(name="r", space=SPACE, population=5, ready={"interval": 4}, seed=7)
    settings.update(overrides)
    return RunConfig(**settings)


def _snapshot(step: int = 8, scores=(0.1, 0.5, 0.3, 0.9, 0.7), overrides: dict | None = None) -> list[MemberRecord]:
    members = []
    for i, score in enumerate(scores):
        fields: dict = dict(run="r", member_id=i, state=MemberState.RUNNING, step=step,
                            hparams={"lr": 0.01 * (i + 1), "depth": i + 1}, score=score, checkpoint=f"k{i}",
                            checkpoint_step=step, checkpoint_sha256=f"sha{i}", last_ready_step=step - 4, version=10 + i)
        fields.update((overrides or {}).get(i, {}))
        members.append(MemberRecord(**fields))
    return members


def test_bottom_member_plans_to_copy_a_top_member_and_explore_from_its_hparams() -> None:
    cfg, snapshot = _config(), _snapshot()
    plans = plan_round(cfg, snapshot, ready_members(cfg, snapshot))
    assert sorted(plans) == [0, 1, 2, 3, 4]
    plan = plans[0]  # worst score: 0.1
    assert isinstance(plan, ExploitPlan)
    assert (plan.donor_id, plan.donor_step, plan.donor_score, plan.donor_checkpoint) == (3, 8, 0.9, "k3")
    assert plan.donor_checkpoint_sha256 == "sha3" and plan.expected_version == 10 and plan.step == 8
    assert plan.taken == {"lr": 0.04, "depth": 4} == plan.donor_hparams
    assert plan.old_hparams == {"lr": 0.01, "depth": 1}
    explored, summary = explore_hparams(cfg, 0, 8, plan.taken)
    assert plan.explored == explored and plan.explore_summary == summary and plan.explored != plan.taken
    assert plan.exploit_summary == "copied member 3 (step 8, score 0.9) over member 0 (score 0.1)"
    for member_id in (1, 2, 3, 4):
        check = plans[member_id]
        assert isinstance(check, ReadyCheck) and check.step == 8 and check.expected_version == 10 + member_id
        assert check.write().step == 8
    write = plan.write()
    assert (write.member_id, write.expected_version, write.donor_id, dict(write.hparams)) == (0, 10, 3, plan.taken)
    assert write.explored == plan.explored and write.checkpoint is None
    assert plan.write(explore=False).explored is None


def test_plans_are_deterministic_given_the_seed_and_change_with_it() -> None:
    snapshot = _snapshot(scores=(0.1, 0.2, 0.9, 0.8, 0.95))
    cfg = _config(population=5, exploit={"name": "truncation", "quantile": 0.4})
    first = plan_round(cfg, snapshot, [0, 1])
    assert first == plan_round(cfg, list(reversed(snapshot)), [0, 1])  # order of the snapshot does not matter
    explored = {seed: tuple(plan_round(_config(seed=seed, exploit={"name": "truncation", "quantile": 0.4}),
                                       snapshot, [0, 1])[m].explored["lr"] for m in (0, 1))  # type: ignore[union-attr]
                for seed in range(6)}
    assert len(set(explored.values())) > 1


def test_decision_rng_depends_only_on_what_is_decided() -> None:
    a = decision_rng(1, 2, 3, "exploit").random()
    assert a == decision_rng(1, 2, 3, "exploit").random()
    assert a != decision_rng(1, 2, 3, "explore").random() != decision_rng(1, 2, 4, "exploit").random()


def test_failed_members_are_never_donors_nor_ranked() -> None:
    cfg = _config()
    snapshot = _snapshot(overrides={3: {"state": MemberState.FAILED}})  # the best score failed
    plan = plan_round(cfg, snapshot, [0])[0]
    assert isinstance(plan, ExploitPlan) and plan.donor_id == 4


def test_weights_only_exploit_keeps_own_hparams() -> None:
    cfg = _config(exploit={"name": "truncation", "copy_hparams": False})
    plan = plan_round(cfg, _snapshot(), [0])[0]
    assert isinstance(plan, ExploitPlan) and plan.taken == {"lr": 0.01, "depth": 1}
    assert plan.exploit_summary.endswith("(weights only)")


def test_plan_member_is_none_unless_the_member_is_at_a_ready_point() -> None:
    cfg = _config()
    assert plan_member(cfg, _snapshot(overrides={0: {"last_ready_step": 6}}), 0) is None  # only 2 steps since
    assert plan_member(cfg, _snapshot(overrides={0: {"state": MemberState.FINISHED}}), 0) is None
    assert isinstance(plan_member(cfg, _snapshot(), 0), ExploitPlan)
    assert ready_members(cfg, _snapshot(overrides={2: {"last_ready_step": 6}})) == [0, 1, 3, 4]
    with pytest.raises(KeyError):
        plan_round(cfg, _snapshot(), [9])


def test_no_donor_with_a_finite_score_means_continue() -> None:
    nan = float("nan")
    plan = plan_round(_config(), _snapshot(scores=(nan, nan, nan, nan, nan)), [4])[4]  # last by id: the bottom
    assert isinstance(plan, ReadyCheck) and "finite" in plan.reason


def test_explore_stays_inside_the_space() -> None:
    cfg = _config(explore="resample")
    rng = random.Random(0)
    for step in range(50):
        new, summary = explore_hparams(cfg, rng.randrange(5), step, {"lr": 0.5, "depth": 4})
        assert 0.001 <= new["lr"] <= 1.0 and isinstance(new["depth"], int) and 1 <= new["depth"] <= 8
        assert "resample" in summary
