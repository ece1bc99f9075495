"""The SQL store's leases, histories, checkpoint pins and collection, and reopening members."""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from pbtune.errors import (
    NotFoundError,
)
from pbtune.store import _schema as s
from pbtune.store._sql_base import SQLBase
from pbtune.store._sql_rows import (
    _recent_until,
    _reported_score,
)
from pbtune.types import (
    EventRecord,
    MemberRecord,
    MemberState,
    ScoreRecord,
)


class SQLBookkeeping(SQLBase):
    """Leases, score and event history, checkpoint bookkeeping (see :class:`~pbtune.store.sql.SQLStore`)."""

    def reopen_members(
        self, run: str, states: Sequence[MemberState], *, summary: str, config: Mapping[str, Any] | None = None
    ) -> list[int]:
        def body(conn: Connection) -> list[int]:
            if conn.execute(sa.select(s.runs.c.name).where(s.runs.c.name == run)).first() is None:
                raise NotFoundError(f"no run named {run!r}")
            if config is not None:
                conn.execute(sa.update(s.runs).where(s.runs.c.name == run).values(config=dict(config)))
            c = s.members.c
            query = sa.select(s.members).where(c.run == run, c.state.in_([state.value for state in states]))
            if self._for_update:
                query = query.with_for_update()
            reopened = []
            for member in map(self._member_from_row, conn.execute(query.order_by(c.member_id))):
                step = member.step if member.state is MemberState.FINISHED else member.checkpoint_step or 0
                self._update_member(conn, member, {
                    "state": MemberState.PAUSED.value, "step": step, "error": None,
                    "recent": _recent_until(member, step),
                    "last_ready_step": min(member.last_ready_step, step), "lease_owner": None, "lease_expires": None,
                })
                self._append_event(conn, dataclasses.replace(member, step=step), "reopen", summary=summary)
                reopened.append(member.member_id)
            return reopened

        return self._transaction(body)

    # -- leases ------------------------------------------------------------------------------
    def claim(
        self, run: str, worker: str, lease_seconds: float, budget: int, *, member_id: int | None = None
    ) -> MemberRecord | None:
        def body(conn: Connection) -> MemberRecord | None:
            now = self._clock()
            c = s.members.c
            runnable = sa.or_(
                c.state.in_([MemberState.PENDING.value, MemberState.PAUSED.value]),
                sa.and_(c.state == MemberState.RUNNING.value, c.lease_owner.is_not(None), c.lease_expires < now),
            )
            which = c.step < budget if member_id is None else c.member_id == member_id
            query = (
                sa.select(s.members)
                .where(c.run == run, runnable, which)
                .order_by(c.step, c.last_ready_step, c.member_id)  # at one step: members yet to decide first
                .limit(1)
            )
            if self._for_update:
                query = query.with_for_update(skip_locked=True)
            row = conn.execute(query).first()
            if row is None:
                return None
            member = self._member_from_row(row)
            values: dict[str, Any] = {
                "state": MemberState.RUNNING.value, "lease_owner": worker, "lease_expires": now + lease_seconds,
            }
            taken_over = member.state is MemberState.RUNNING  # its worker died mid-segment
            if taken_over:
                values["step"] = member.checkpoint_step or 0
                values["last_ready_step"] = min(member.last_ready_step, values["step"])
                values["recent"] = _recent_until(member, values["step"])
            updated = self._update_member(conn, member, values)
            if taken_over:
                self._append_event(
                    conn, updated, "resume",
                    summary=f"lease of {member.lease_owner} expired at step {member.step}; "
                    f"resumed from checkpoint step {values['step']}",
                )
            return updated

        return self._transaction(body)

    def heartbeat(self, run: str, worker: str, lease_seconds: float) -> set[int]:
        def body(conn: Connection) -> set[int]:
            now = self._clock()
            c = s.members.c
            conn.execute(
                sa.update(s.members)
                .where(c.run == run, c.lease_owner == worker, c.state == MemberState.RUNNING.value)
                .values(lease_expires=now + lease_seconds)
            )
            rows = conn.execute(sa.select(c.member_id).where(c.run == run, c.lease_owner == worker))
            return {r.member_id for r in rows}

        return self._transaction(body)

    # -- history -----------------------------------------------------------------------------
    def scores(self, run: str, member_id: int | None = None) -> tuple[ScoreRecord, ...]:
        def body(conn: Connection) -> tuple[ScoreRecord, ...]:
            query = sa.select(s.scores).where(s.scores.c.run == run)
            if member_id is not None:
                query = query.where(s.scores.c.member_id == member_id)
            rows = conn.execute(query.order_by(s.scores.c.id))
            return tuple(
                ScoreRecord(r.run, r.member_id, r.step, _reported_score(r.score), r.time, dict(r.metrics or {}))
                for r in rows
            )

        return self._transaction(body, read_only=True)

    def events(self, run: str, member_id: int | None = None) -> tuple[EventRecord, ...]:
        def body(conn: Connection) -> tuple[EventRecord, ...]:
            query = sa.select(s.events).where(s.events.c.run == run)
            if member_id is not None:
                query = query.where(s.events.c.member_id == member_id)
            rows = conn.execute(query.order_by(s.events.c.id))
            return tuple(
                EventRecord(
                    id=r.id, run=r.run, member_id=r.member_id, step=r.step, kind=r.kind, time=r.time,
                    donor_id=r.donor_id, donor_step=r.donor_step, old_hparams=r.old_hparams,
                    new_hparams=r.new_hparams, summary=r.summary or "",
                    donor_checkpoint=r.donor_checkpoint, checkpoint=r.checkpoint,
                )
                for r in rows
            )

        return self._transaction(body, read_only=True)

    # -- checkpoint bookkeeping --------------------------------------------------------------
    def pin_checkpoint(self, run: str, key: str, holder: str, ttl_seconds: float) -> bool:
        def body(conn: Connection) -> bool:
            query = sa.select(s.checkpoints.c.key).where(s.checkpoints.c.run == run, s.checkpoints.c.key == key)
            if self._for_update:
                query = query.with_for_update()
            if conn.execute(query).first() is None:
                return False
            c = s.pins.c
            conn.execute(sa.delete(s.pins).where(c.run == run, c.key == key, c.holder == holder))
            conn.execute(sa.insert(s.pins).values(run=run, key=key, holder=holder, expires=self._clock() + ttl_seconds))
            return True

        return self._transaction(body)

    def unpin_checkpoint(self, run: str, key: str, holder: str) -> None:
        def body(conn: Connection) -> None:
            c = s.pins.c
            conn.execute(sa.delete(s.pins).where(c.run == run, c.key == key, c.holder == holder))

        self._transaction(body)

    def collect_checkpoints(self, run: str, member_id: int, keep: int) -> list[str]:
        def body(conn: Connection) -> list[str]:
            if conn.dialect.delete_returning:  # one statement (PostgreSQL, SQLite >= 3.35)
                found = conn.execute(_COLLECT, {"run": run, "member_id": member_id, "keep": keep,
                                                "now": self._clock()})
                return list(found.scalars())
            member = self._load_member(conn, run, member_id, lock=True)
            c = s.checkpoints.c
            query = (
                sa.select(c.key).where(c.run == run, c.member_id == member_id)
                .order_by(c.step.desc(), c.created.desc())
            )
            if self._for_update:
                query = query.with_for_update()
            keys = [r.key for r in conn.execute(query)]
            pinned = {
                r.key for r in conn.execute(
                    sa.select(s.pins.c.key).where(s.pins.c.run == run, s.pins.c.expires >= self._clock())
                )
            }
            doomed = [k for k in keys[keep:] if k != member.checkpoint and k not in pinned]
            if doomed:
                conn.execute(sa.delete(s.checkpoints).where(c.run == run, c.key.in_(doomed)))
            return doomed

        return self._transaction(body)


def _collect_statement() -> Any:
    """DELETE the member's checkpoints past the newest ``keep`` that are neither pinned nor its
    current one, RETURNING their keys (the files to delete)."""
    c, m, p = s.checkpoints.c, s.members.c, s.pins.c
    run, member_id = sa.bindparam("run", type_=sa.String), sa.bindparam("member_id", type_=sa.Integer)
    older = (sa.select(c.key).where(c.run == run, c.member_id == member_id)
             .order_by(c.step.desc(), c.created.desc()).offset(sa.bindparam("keep")))
    current = sa.select(m.checkpoint).where(m.run == run, m.member_id == member_id).scalar_subquery()
    pinned = sa.select(p.key).where(p.run == run, p.expires >= sa.bindparam("now"))
    return (sa.delete(s.checkpoints)
            .where(c.run == run, c.key.in_(older), c.key.not_in(pinned), c.key != sa.func.coalesce(current, ""))
            .returning(c.key))


_COLLECT = _collect_statement()  # built once: the ready point runs it every time
