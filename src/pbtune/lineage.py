"""Hyperparameter schedules computed from the append-only lineage events (pure functions)."""

from __future__ import annotations

import csv
import io
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from pbtune.types import EventRecord

__all__ = ["SCHEDULE_KINDS", "ScheduleEntry", "schedule", "schedule_csv", "schedule_records"]

SCHEDULE_KINDS = ("init", "exploit", "explore")  # the events that set a member's hyperparameters


@dataclass(frozen=True)
class ScheduleEntry:
    """From model-age ``step`` on, the model trained with ``hparams`` (as member ``member_id``)."""

    step: int
    hparams: Mapping[str, Any]
    member_id: int
    kind: str


def schedule(events: Iterable[EventRecord], member_id: int, *, until_step: int | None = None) -> list[ScheduleEntry]:
    """The hyperparameter schedule that produced ``member_id``'s model, along its ancestry.

    Steps are the model's age: after member M at its step s copied donor D's checkpoint of
    step d, M's later entries are shifted by ``d - s``, so the schedule can be replayed from
    scratch. Inherited segments come first, as the donor's own schedule up to step d.
    """
    by_member: dict[int, list[EventRecord]] = {}
    for event in events:
        if event.kind in SCHEDULE_KINDS:
            by_member.setdefault(event.member_id, []).append(event)
    return _dedupe(_schedule(by_member, member_id, until_step, depth=0))


def _visible(
    by_member: Mapping[int, list[EventRecord]], member_id: int, until_step: int | None, key: str | None
) -> list[EventRecord]:
    """The member's events that shaped its checkpoint ``key`` of step ``until_step``.

    A donor can exploit at the very step whose checkpoint another member copies: if the copied
    key is not the one that exploit produced, the model copied is the donor's own from before
    that exploit, so the exploit and what followed it at that step are left out.
    """
    own = [e for e in by_member.get(member_id, []) if until_step is None or e.step <= until_step]
    if key is None or until_step is None:
        return own
    for index, event in enumerate(own):
        if event.kind == "exploit" and event.step == until_step and event.checkpoint not in (None, key):
            return own[:index]
    return own


def _schedule(
    by_member: Mapping[int, list[EventRecord]], member_id: int, until_step: int | None, depth: int,
    key: str | None = None,
) -> list[ScheduleEntry]:
    if depth > 10_000:  # a cycle would be a store bug; do not recurse forever
        raise RuntimeError("lineage has a cycle")
    own = _visible(by_member, member_id, until_step, key)
    last_exploit = max((i for i, e in enumerate(own) if e.kind == "exploit"), default=None)
    if last_exploit is None:
        return [ScheduleEntry(e.step, dict(e.new_hparams or {}), member_id, e.kind) for e in own]
    pivot = own[last_exploit]
    assert pivot.donor_id is not None and pivot.donor_step is not None
    inherited = _schedule(by_member, pivot.donor_id, pivot.donor_step, depth + 1, pivot.donor_checkpoint)
    # the donor's model at its step d is d + (its own offset) steps old, not d
    offset = _age_offset(by_member, pivot.donor_id, pivot.donor_step, depth + 1, pivot.donor_checkpoint)
    shift = pivot.donor_step + offset - pivot.step
    tail = [
        ScheduleEntry(e.step + shift, dict(e.new_hparams or {}), member_id, e.kind) for e in own[last_exploit:]
    ]
    return inherited + tail


def _age_offset(
    by_member: Mapping[int, list[EventRecord]], member_id: int, until_step: int, depth: int, key: str | None
) -> int:
    """Model age minus member step, for ``member_id``'s steps after its last exploit up to ``until_step``."""
    if depth > 10_000:
        raise RuntimeError("lineage has a cycle")
    exploits = [e for e in _visible(by_member, member_id, until_step, key) if e.kind == "exploit"]
    if not exploits:
        return 0
    pivot = exploits[-1]
    assert pivot.donor_id is not None and pivot.donor_step is not None
    offset = _age_offset(by_member, pivot.donor_id, pivot.donor_step, depth + 1, pivot.donor_checkpoint)
    return pivot.donor_step + offset - pivot.step


def _dedupe(entries: list[ScheduleEntry]) -> list[ScheduleEntry]:
    """Drop entries that change nothing; of several at the same step the last one wins."""
    out: list[ScheduleEntry] = []
    for entry in entries:
        if out and out[-1].step == entry.step:
            out[-1] = entry
        elif not out or dict(out[-1].hparams) != dict(entry.hparams):
            out.append(entry)
    deduped: list[ScheduleEntry] = []
    for entry in out:
        if not deduped or dict(deduped[-1].hparams) != dict(entry.hparams):
            deduped.append(entry)
    return deduped


def schedule_records(entries: Iterable[ScheduleEntry]) -> list[dict[str, Any]]:
    """JSON-ready entries: ``{"step", "hparams", "from_member", "kind"}`` (the form replay accepts)."""
    return [{"step": e.step, "hparams": dict(e.hparams), "from_member": e.member_id, "kind": e.kind} for e in entries]


def schedule_csv(entries: Sequence[ScheduleEntry]) -> str:
    """CSV with columns ``step, from_member, kind`` and one column per hyperparameter.

    Example:
        >>> print(schedule_csv([ScheduleEntry(0, {"lr": 0.1}, 3, "init")]).strip())
        step,from_member,kind,lr
        0,3,init,0.1
    """
    names: dict[str, None] = {}
    for entry in entries:
        names.update(dict.fromkeys(entry.hparams))
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(["step", "from_member", "kind", *names])
    for entry in entries:
        writer.writerow([entry.step, entry.member_id, entry.kind, *(entry.hparams.get(n, "") for n in names)])
    return buffer.getvalue()
