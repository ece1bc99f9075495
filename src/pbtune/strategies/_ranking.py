"""Ranking of members by score: NaN and infinities rank worst in either direction."""

from __future__ import annotations

import math
from collections.abc import Iterable

from pbtune.errors import InvalidConfigError
from pbtune.types import MemberRecord

MODES = ("max", "min")


def check_mode(mode: str, where: str) -> str:
    if mode not in MODES:
        raise InvalidConfigError("mode", where, f"one of {list(MODES)}", mode)
    return mode


def fitness(score: float | None, mode: str) -> float:
    """A number where larger is better; non-finite or missing scores give -inf."""
    if score is None or not math.isfinite(score):
        return -math.inf
    return score if mode == "max" else -score


def ranked(members: Iterable[MemberRecord], mode: str) -> list[MemberRecord]:
    """Scored members, best first; ties broken by member id so the order is deterministic."""
    scored = [m for m in members if m.score is not None]
    return sorted(scored, key=lambda m: (-fitness(m.score, mode), m.member_id))


def is_better(a: float | None, b: float | None, mode: str) -> bool:
    return fitness(a, mode) > fitness(b, mode)
