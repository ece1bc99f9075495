"""Ranking of members by score, and the one rule for the best member.

Every engine, the server, the live display and the reports use these functions, so they
always agree on who is best.

The best-member rule: among members that are not ``FAILED`` and whose score is finite (NaN
and infinities never win), the best score in the run's direction; ties go to the lowest member
id. No such member: no best (``None``). "Score" is the run's :class:`Ranking` score: the last
reported score, or with ``window > 1`` the mean of the last ``window`` reports (noisy
evaluations then crown the best member rather than the luckiest).

Example:
    >>> from pbtune.types import MemberRecord, MemberState
    >>> pop = [MemberRecord("r", i, MemberState.RUNNING, 4, {}, score=s)
    ...        for i, s in enumerate([0.5, float("inf"), 0.9, 0.9])]
    >>> best_member(pop, "max").member_id
    2
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from pbtune.errors import InvalidConfigError
from pbtune.types import RECENT_SCORES, MemberRecord, MemberState
from pbtune.validation import check_int

__all__ = ["MODES", "Ranking", "best_member", "check_mode", "fitness", "is_better", "ranked", "ranking_from_config"]

MODES = ("max", "min")


def check_mode(mode: str, where: str) -> str:
    """``mode`` if it is ``"max"`` or ``"min"``, else :class:`InvalidConfigError`."""
    if mode not in MODES:
        raise InvalidConfigError("mode", where, f"one of {list(MODES)}", mode)
    return mode


def fitness(score: float | None, mode: str) -> float:
    """A number where larger is better; non-finite or missing scores give -inf."""
    if score is None or not math.isfinite(score):
        return -math.inf
    return score if mode == "max" else -score


def ranked(members: Iterable[MemberRecord], mode: str) -> list[MemberRecord]:
    """Scored members, best first (non-finite scores last); ties broken by member id."""
    scored = [m for m in members if m.score is not None]
    return sorted(scored, key=lambda m: (-fitness(m.score, mode), m.member_id))


def is_better(a: float | None, b: float | None, mode: str) -> bool:
    """True when score ``a`` is strictly better than ``b`` (non-finite scores are worst)."""
    return fitness(a, mode) > fitness(b, mode)


@dataclass(frozen=True)
class Ranking:
    """How members are compared: by the mean (or trend) of their last ``window`` reported scores.

    ``window=1`` (the default) is the last score, as in the paper. A larger window averages
    evaluation noise away; a member that just exploited is ranked on its own recent scores
    until new ones come in, so keep ``window`` at most the ready interval. ``fit="trend"``
    ranks by the least-squares line through the window's scores at its last step (with 3 or
    more scores; fewer: their mean): noise averaged, no lag behind an improving member.

    Example:
        >>> m = MemberRecord("r", 0, MemberState.RUNNING, 3, {}, score=0.9, recent=((1, 0.1), (2, 0.5), (3, 0.9)))
        >>> Ranking(window=2).score(m)
        0.7
    """

    window: int = 1
    fit: str = "mean"

    def __post_init__(self) -> None:
        check_int(self.window, "window", "ranking", minimum=1)
        if self.window > RECENT_SCORES:
            raise InvalidConfigError("window", "ranking", f"an integer <= {RECENT_SCORES}", self.window)
        if self.fit not in FITS:
            raise InvalidConfigError("fit", "ranking", f"one of {list(FITS)}", self.fit)

    def score(self, member: MemberRecord) -> float | None:
        """The member's ranking score (non-finite if any score in the window is)."""
        if self.window == 1:
            return member.score
        recent = [(step, s) for step, s in member.recent if step <= member.step][-self.window:]
        if not recent:
            return member.score
        if self.fit == "trend" and len(recent) > 2:
            return _trend_at_last(recent)
        return math.fsum(s for _, s in recent) / len(recent)

    def view(self, members: Iterable[MemberRecord]) -> list[MemberRecord]:
        """The members with ``score`` replaced by their ranking score (for strategies that rank)."""
        if self.window == 1:
            return list(members)
        return [dataclasses.replace(m, score=self.score(m)) for m in members]

    def to_config(self) -> dict[str, Any]:
        return {"window": self.window, **({"fit": self.fit} if self.fit != "mean" else {})}


FITS = ("mean", "trend")


def _trend_at_last(points: list[tuple[int, float]]) -> float:
    """The least-squares line through ``(step, score)`` evaluated at the last step: averages noise
    like the mean, without the mean's lag behind a member that is still improving."""
    steps = [float(step) for step, _ in points]
    scores = [s for _, s in points]
    mean_step, mean_score = math.fsum(steps) / len(steps), math.fsum(scores) / len(scores)
    spread = math.fsum((x - mean_step) ** 2 for x in steps)
    if spread == 0:
        return mean_score
    slope = math.fsum((x - mean_step) * (y - mean_score) for x, y in zip(steps, scores, strict=True)) / spread
    return mean_score + slope * (steps[-1] - mean_step)


def ranking_from_config(config: Any) -> Ranking:
    """``{"window": 3}``, an integer window, ``None`` (the default) or a :class:`Ranking`."""
    if config is None:
        return Ranking()
    if isinstance(config, Ranking):
        return config
    if isinstance(config, int) and not isinstance(config, bool):
        return Ranking(window=config)
    if not isinstance(config, Mapping):
        raise InvalidConfigError("ranking", "config", "an integer window or a mapping like {window: 3}", config)
    unknown = sorted(set(config) - {"window", "fit"})
    if unknown:
        raise InvalidConfigError(unknown[0], "ranking", "one of ['fit', 'window']", config[unknown[0]])
    return Ranking(**config)


def best_member(members: Iterable[MemberRecord], mode: str, ranking: Ranking | None = None) -> MemberRecord | None:
    """The best member by the rule in this module's docstring, or ``None`` if none qualifies.

    The record returned is the store's (its ``score`` is the raw last score).
    """
    rule = ranking or Ranking()
    alive = [m for m in members if m.state is not MemberState.FAILED]
    scored = {m.member_id: rule.score(m) for m in alive}
    candidates = [m for m in alive if (s := scored[m.member_id]) is not None and math.isfinite(s)]
    candidates.sort(key=lambda m: (-fitness(scored[m.member_id], mode), m.member_id))
    return candidates[0] if candidates else None
