"""Ranking of members by score, and the one rule for the best member.

Every engine, the server, the live display and the reports use these functions, so they
always agree on who is best.

The best-member rule: among members that are not ``FAILED`` and whose last score is finite
(NaN and infinities never win), the best score in the run's direction; ties go to the lowest
member id. No such member: no best (``None``).

Example:
    >>> from pbtune.types import MemberRecord, MemberState
    >>> pop = [MemberRecord("r", i, MemberState.RUNNING, 4, {}, score=s)
    ...        for i, s in enumerate([0.5, float("inf"), 0.9, 0.9])]
    >>> best_member(pop, "max").member_id
    2
"""

from __future__ import annotations

import math
from collections.abc import Iterable

from pbtune.errors import InvalidConfigError
from pbtune.types import MemberRecord, MemberState

__all__ = ["MODES", "best_member", "check_mode", "fitness", "is_better", "ranked"]

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


def best_member(members: Iterable[MemberRecord], mode: str) -> MemberRecord | None:
    """The best member by the rule in this module's docstring, or ``None`` if none qualifies."""
    candidates = [m for m in members if m.state is not MemberState.FAILED and m.has_finite_score]
    order = ranked(candidates, mode)
    return order[0] if order else None
