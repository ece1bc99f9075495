"""The lineage-share guard: Truncation's ``max_lineage_share``, pure and seeded, and the round
planner's accounting of the lineages its earlier plans of a round already moved."""

from __future__ import annotations

import dataclasses
import random
from collections import Counter

import pytest

from pbtune.config import RunConfig
from pbtune.errors import InvalidConfigError
from pbtune.round import ExploitPlan, plan_replacement, plan_round
from pbtune.strategies import Continue, Exploit, Truncation, exploit_from_config, strategy_config
from pbtune.types import MemberRecord, MemberState

SPACE = {"lr": {"type": "float", "low": 0.001, "high": 1.0, "log": True}}


def _pop(lineages: list[int], scores: list[float] | None = None) -> list[MemberRecord]:
    scores = scores if scores is not None else [float(i) for i in range(len(lineages))]
    return [MemberRecord("r", i, MemberState.RUNNING, 4, {"lr": 0.01 * (i + 1)}, score=s, checkpoint=f"k{i}",
                         lineage=lineage) for i, (lineage, s) in enumerate(zip(lineages, scores, strict=True))]


def _donors(strategy: Truncation, pop: list[MemberRecord], member_id: int, seeds: int = 200) -> Counter[int]:
    found: Counter[int] = Counter()
    for seed in range(seeds):
        decision = strategy.decide(pop, member_id, random.Random(seed), mode="max")
        assert isinstance(decision, Exploit)
        found[decision.donor_id] += 1
    return found


def test_a_member_s_lineage_is_its_own_id_until_set() -> None:
    assert MemberRecord("r", 5, MemberState.PENDING, 0, {}).lineage == 5
    assert MemberRecord("r", 5, MemberState.PENDING, 0, {}, lineage=2).lineage == 2
    assert MemberRecord("r", 5, MemberState.PENDING, 0, {}, lineage=0).lineage == 0


def test_max_lineage_share_is_validated_and_stored_only_when_set() -> None:
    for bad in (0, -0.1, 1.5, float("nan"), "half", True):
        with pytest.raises(InvalidConfigError, match=r"`max_lineage_share` of `exploit` must be"):
            exploit_from_config({"name": "truncation", "max_lineage_share": bad})
    assert Truncation(max_lineage_share=1.0).lineage_cap(8) == 8
    assert "max_lineage_share" not in strategy_config(Truncation())  # runs stored before the field still resume
    stored = strategy_config(Truncation(max_lineage_share=0.34))
    assert stored["max_lineage_share"] == 0.34 and exploit_from_config(stored) == Truncation(max_lineage_share=0.34)


def test_lineage_cap_is_the_ceiling_of_the_share_and_at_least_one() -> None:
    strategy = Truncation(max_lineage_share=0.34)
    assert [strategy.lineage_cap(n) for n in (1, 2, 3, 8, 9, 10)] == [1, 1, 2, 3, 4, 4]
    assert Truncation(max_lineage_share=1 / 3).lineage_cap(9) == 3  # 9 * (1/3) is not rounded up to 4
    assert Truncation().lineage_cap(8) is None


def test_a_donor_whose_lineage_holds_its_share_is_not_eligible() -> None:
    # 8 members ranked by id; the top quarter (6, 7) donate. 7's lineage holds 7, 5 and 4.
    pop = _pop([0, 1, 2, 3, 7, 7, 6, 7])
    assert set(_donors(Truncation(quantile=0.25), pop, 0)) == {6, 7}  # without the guard: both
    guarded = Truncation(quantile=0.25, max_lineage_share=0.34)  # cap: ceil(0.34 * 8) = 3
    assert set(_donors(guarded, pop, 0)) == {6}
    # a member of 7's lineage copying within it does not grow it: both donors stay eligible
    inside = _pop([7, 1, 2, 3, 7, 7, 6, 7])
    assert set(_donors(guarded, inside, 0)) == {6, 7}
    # a share that 7's lineage is still below: no change
    assert set(_donors(Truncation(quantile=0.25, max_lineage_share=0.5), pop, 0)) == {6, 7}


def test_every_donor_lineage_full_means_continue_with_the_reason() -> None:
    pop = _pop([0, 7, 6, 6, 6, 7, 6, 7])  # 6's lineage holds 4 members, 7's 3; the donors are 6 and 7
    decision = Truncation(quantile=0.25, max_lineage_share=0.34).decide(pop, 0, random.Random(0), mode="max")
    assert isinstance(decision, Continue) and "max_lineage_share" in decision.reason and "3 members" in decision.reason
    unguarded = Truncation(quantile=0.25).decide(pop, 0, random.Random(0), mode="max")
    assert isinstance(unguarded, Exploit)


def test_with_the_top_tail_s_lineages_full_the_best_eligible_member_above_the_bottom_tail_donates() -> None:
    pop = _pop([0, 1, 2, 3, 7, 7, 7, 7])  # the donors 6 and 7 are of lineage 7, which holds 4 > 3 members
    guarded = Truncation(quantile=0.25, max_lineage_share=0.34)
    assert _donors(guarded, pop, 0) == Counter({3: 200})  # 5 and 4 are of lineage 7; 3 is the best of the rest
    worse = _pop([0, 1, 2, 3, 7, 7, 7, 7], scores=[5.0, 0.0, 1.0, 2.0, 6.0, 7.0, 8.0, 9.0])
    decision = guarded.decide(worse, 1, random.Random(0), mode="max")  # 1 is last; 0 (5.0) is the best eligible
    assert isinstance(decision, Exploit) and decision.donor_id == 0


def test_the_guard_draws_the_same_as_before_when_it_filters_nothing() -> None:
    pop = _pop(list(range(8)))
    for seed in range(20):
        plain = Truncation(quantile=0.25).decide(pop, 0, random.Random(seed), mode="max")
        guarded = Truncation(quantile=0.25, max_lineage_share=0.34).decide(pop, 0, random.Random(seed), mode="max")
        assert plain == guarded


def _config(share: float | None, seed: int, **exploit: object) -> RunConfig:
    return RunConfig(name="r", space=SPACE, population=8, seed=seed, ready={"interval": 4},
                     exploit={"name": "truncation", "quantile": 0.5, "max_lineage_share": share, **exploit})


def _after(snapshot: list[MemberRecord], plans: dict[int, object]) -> Counter[int]:
    """Lineage sizes once the plans are carried out."""
    lineage = {m.member_id: m.lineage for m in snapshot}
    for member_id, plan in plans.items():
        if isinstance(plan, ExploitPlan):
            lineage[member_id] = plan.donor_lineage
    return Counter(lineage.values())


def test_a_lockstep_round_cannot_overshoot_the_share() -> None:
    # The bottom half (0-3) copies the top half (4-7); 4 and 5 are of 7's lineage already.
    snapshot = _pop([0, 1, 2, 3, 7, 7, 6, 7])
    overshoots = 0
    for seed in range(60):
        cfg = _config(0.5, seed)  # cap 4
        plans = plan_round(cfg, snapshot, range(8))
        sizes = _after(snapshot, plans)
        assert max(sizes.values()) <= 4, (seed, sizes)
        for plan in plans.values():
            if isinstance(plan, ExploitPlan):
                assert plan.donor_lineage == snapshot[plan.donor_id].lineage
                assert plan.write().donor_lineage == plan.donor_lineage
        # deciding each member against the round's first snapshot would overshoot
        alone = {m: plan_round(cfg, snapshot, [m])[m] for m in range(8)}
        overshoots += max(_after(snapshot, alone).values()) > 4
    assert overshoots > 0


def test_a_member_that_leaves_a_full_lineage_makes_room_in_the_same_round() -> None:
    # Cap 2 (0.25 of 8). Copiers 0 (of 7's lineage, full: 0 and 7) and 1; donors 6 and 7.
    # Whichever lineage member 0 ends in is full, so member 1 copies into the other one; when
    # member 0 moves to 6's lineage, 7's has room again for member 1.
    snapshot = _pop([7, 1, 2, 3, 4, 5, 6, 7])
    firsts = set()
    for seed in range(40):
        cfg = RunConfig(name="r", space=SPACE, population=8, seed=seed, ready={"interval": 4},
                        exploit={"name": "truncation", "quantile": 0.25, "max_lineage_share": 0.25})
        plans = plan_round(cfg, snapshot, [0, 1])
        first, second = plans[0], plans[1]
        assert isinstance(first, ExploitPlan) and isinstance(second, ExploitPlan)
        assert {first.donor_lineage, second.donor_lineage} == {6, 7}
        firsts.add(first.donor_lineage)
    assert firsts == {6, 7}


def test_failed_members_neither_count_nor_donate() -> None:
    # Members 4 and 5 failed, both of 6's lineage: 6's lineage holds 1 of the 6 alive members.
    snapshot = _pop([0, 1, 2, 3, 6, 6, 6, 7])
    snapshot[4] = dataclasses.replace(snapshot[4], state=MemberState.FAILED)
    snapshot[5] = dataclasses.replace(snapshot[5], state=MemberState.FAILED)
    donors = set()
    for seed in range(40):
        cfg = RunConfig(name="r", space=SPACE, population=8, seed=seed, ready={"interval": 4},
                        exploit={"name": "truncation", "quantile": 0.5, "max_lineage_share": 0.34})
        plan = plan_round(cfg, snapshot, [0])[0]  # top half of the 6 ranked: 7, 6, 3
        assert isinstance(plan, ExploitPlan)
        donors.add(plan.donor_id)
    assert donors == {3, 6, 7}  # counting the failed ones (3 of 8, cap 3) would leave 6 out


def test_a_replacement_joins_its_donor_s_lineage() -> None:
    snapshot = _pop([0, 1, 7, 3])
    cfg = RunConfig(name="r", space=SPACE, population=4, seed=1, ready={"interval": 4}, max_failures=2)
    plan = plan_replacement(cfg, snapshot, 0)
    assert plan is not None and plan.donor_id == 3 and plan.donor_lineage == 3
    plan = plan_replacement(cfg, _pop([0, 1, 2, 2]), 0)
    assert plan is not None and plan.donor_lineage == 2 and plan.write().donor_lineage == 2
