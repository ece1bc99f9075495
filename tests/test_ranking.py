"""The one best-member rule and the ranking helpers every engine and report uses."""

from __future__ import annotations

import math

import pytest

from pbtune.config import RunConfig
from pbtune.errors import PBTuneError
from pbtune.ranking import Ranking, best_member, fitness, is_better, ranked
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


def _noisy(member_id: int, recent: tuple[float, ...], state: MemberState = MemberState.RUNNING) -> MemberRecord:
    return MemberRecord("r", member_id, state, len(recent), {}, score=recent[-1],
                        recent=tuple((step + 1, s) for step, s in enumerate(recent)), checkpoint=f"k{member_id}")


def test_a_smoothed_ranking_crowns_the_consistently_good_member_not_the_lucky_one() -> None:
    steady, lucky = _noisy(0, (0.8, 0.81, 0.79, 0.8)), _noisy(1, (0.2, 0.3, 0.25, 0.95))
    assert best_member([steady, lucky], "max").member_id == 1  # type: ignore[union-attr]  # raw: the luckiest
    rule = Ranking(window=3)
    assert best_member([steady, lucky], "max", rule).member_id == 0  # type: ignore[union-attr]
    assert rule.score(lucky) == pytest.approx((0.3 + 0.25 + 0.95) / 3)
    assert Ranking(window=8).score(steady) == pytest.approx(0.8)  # fewer reports than the window: their mean
    assert math.isnan(Ranking(window=2).score(_noisy(2, (0.5, math.nan, 0.9))))  # a NaN in the window ranks worst
    assert [m.score for m in rule.view([steady])] == [pytest.approx(0.8)]


def test_ranking_config_forms_and_validation() -> None:
    from pbtune.errors import InvalidConfigError
    from pbtune.ranking import ranking_from_config

    assert ranking_from_config(None) == Ranking() == ranking_from_config(1)
    assert ranking_from_config({"window": 4}) == Ranking(window=4)
    for bad in (0, True, {"window": 99}, {"span": 2}, "mean"):
        with pytest.raises(InvalidConfigError, match="window|span|ranking"):
            ranking_from_config(bad)
    cfg = RunConfig(name="r", space={"x": {"type": "float", "low": 0, "high": 1}}, ranking={"window": 3})
    assert cfg.to_dict()["ranking"] == {"window": 3} and RunConfig.from_dict(cfg.to_dict()).ranking == cfg.ranking


def test_a_trend_fit_averages_noise_without_lagging_behind_an_improving_member() -> None:
    rising = _noisy(0, (0.2, 0.4, 0.6, 0.8))  # steps 1..4, a straight line
    trend, mean = Ranking(window=4, fit="trend"), Ranking(window=4)
    assert trend.score(rising) == pytest.approx(0.8)  # the line at the last step: no lag
    assert mean.score(rising) == pytest.approx(0.5)  # the mean lags by 1.5 steps of progress
    flat = _noisy(1, (0.5, 0.6, 0.4, 0.6))  # noise around 0.5: nearer to it than the last draw (0.6)
    assert trend.score(flat) == pytest.approx(0.54) and abs(trend.score(flat) - 0.5) < abs(0.6 - 0.5)
    assert Ranking(window=4, fit="trend").score(_noisy(2, (0.3, 0.9))) == pytest.approx(0.6)  # 2 points: the mean
    assert math.isnan(trend.score(_noisy(3, (0.5, math.nan, 0.9, 0.7))))  # a NaN in the window ranks worst
    improving, early = _noisy(4, (0.1, 0.3, 0.5, 0.7)), _noisy(5, (0.6, 0.6, 0.6, 0.6))
    assert best_member([improving, early], "max", mean).member_id == 5  # type: ignore[union-attr]
    assert best_member([improving, early], "max", trend).member_id == 4  # type: ignore[union-attr]


def test_the_fit_is_validated_and_stored_only_when_not_the_mean() -> None:
    from pbtune.errors import InvalidConfigError
    from pbtune.ranking import ranking_from_config

    assert ranking_from_config({"window": 4, "fit": "trend"}) == Ranking(window=4, fit="trend")
    with pytest.raises(InvalidConfigError, match="`fit` of `ranking` must be one of"):
        ranking_from_config({"window": 4, "fit": "median"})
    assert Ranking(window=3).to_config() == {"window": 3}  # runs stored before `fit` existed still resume
    assert Ranking(window=4, fit="trend").to_config() == {"window": 4, "fit": "trend"}


def test_the_planner_ranks_by_the_smoothed_score() -> None:
    from pbtune.round import ExploitPlan, plan_round

    members = [_noisy(0, (0.1, 0.1, 0.1, 0.1)), _noisy(1, (0.9, 0.9, 0.9, 0.5)), _noisy(2, (0.2, 0.2, 0.2, 0.99))]
    space = {"x": {"type": "float", "low": 0, "high": 1}}
    raw = plan_round(RunConfig(name="r", space=space, population=3, exploit={"name": "truncation", "quantile": 0.34}),
                     members, [0])[0]
    smoothed = plan_round(RunConfig(name="r", space=space, population=3, ranking={"window": 3},
                                    exploit={"name": "truncation", "quantile": 0.34}), members, [0])[0]
    assert isinstance(raw, ExploitPlan) and raw.donor_id == 2  # a lucky last report
    assert isinstance(smoothed, ExploitPlan) and smoothed.donor_id == 1
