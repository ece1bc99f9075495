"""A member's ready point against the store: one transaction from report to decision.

The report, the checkpoint bookkeeping, the ranking (a rank COUNT and, in the bottom tail, a
top-k SELECT: :meth:`~pbtune.store.base.PopulationStore.population_view`) and, when the member
continues, the ready check all commit together. An exploit then needs its donor's checkpoint
copied, which is file I/O and happens outside the transaction (:meth:`pbtune.member.Member.exploit`).

Generational runs and smoothed ranking compare whole snapshots: they read every member, still
in one transaction.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from pbtune.config import RunConfig
from pbtune.round import (
    Plan,
    ReadyCheck,
    can_plan_from_view,
    generation_waiting,
    plan_member,
    plan_ready,
)
from pbtune.store.base import CheckpointRef, PopulationStore, ScorePoint
from pbtune.types import MemberRecord

__all__ = ["Decided", "Reported", "decide", "report"]


@dataclass(frozen=True)
class Reported:
    """What a report wrote: the record, checkpoint keys no longer needed, and the plan when the
    report was a ready point decided in the same transaction (else None)."""

    record: MemberRecord
    stale: list[str]
    plan: Plan | None


@dataclass(frozen=True)
class Decided:
    """A ready point's outcome: the plan (None: not ready), the record after it, and ``waiting``
    (generational: the generation is not complete, nothing was decided)."""

    plan: Plan | None
    record: MemberRecord
    waiting: bool = False


def report(
    store: PopulationStore, config: RunConfig, member_id: int, step: int, score: float, *,
    metrics: Mapping[str, Any] | None = None, checkpoint: CheckpointRef | None = None,
    worker: str | None = None, earlier: Sequence[ScorePoint] = (), decide: bool = False,
) -> Reported:
    """Record a score (and checkpoint). With ``decide``, at a ready point with a checkpoint, also
    decide in the same transaction when the config allows (:func:`pbtune.round.can_plan_from_view`):
    for a caller that asks ``should_exploit`` right after reporting (the engine's workers)."""

    def writes() -> Reported:
        record = store.report(config.name, member_id, step, score, metrics=metrics, checkpoint=checkpoint,
                              worker=worker, earlier=earlier)
        stale = store.collect_checkpoints(config.name, member_id, config.keep_checkpoints) if checkpoint else []
        if not decide or checkpoint is None or not can_plan_from_view(config) or not config.ready.is_ready(record):
            return Reported(record, stale, None)
        plan, record = _decide_from_view(store, config, record)
        return Reported(record, stale, plan)

    return store.batch(writes)


def decide(store: PopulationStore, config: RunConfig, record: MemberRecord) -> Decided:
    """Decide the ready point of the member whose current record is ``record``, in one transaction."""
    if record.state.is_final or not config.ready.is_ready(record):
        return Decided(None, record)

    def writes() -> Decided:
        if can_plan_from_view(config):
            current = store.get_member(config.name, record.member_id)
            if current.state.is_final or not config.ready.is_ready(current):
                return Decided(None, current)
            plan, current = _decide_from_view(store, config, current)
            return Decided(plan, current)
        snapshot = store.list_members(config.name)
        current = next(m for m in snapshot if m.member_id == record.member_id)
        if generation_waiting(config, snapshot, record.member_id):
            return Decided(None, current, waiting=True)
        planned = plan_member(config, snapshot, record.member_id)
        return Decided(planned, _write_check(store, config, planned, current))

    return store.batch(writes)


def _decide_from_view(store: PopulationStore, config: RunConfig, record: MemberRecord) -> tuple[Plan, MemberRecord]:
    view = store.population_view(config.name, config.mode, known=(record,))
    plan = plan_ready(config, view, record.member_id, lambda: store.list_members(config.name))
    return plan, _write_check(store, config, plan, record)


def _write_check(store: PopulationStore, config: RunConfig, plan: Plan | None, record: MemberRecord) -> MemberRecord:
    """A continue restarts the ready interval (written now); an exploit is written when carried out."""
    if not isinstance(plan, ReadyCheck):
        return record
    updated = store.ready_checked(config.name, record, plan.step)
    return record if updated is None else updated
