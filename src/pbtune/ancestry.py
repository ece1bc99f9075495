"""A member's ancestry from the lineage events: who copied whom, and the training segments
behind any model (pure functions of :class:`~pbtune.types.EventRecord` sequences)."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from pbtune.errors import PBTuneError
from pbtune.types import EventRecord

__all__ = ["LineageEdge", "Segment", "ancestry", "lineage_edges", "model_age"]


@dataclass(frozen=True)
class LineageEdge:
    """Member ``member_id`` at its step ``step`` copied ``donor_id``'s model of ``donor_step``."""

    member_id: int
    step: int
    donor_id: int
    donor_step: int


def lineage_edges(events: Iterable[EventRecord]) -> list[LineageEdge]:
    """Every exploit, in the order it happened."""
    return [
        LineageEdge(e.member_id, e.step, e.donor_id, e.donor_step)
        for e in events
        if e.kind == "exploit" and e.donor_id is not None and e.donor_step is not None
    ]


@dataclass(frozen=True)
class Segment:
    """Steps ``(start, end]`` of member ``member_id`` that trained a model; its age is ``step + offset``."""

    member_id: int
    start: int
    end: int
    offset: int

    @property
    def age_start(self) -> int:
        return self.start + self.offset

    @property
    def age_end(self) -> int:
        return self.end + self.offset


def ancestry(events: Iterable[EventRecord], member_id: int, step: int) -> list[Segment]:
    """The segments of training behind ``member_id``'s model at its ``step``, oldest first.

    Example:
        >>> from pbtune.types import EventRecord as E
        >>> events = [E(1, "r", 0, 0, "init", 0.0), E(2, "r", 1, 0, "init", 0.0),
        ...           E(3, "r", 1, 10, "exploit", 0.0, donor_id=0, donor_step=20)]
        >>> [(s.member_id, s.start, s.end, s.offset) for s in ancestry(events, 1, 30)]
        [(0, 0, 20, 0), (1, 10, 30, 10)]
    """
    exploits: dict[int, list[EventRecord]] = {}
    for event in events:
        if event.kind == "exploit" and event.donor_id is not None and event.donor_step is not None:
            exploits.setdefault(event.member_id, []).append(event)
    chain: list[Segment] = []
    current, until = member_id, step
    for _ in range(100_000):  # a cycle would be a store bug; do not loop forever
        pivots = [e for e in exploits.get(current, []) if e.step <= until]
        if not pivots:
            chain.append(Segment(current, 0, until, 0))
            break
        pivot = pivots[-1]
        chain.append(Segment(current, pivot.step, until, 0))
        current, until = pivot.donor_id, pivot.donor_step  # type: ignore[assignment]
    else:
        raise PBTuneError("lineage has a cycle")
    chain.reverse()
    out: list[Segment] = []
    offset = 0
    for segment in chain:
        if out:  # this segment starts from the previous one's model at its end
            offset = out[-1].age_end - segment.start
        out.append(Segment(segment.member_id, segment.start, segment.end, offset))
    return out


def model_age(events: Iterable[EventRecord], member_id: int, step: int) -> int:
    """How many training steps the model of ``member_id`` at its ``step`` has had (from scratch)."""
    return ancestry(events, member_id, step)[-1].age_end
