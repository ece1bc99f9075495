"""What an exploit strategy may ask of the population: a ranked view, not the whole list.

A strategy's decision needs a few facts: its own record, how many members are scored, its
place in the ranking, the top few, one random other member, or how many members each
lineage holds. :class:`PopulationView` asks
exactly that, so a store can answer it in SQL (a rank COUNT and a top-k SELECT inside the
ready point's transaction) instead of reading and decoding every member. :class:`ListView`
answers it from an in-memory snapshot; strategies decide through the view in both cases,
so there is one decision rule whichever answers it.

The order is :func:`pbtune.ranking.ranked`'s: scored members (a score, even NaN), best first,
non-finite scores last, ties by member id.

Example:
    >>> from pbtune.types import MemberRecord, MemberState
    >>> pop = [MemberRecord("r", i, MemberState.RUNNING, 4, {}, score=s) for i, s in enumerate([0.5, None, 0.9])]
    >>> view = ListView(pop, "max")
    >>> view.scored_count(), view.position(0), [m.member_id for m in view.top(1)], view.ids()
    (2, 1, [2], [0, 1, 2])
    >>> view.lineage_sizes()
    {0: 1, 1: 1, 2: 1}
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol

from pbtune.ranking import ranked
from pbtune.types import MemberRecord

__all__ = ["ListView", "PopulationView"]


class PopulationView(Protocol):
    """The population a strategy decides against (failed members are not in it)."""

    mode: str

    def member(self, member_id: int) -> MemberRecord:
        """The record of ``member_id``; ``KeyError`` if it is not in the view."""

    def scored_count(self) -> int:
        """How many members have a score (the length of the ranking)."""

    def position(self, member_id: int) -> int | None:
        """0-based place of ``member_id`` in the ranking; None when it has no score."""

    def top(self, k: int) -> list[MemberRecord]:
        """The first ``k`` members of the ranking, best first."""

    def ids(self) -> list[int]:
        """Every member id in the view, ascending (scored or not)."""

    def lineage_sizes(self) -> dict[int, int]:
        """How many members of the view (scored or not) each lineage holds: ``{lineage: count}``
        (see :attr:`~pbtune.types.MemberRecord.lineage`); the counts sum to the view's size."""


class ListView:
    """A :class:`PopulationView` over an in-memory snapshot."""

    def __init__(self, population: Sequence[MemberRecord], mode: str) -> None:
        self.mode = mode
        self._by_id = {m.member_id: m for m in population}
        self._order = ranked(population, mode)
        self._place = {m.member_id: i for i, m in enumerate(self._order)}

    def member(self, member_id: int) -> MemberRecord:
        try:
            return self._by_id[member_id]
        except KeyError:
            raise KeyError(f"member {member_id} is not in the population snapshot") from None

    def scored_count(self) -> int:
        return len(self._order)

    def position(self, member_id: int) -> int | None:
        return self._place.get(member_id)

    def top(self, k: int) -> list[MemberRecord]:
        return self._order[:k]

    def ids(self) -> list[int]:
        return sorted(self._by_id)

    def lineage_sizes(self) -> dict[int, int]:
        sizes: dict[int, int] = {}
        for m in self._by_id.values():
            sizes[m.lineage] = sizes.get(m.lineage, 0) + 1
        return dict(sorted(sizes.items()))
