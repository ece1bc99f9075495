"""The one best-member rule and the ranking helpers every engine and report uses."""

from __future__ import annotations

import math

import pytest

from pbtune.config import RunConfig
from pbtune.errors import PBTuneError
from pbtune.ranking import best_member, fitness, is_better, ranked
from pbtune.results import require_best
from pbtune.types import MemberRecord, MemberState


def _m(member_id: int, score: float | None, state: MemberState = MemberState.RUNNING) -> MemberRecord:
    return MemberRecord("r", member_id, state, 3, {}, score=score, error="Traceback\nValueError: boom")


def test_best_member_takes_finite_scores_of_members_that_did_not_fail() -> None:
    members = [_m(0, 0.5), _m(1, math.inf), _m(2, 0.9, MemberState.FAILED), _m(3, math.nan), _m(4, 0.7), _m(5, None)]
    assert best_member(members, "max").member_id == 4  # type: ignore[union-attr]
    assert best_member(members, "min").member_id == 0  # type: ignore[union-attr]  # -inf is not finite either
    assert best_member([_m(0, -math.inf), _m(1, 0.2)], "min").member_id == 1  # type: ignore[union-attr]


def test_ties_go_to_the_lowest_member_id_in_any_order() -> None:
    members = [_m(3, 0.8), _m(1, 0.8), _m(2, 0.1)]
    assert best_member(members, "max").member_id == 1  # type: ignore[union-attr]
    assert [m.member_id for m in ranked(reversed(members), "max")] == [1, 3, 2]


def test_no_qualifying_member_means_no_best_and_a_clear_error() -> None:
    cfg = RunConfig(name="r", space={"x": {"type": "float", "low": 0, "high": 1}})
    assert best_member([_m(0, math.nan), _m(1, None)], "max") is None
    with pytest.raises(PBTuneError, match="no member of run 'r' has a finite score"):
        require_best((_m(0, math.nan),), cfg)
    with pytest.raises(PBTuneError, match="every member of run 'r' failed; member 0: ValueError: boom"):
        require_best((_m(0, 1.0, MemberState.FAILED), _m(1, None, MemberState.FAILED)), cfg)


def test_non_finite_scores_rank_worst_in_either_direction() -> None:
    for mode in ("max", "min"):
        assert fitness(math.nan, mode) == fitness(math.inf, mode) == fitness(None, mode) == -math.inf
        assert is_better(0.0, math.nan, mode) and not is_better(math.inf, 0.0, mode)
