from __future__ import annotations

import math
import random

import pytest

from pbtune.errors import InvalidConfigError
from pbtune.space import Choice, Float, Int, Space


def test_sampling_is_deterministic_given_the_seed() -> None:
    space = Space({"lr": Float(1e-4, 1e-1, log=True), "n": Int(1, 9), "act": Choice(["a", "b", "c"])})
    assert space.sample(random.Random(7)) == space.sample(random.Random(7))
    assert space.sample(random.Random(7)) != space.sample(random.Random(8))


def test_log_float_samples_cover_decades_evenly() -> None:
    domain = Float(1e-4, 1.0, log=True)
    rng = random.Random(0)
    logs = [math.log10(domain.sample(rng)) for _ in range(4000)]
    below = sum(v < -2 for v in logs) / len(logs)
    assert 0.45 < below < 0.55  # half of the draws in the lower two of four decades


@pytest.mark.parametrize("factor", [0.8, 1.2])
def test_float_perturb_multiplies_and_stays_inside(factor: float) -> None:
    domain = Float(0.0, 1.0)
    value, how = domain.perturb(0.5, factor, random.Random(0))
    assert value == pytest.approx(0.5 * factor) and how == f"x{factor:g}"
    assert domain.perturb(0.95, 1.2, random.Random(0))[0] == 1.0  # clipped


def test_log_float_perturb_is_a_shift_in_log_space() -> None:
    domain = Float(1e-5, 1.0, log=True)
    value, _ = domain.perturb(1e-3, 1.2, random.Random(0))
    assert math.log(value) - math.log(1e-3) == pytest.approx(math.log(1.2))
    assert domain.perturb(2e-5, 0.1, random.Random(0))[0] == 1e-5


def test_zero_on_a_linear_float_still_moves() -> None:
    value, _ = Float(0.0, 2.0).perturb(0.0, 1.2, random.Random(0))
    assert value == pytest.approx(0.4)


def test_int_perturb_stays_int_moves_and_clips() -> None:
    domain = Int(1, 10)
    assert domain.perturb(2, 1.2, random.Random(0))[0] == 3  # round(2.4) == 2 would not move
    assert domain.perturb(2, 0.8, random.Random(0))[0] == 1
    assert domain.perturb(10, 1.2, random.Random(0))[0] == 10
    value = domain.perturb(5, 1.2, random.Random(0))[0]
    assert isinstance(value, int) and value == 6


def test_int_log_sampling_stays_in_bounds() -> None:
    domain = Int(1, 1000, log=True)
    rng = random.Random(1)
    values = [domain.sample(rng) for _ in range(500)]
    assert all(isinstance(v, int) and 1 <= v <= 1000 for v in values)


def test_choice_moves_to_a_neighbour() -> None:
    domain = Choice([16, 32, 64, 128])
    rng = random.Random(3)
    for _ in range(20):
        new, how = domain.perturb(32, 1.2, rng)
        assert new in (16, 64) and how == "neighbour"
    assert domain.perturb(16, 0.8, rng)[0] == 32
    assert domain.perturb(128, 0.8, rng)[0] == 64


def test_space_perturb_respects_resample_probability() -> None:
    space = Space({"x": Float(0.0, 1.0)})
    rng = random.Random(0)
    hows = [space.perturb({"x": 0.5}, rng, resample_probability=0.3)[1][0].how for _ in range(2000)]
    assert 0.25 < hows.count("resample") / len(hows) < 0.35


def test_resample_draws_from_the_prior_and_keeps_undeclared_keys() -> None:
    space = Space({"x": Float(0.0, 1.0)})
    new, changes = space.resample({"x": 0.5, "other": "kept"}, random.Random(1))
    assert new["other"] == "kept" and changes[0].how == "resample" and 0 <= new["x"] <= 1


def test_change_summary_is_readable() -> None:
    _, changes = Space({"lr": Float(1e-4, 1.0, log=True)}).perturb({"lr": 0.01}, random.Random(0), factors=[0.8])
    assert changes[0].summary() == "lr: 0.01 --(x0.8)--> 0.008"


@pytest.mark.parametrize(
    ("config", "field"),
    [
        ({"x": {"type": "float", "low": 1, "high": 1}}, "low"),
        ({"x": {"type": "float", "low": 2, "high": 1}}, "low"),
        ({"x": {"type": "float", "low": 0, "high": 1, "log": True}}, "low"),
        ({"x": {"type": "gaussian", "low": 0, "high": 1}}, "type"),
        ({"x": {"type": "int", "low": 0.5, "high": 3}}, "low"),
        ({"x": {"type": "float", "low": 0, "high": 1, "step": 2}}, "step"),
        ({"x": {"type": "choice", "values": []}}, "values"),
        ({"x": {"type": "float", "high": 1}}, "low"),
        ({"x": {"type": "float", "low": "a", "high": 1}}, "low"),
    ],
)
def test_bad_domains_name_the_field(config: dict, field: str) -> None:
    with pytest.raises(InvalidConfigError) as info:
        Space(config)
    assert info.value.field == field
    assert f"`{field}`" in str(info.value) and "got" in str(info.value)


def test_config_round_trip() -> None:
    space = Space({"lr": Float(1e-4, 1e-1, log=True), "n": Int(1, 9), "act": ["a", "b"]})
    assert Space(space.to_config()).to_config() == space.to_config()


def test_validate_rejects_values_outside() -> None:
    space = Space({"n": Int(1, 3)})
    space.validate({"n": 2})
    with pytest.raises(InvalidConfigError, match="`n`"):
        space.validate({"n": 7})


def test_float_over_the_whole_float_range_never_samples_or_perturbs_to_inf() -> None:
    """issue 14 item 10: rng.uniform(-1e308, 1e308) overflows (high - low is inf)."""
    domain = Float(-1e308, 1e308)
    rng = random.Random(0)
    samples = [domain.sample(rng) for _ in range(2000)]
    assert all(math.isfinite(x) and -1e308 <= x <= 1e308 for x in samples)
    assert min(samples) < -1e306 and max(samples) > 1e306  # still spread over the range
    for factor in (0.8, 1.2, 1.0):
        moved, _ = domain.perturb(0.0, factor, rng)
        assert math.isfinite(moved) and -1e308 <= moved <= 1e308
