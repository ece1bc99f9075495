from __future__ import annotations

import math
import random
from collections import Counter

import pytest

from pbtune.errors import InvalidConfigError
from pbtune.space import Float, Space
from pbtune.strategies import (
    Continue,
    Exploit,
    Perturb,
    PerturbOrResample,
    Ready,
    Resample,
    Tournament,
    Truncation,
    exploit_from_config,
    explore_from_config,
    ready_from_config,
)
from pbtune.types import MemberRecord, MemberState


def member(
    i: int, score: float | None, *, step: int = 10, checkpoint: bool = True, last_ready: int = 0
) -> MemberRecord:
    return MemberRecord("r", i, MemberState.RUNNING, step, {"lr": 0.1 * (i + 1)}, score=score,
                        checkpoint=f"ck{i}" if checkpoint else None, checkpoint_step=step, last_ready_step=last_ready)


def population(scores: list[float | None], **kw: object) -> list[MemberRecord]:
    return [member(i, s, **kw) for i, s in enumerate(scores)]  # type: ignore[arg-type]


def test_ready_after_interval_and_burn_in() -> None:
    ready = Ready(interval=5, burn_in=20)
    assert not ready.is_ready(member(0, 1.0, step=10, last_ready=0))  # burn-in
    assert ready.is_ready(member(0, 1.0, step=20, last_ready=15))
    assert not ready.is_ready(member(0, 1.0, step=24, last_ready=20))


def test_truncation_bottom_copies_from_top_quantile() -> None:
    pop = population([float(i) for i in range(10)])
    strategy = Truncation(quantile=0.2)
    donors = Counter()
    for seed in range(200):
        decision = strategy.decide(pop, 0, random.Random(seed), mode="max")
        assert isinstance(decision, Exploit)
        donors[decision.donor_id] += 1
    assert set(donors) == {8, 9} and min(donors.values()) > 60
    assert isinstance(strategy.decide(pop, 5, random.Random(0), mode="max"), Continue)
    assert isinstance(strategy.decide(pop, 9, random.Random(0), mode="max"), Continue)


def test_truncation_rounding_ceil_is_the_published_ceil_n_over_5() -> None:
    # 6 members: floor(1.2) = 1 member per tail; the earlier MNIST-PBT project's ceil(6/5) = 2
    pop = population([float(i) for i in range(6)])
    floor, ceil = Truncation(), Truncation(rounding="ceil")
    assert isinstance(floor.decide(pop, 1, random.Random(0), mode="max"), Continue)
    donors = {ceil.decide(pop, 1, random.Random(seed), mode="max").donor_id for seed in range(50)}  # type: ignore[union-attr]
    assert donors == {4, 5}
    assert isinstance(ceil.decide(pop, 2, random.Random(0), mode="max"), Continue)
    assert [ceil.tail(n) for n in (2, 5, 6, 10, 11)] == [1, 1, 2, 2, 3]
    assert [floor.tail(n) for n in (2, 5, 6, 10, 11)] == [1, 1, 1, 2, 2]
    assert Truncation(quantile=0.3, rounding="ceil").tail(10) == 3  # 10 * 0.3 is 3.0000000000000004


def test_truncation_rounding_is_validated_and_stored_only_when_not_floor() -> None:
    from pbtune.strategies import strategy_config

    with pytest.raises(InvalidConfigError, match=r"`rounding` of `exploit` must be one of \['floor', 'ceil'\]"):
        exploit_from_config({"name": "truncation", "rounding": "up"})
    assert "rounding" not in strategy_config(Truncation())  # configs stored before the field still compare equal
    stored = strategy_config(Truncation(rounding="ceil"))
    assert stored["rounding"] == "ceil" and exploit_from_config(stored) == Truncation(rounding="ceil")


def test_truncation_min_mode_reverses_the_ranking() -> None:
    pop = population([float(i) for i in range(10)])
    decision = Truncation().decide(pop, 9, random.Random(0), mode="min")
    assert isinstance(decision, Exploit) and decision.donor_id in (0, 1)


def test_truncation_is_deterministic_given_the_rng() -> None:
    pop = population([float(i) for i in range(20)])
    picks = {Truncation().decide(pop, 0, random.Random(42), mode="max") for _ in range(5)}
    assert len(picks) == 1


def test_donor_without_checkpoint_is_never_chosen() -> None:
    pop = population([0.0, 1.0, 2.0, 3.0, 4.0])
    pop[4] = member(4, 4.0, checkpoint=False)
    decision = Truncation(quantile=0.4).decide(pop, 0, random.Random(0), mode="max")
    assert isinstance(decision, Exploit) and decision.donor_id == 3
    only = [member(0, 0.0), member(1, 9.0, checkpoint=False)]
    assert isinstance(Truncation(quantile=0.5).decide(only, 0, random.Random(0), mode="max"), Continue)


@pytest.mark.parametrize("bad", [math.nan, math.inf, -math.inf])
def test_non_finite_scores_rank_worst(bad: float) -> None:
    pop = population([1.0, 2.0, 3.0, 4.0, bad])
    for mode in ("max", "min"):
        decision = Truncation().decide(pop, 4, random.Random(0), mode=mode)
        assert isinstance(decision, Exploit), mode
        assert decision.donor_id == (3 if mode == "max" else 0)


def test_unscored_member_continues_and_is_no_donor() -> None:
    pop = population([None, 1.0, 2.0])
    assert isinstance(Truncation(quantile=0.5).decide(pop, 0, random.Random(0), mode="max"), Continue)


def test_tournament_copies_only_a_better_opponent() -> None:
    pop = population([1.0, 5.0])
    assert Tournament().decide(pop, 0, random.Random(0), mode="max") == Exploit(1, "ck1", 10, 5.0)
    assert isinstance(Tournament().decide(pop, 1, random.Random(0), mode="max"), Continue)
    tie = population([1.0, 1.0])
    assert isinstance(Tournament().decide(tie, 0, random.Random(0), mode="max"), Continue)


def test_weights_only_exploit_is_flagged() -> None:
    strategy = Truncation(quantile=0.5, copy_hparams=False)
    decision = strategy.decide(population([1.0, 2.0]), 0, random.Random(0), mode="max")
    assert isinstance(decision, Exploit) and decision.copy_hparams is False


def test_explore_strategies() -> None:
    space = Space({"lr": Float(1e-4, 1.0, log=True)})
    hp = {"lr": 0.01}
    new, changes = Perturb().explore(hp, space, random.Random(0))
    assert new["lr"] in (pytest.approx(0.008), pytest.approx(0.012)) and changes[0].how.startswith("x")
    assert Resample().explore(hp, space, random.Random(0))[1][0].how == "resample"
    hows = Counter(PerturbOrResample(resample_probability=0.5).explore(hp, space, random.Random(s))[1][0].how
                   for s in range(400))
    assert 150 < hows["resample"] < 250


@pytest.mark.parametrize(
    ("build", "field"),
    [
        (lambda: Truncation(quantile=0.0), "quantile"),
        (lambda: Truncation(quantile=0.6), "quantile"),
        (lambda: Ready(interval=0), "interval"),
        (lambda: PerturbOrResample(resample_probability=1.5), "resample_probability"),
        (lambda: Perturb(factors=()), "factors"),
        (lambda: exploit_from_config("roulette"), "name"),
        (lambda: explore_from_config({"name": "perturb", "sigma": 1}), "sigma"),
        (lambda: ready_from_config({"every": 3}), "every"),
    ],
)
def test_bad_strategy_config_names_the_field(build, field: str) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(InvalidConfigError) as info:
        build()
    assert info.value.field == field
