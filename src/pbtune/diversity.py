"""How diverse a population still is: lineages alive and the spread of each hyperparameter.

PBT's failure mode is collapse: every member ends up a copy of one ancestor with nearly the
same hyperparameters, and the search stops. These figures make it visible (``pbtune status``,
the HTML report, ``RunResult.diversity``).

Example:
    >>> from pbtune.types import EventRecord, MemberRecord, MemberState
    >>> members = [MemberRecord("r", i, MemberState.RUNNING, 4, {"lr": lr}) for i, lr in enumerate([0.1, 0.1, 0.4])]
    >>> events = [EventRecord(1, "r", 1, 2, "exploit", 0.0, donor_id=0, donor_step=2)]
    >>> d = diversity(members, events)
    >>> d.lineages, d.roots, round(d.spread["lr"], 3)
    (2, (0, 2), 0.141)
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from pbtune.ancestry import ancestry
from pbtune.space import Choice, Space
from pbtune.types import EventRecord, MemberRecord, MemberState

__all__ = ["Diversity", "diversity"]


@dataclass(frozen=True)
class Diversity:
    """``lineages``: distinct initial members whose training lives on in the members that did not
    fail (``roots``); ``spread``: per hyperparameter, the standard deviation over those members
    (of log10 values for log domains) or, for choices, the number of distinct values."""

    lineages: int
    roots: tuple[int, ...]
    members: int
    spread: Mapping[str, float] = field(default_factory=dict)

    def summary(self) -> str:
        """E.g. ``3/8 lineages alive; spread lr 0.41 (log10), momentum 0.12``."""
        parts = [f"{name} {value:.3g}" for name, value in self.spread.items()]
        return f"{self.lineages}/{self.members} lineages alive" + (f"; spread {', '.join(parts)}" if parts else "")


def diversity(
    members: Sequence[MemberRecord], events: Iterable[EventRecord], space: Space | None = None
) -> Diversity:
    """The population's diversity now (failed members left out)."""
    alive = [m for m in members if m.state is not MemberState.FAILED]
    history = list(events)
    roots = sorted({ancestry(history, m.member_id, m.step)[0].member_id for m in alive})
    spread: dict[str, float] = {}
    for name in sorted({k for m in alive for k in m.hparams}):
        values = [m.hparams[name] for m in alive if name in m.hparams]
        spread[name] = _spread(values, None if space is None or name not in space else space[name])
    return Diversity(lineages=len(roots), roots=tuple(roots), members=len(members), spread=spread)


def _spread(values: list[Any], domain: Any) -> float:
    numeric = all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in values)
    if isinstance(domain, Choice) or not numeric:
        return float(len({repr(v) for v in values}))
    if getattr(domain, "log", False) and all(v > 0 for v in values):
        values = [math.log10(v) for v in values]
    return statistics.pstdev(values) if len(values) > 1 else 0.0
