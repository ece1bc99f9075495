"""Frozen records shared by the store, the strategies and the engines."""

from __future__ import annotations

import enum
import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

__all__ = ["MemberState", "MemberRecord", "ScoreRecord", "EventRecord", "RunRecord", "LEGAL_TRANSITIONS",
           "RECENT_SCORES"]

RECENT_SCORES = 16  # reports each member keeps for smoothed ranking and model-based explore


class MemberState(str, enum.Enum):
    """Lifecycle of a member. ``FINISHED`` and ``FAILED`` are final."""

    PENDING = "pending"  # created, never trained
    RUNNING = "running"  # held by a worker (lease) or a bring-your-own-loop process
    PAUSED = "paused"  # released between ready points; any worker may resume it
    FINISHED = "finished"  # reached its budget
    FAILED = "failed"  # the trainable raised; the traceback is stored

    @property
    def is_final(self) -> bool:
        return self in (MemberState.FINISHED, MemberState.FAILED)


LEGAL_TRANSITIONS: Mapping[MemberState, frozenset[MemberState]] = {
    MemberState.PENDING: frozenset({MemberState.RUNNING, MemberState.FAILED, MemberState.FINISHED}),
    MemberState.RUNNING: frozenset(
        {MemberState.RUNNING, MemberState.PAUSED, MemberState.FINISHED, MemberState.FAILED}
    ),
    MemberState.PAUSED: frozenset({MemberState.RUNNING, MemberState.FINISHED, MemberState.FAILED}),
    MemberState.FINISHED: frozenset(),
    MemberState.FAILED: frozenset(),
}


@dataclass(frozen=True)
class MemberRecord:
    """A snapshot of one member, as read from the store."""

    run: str
    member_id: int
    state: MemberState
    step: int
    hparams: Mapping[str, Any]
    score: float | None = None  # last reported score; None before the first report
    score_step: int | None = None
    checkpoint: str | None = None  # key in the checkpoint store
    checkpoint_step: int | None = None
    checkpoint_sha256: str | None = None
    last_ready_step: int = 0  # step of the last ready check (exploit or not)
    version: int = 0  # bumped by every write; the compare-and-set token
    lease_owner: str | None = None
    lease_expires: float | None = None
    error: str | None = None
    extra: Mapping[str, Any] = field(default_factory=dict)
    recent: tuple[tuple[int, float], ...] = ()  # the last few (step, score) reports, oldest first
    # The id of the initial member whose training this member's model continues (its root
    # ancestor): its own id until it exploits, then its donor's lineage. -1 stands for member_id.
    lineage: int = -1

    def __post_init__(self) -> None:
        if self.lineage < 0:
            object.__setattr__(self, "lineage", self.member_id)

    @property
    def has_checkpoint(self) -> bool:
        return self.checkpoint is not None

    @property
    def has_finite_score(self) -> bool:
        return self.score is not None and math.isfinite(self.score)

    def is_gone(self, now: float) -> bool:
        """RUNNING, but its worker or client stopped renewing its lease (it died, or exited
        without finishing): displays say ``gone`` rather than ``running``; the next worker or
        client that joins resumes it from its last checkpoint."""
        return (self.state is MemberState.RUNNING and self.lease_owner is not None
                and self.lease_expires is not None and self.lease_expires <= now)

    def shown_state(self, now: float) -> str:
        """The state as displays show it: ``gone`` for a member whose lease expired (see :meth:`is_gone`)."""
        return "gone" if self.is_gone(now) else self.state.value


@dataclass(frozen=True)
class ScoreRecord:
    run: str
    member_id: int
    step: int
    score: float
    time: float
    metrics: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class EventRecord:
    """One append-only lineage event.

    ``kind`` is ``init`` (first hyperparameters), ``exploit`` (copied weights and hyperparameters
    of ``donor_id`` at ``donor_step``), ``explore`` (hyperparameters changed), ``resume`` (picked
    up from a checkpoint after a worker died) or ``fail``.
    """

    id: int
    run: str
    member_id: int
    step: int
    kind: str
    time: float
    donor_id: int | None = None
    donor_step: int | None = None
    old_hparams: Mapping[str, Any] | None = None
    new_hparams: Mapping[str, Any] | None = None
    summary: str = ""
    donor_checkpoint: str | None = None  # exploit: the donor's checkpoint key that was copied
    checkpoint: str | None = None  # exploit: the key of this member's copy


@dataclass(frozen=True)
class RunRecord:
    name: str
    config: Mapping[str, Any]
    created: float
