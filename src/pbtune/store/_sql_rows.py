"""Pure helpers of the SQL store: column values, event rows, the version rule, hot statements."""

from __future__ import annotations

import dataclasses
import math
import os
from collections.abc import Mapping, Sequence
from typing import Any, TypeVar

import sqlalchemy as sa
from sqlalchemy.exc import ArgumentError, DBAPIError

from pbtune._storage_url import check_storage_url
from pbtune.errors import (
    InvalidConfigError,
)
from pbtune.store import _schema as s
from pbtune.store.base import (
    ExploitWrite,
    ScorePoint,
)
from pbtune.types import (
    RECENT_SCORES,
    MemberRecord,
    MemberState,
)

T = TypeVar("T")

# Driver messages that mean "try the transaction again": lock contention, serialization
# failures, deadlocks, and connections dropped by a restarting server.
_TRANSIENT = (
    "database is locked",
    "database is busy",
    "could not serialize",
    "deadlock detected",
    "server closed the connection",
    "terminating connection",
    "connection refused",
    "connection is closed",
    "the connection is lost",
    "consuming input failed",
)


_SCHEMA_LOCK = 0x7062_7475_6E65  # pg_advisory_xact_lock key held while creating tables


def _is_transient(exc: BaseException) -> bool:
    if isinstance(exc, DBAPIError) and exc.connection_invalidated:
        return True
    text = str(exc).lower()
    return any(marker in text for marker in _TRANSIENT)


def _score_in(value: float | None) -> float | None:
    return None if value is None or (isinstance(value, float) and math.isnan(value)) else float(value)


def _reported_score(value: float | None) -> float:
    # SQLite turns NaN into NULL; a reported-but-NULL score was NaN.
    return math.nan if value is None else float(value)


def _score_out(value: float | None, reported: bool) -> float | None:
    return _reported_score(value) if reported else None if value is None else float(value)


def _recent_in(kept: Sequence[tuple[int, float]], points: Sequence[ScorePoint]) -> list[list[Any]]:
    """The member's recent scores after ``points`` as JSON rows (non-finite scores as null:
    PostgreSQL's JSON has no NaN)."""
    merged = [*kept, *((p.step, p.score) for p in points)][-RECENT_SCORES:]
    return [[step, score if score is not None and math.isfinite(score) else None] for step, score in merged]


def _recent_out(rows: Any) -> tuple[tuple[int, float], ...]:
    return tuple((int(step), math.nan if score is None else float(score)) for step, score in rows or ())


def _recent_until(member: MemberRecord, step: int) -> list[list[Any]]:
    """Recent scores of steps up to ``step`` (a member rolled back to a checkpoint forgets later ones)."""
    return _recent_in([r for r in member.recent if r[0] <= step], ())


def _parse_url(url: str) -> sa.engine.URL:
    check_storage_url(url, "population store")  # a clear error, not SQLAlchemy's traceback
    try:
        return sa.engine.make_url(url)
    except ArgumentError:
        raise InvalidConfigError("storage", "population store", "a database URL such as sqlite:///pbt.db",
                                 url.partition("://")[0] + "://...") from None


def _sqlite_file(url: str) -> str | None:
    """The file of a SQLite URL (None for other databases and in-memory ones)."""
    parsed = _parse_url(url)
    if parsed.get_backend_name() != "sqlite" or parsed.database in (None, "", ":memory:"):
        return None
    return os.path.abspath(str(parsed.database))


# Hot statements are built once: constructing SQLAlchemy expressions costs more than SQLite.
_SELECT_MEMBER = sa.select(s.members).where(
    s.members.c.run == sa.bindparam("run"), s.members.c.member_id == sa.bindparam("member_id")
)
_SELECT_MEMBER_FOR_UPDATE = _SELECT_MEMBER.with_for_update()
_UPDATE_MEMBER = sa.update(s.members).where(
    s.members.c.run == sa.bindparam("match_run"),
    s.members.c.member_id == sa.bindparam("match_member_id"),
    s.members.c.version == sa.bindparam("match_version"),
)


def _member_values(current: MemberRecord, now: float, *writes: Mapping[str, Any]) -> dict[str, Any]:
    """The member's column values after ``writes``, applied in order.

    The one version rule: each logical write (a report, a state change, an exploit, an explore,
    a ready check) moves ``version`` on by one, whether it commits alone or in a batch, so a
    batched write leaves the same versions as the same writes one by one.
    """
    values: dict[str, Any] = {}
    for write in writes:
        values.update(write)
    values["version"] = current.version + len(writes)
    values["updated"] = now
    return values


def _event_row(
    run: str,
    member_id: int,
    step: int,
    kind: str,
    now: float,
    *,
    summary: str = "",
    donor_id: int | None = None,
    donor_step: int | None = None,
    old_hparams: Mapping[str, Any] | None = None,
    new_hparams: Mapping[str, Any] | None = None,
    donor_checkpoint: str | None = None,
    checkpoint: str | None = None,
) -> dict[str, Any]:
    """One lineage event row; every row has every column, so rows of any kind insert together."""
    return {
        "run": run, "member_id": member_id, "step": step, "kind": kind, "time": now, "summary": summary,
        "donor_id": donor_id, "donor_step": donor_step,
        "old_hparams": None if old_hparams is None else dict(old_hparams),
        "new_hparams": None if new_hparams is None else dict(new_hparams),
        "donor_checkpoint": donor_checkpoint, "checkpoint": checkpoint,
    }


_Events = list[tuple[str, dict[str, Any]]]


def _donor_lineages(conn: Any, run: str, exploits: Sequence[ExploitWrite]) -> dict[int, int]:
    """The stored lineage of each donor of ``exploits`` that does not carry its own (one SELECT, or none)."""
    wanted = sorted({e.donor_id for e in exploits if e.donor_lineage is None})
    if not wanted:
        return {}
    c = s.members.c
    rows = conn.execute(sa.select(c.member_id, c.lineage).where(c.run == run, c.member_id.in_(wanted)))
    return {member_id: member_id if lineage is None else lineage for member_id, lineage in rows}


def _exploit_writes(
    member: MemberRecord, e: ExploitWrite, lineages: Mapping[int, int]
) -> tuple[list[dict[str, Any]], _Events]:
    """The logical writes (column values) and events (kind, fields) of one exploit and its explore.

    The member joins the donor's lineage: the one the write carries, else ``lineages[donor]``
    (the donor's stored one; a donor not in the run: its own id)."""
    taken = dict(e.hparams)
    lineage = e.donor_lineage if e.donor_lineage is not None else lineages.get(e.donor_id, e.donor_id)
    exploit: dict[str, Any] = {"hparams": taken, "last_ready_step": member.step, "lineage": lineage}
    if e.checkpoint is not None:
        exploit.update(checkpoint=e.checkpoint.key, checkpoint_step=member.step, checkpoint_sha256=e.checkpoint.sha256)
    writes = [exploit]
    events = [("exploit", {"donor_id": e.donor_id, "donor_step": e.donor_step, "old_hparams": member.hparams,
                           "new_hparams": taken, "summary": e.summary, "donor_checkpoint": e.donor_checkpoint,
                           "checkpoint": e.checkpoint.key if e.checkpoint is not None else None})]
    if e.explored is not None:
        writes.append({"hparams": dict(e.explored)})
        events.append(("explore", {"old_hparams": taken, "new_hparams": e.explored, "summary": e.explore_summary}))
    return writes, events


def _updated_record(current: MemberRecord, values: Mapping[str, Any]) -> MemberRecord:
    """The record after an UPDATE of ``values``, without reading it back."""
    changes = {k: v for k, v in values.items() if k in MemberRecord.__dataclass_fields__}
    if "state" in changes:
        changes["state"] = MemberState(changes["state"])
    if "score" in changes:
        changes["score"] = _score_out(changes["score"], True)
    if "hparams" in changes:
        changes["hparams"] = dict(changes["hparams"])
    if "recent" in changes:
        changes["recent"] = _recent_out(changes["recent"])
    return dataclasses.replace(current, **changes)
