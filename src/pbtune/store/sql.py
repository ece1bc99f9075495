"""PopulationStore over SQLAlchemy: SQLite (embedded default) and PostgreSQL.

SQLite runs in WAL mode and takes the write lock at the start of every writing transaction
(``BEGIN IMMEDIATE``), so compare-and-set reads cannot go stale inside a transaction. Its
limits: one writer at a time (fine up to a few dozen workers on one machine), and the database
file must be on a local disk (WAL does not work over NFS). Use PostgreSQL when the population
spans machines; there, rows are locked with ``SELECT ... FOR UPDATE``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from pbtune.errors import (
    IllegalTransitionError,
    NotFoundError,
)
from pbtune.store import _schema as s
from pbtune.store._sql_bookkeeping import SQLBookkeeping
from pbtune.store._sql_rows import (
    _UPDATE_MEMBER,
    _donor_lineages,
    _event_row,
    _exploit_writes,
    _member_values,
    _recent_in,
    _score_in,
    _updated_record,
)
from pbtune.store.base import (
    CheckpointRef,
    ExploitWrite,
    ReadyCheckWrite,
    ScorePoint,
    already_applied,
)
from pbtune.types import (
    LEGAL_TRANSITIONS,
    MemberRecord,
    MemberState,
    RunRecord,
)

__all__ = ["SQLStore"]


class SQLStore(SQLBookkeeping):
    """The SQL population store.

    Args:
        url: SQLAlchemy URL, e.g. ``sqlite:///pbt.db`` or ``postgresql+psycopg://user@host/db``.
        retry_seconds: how long a transaction is retried on lock contention or a dropped
            connection before :class:`StoreError` is raised.
        clock: returns the current time in seconds (injectable for tests).
        create: create the schema if the database has none.
        read_only: open for reading only (read commands; never creates a store).

    Example:
        >>> store = SQLStore("sqlite://")
        >>> store.create_run("demo", {}).name
        'demo'
    """

    # -- runs ---------------------------------------------------------------------------------
    def create_run(self, name: str, config: Mapping[str, Any]) -> RunRecord:
        def body(conn: Connection) -> RunRecord:
            row = conn.execute(sa.select(s.runs).where(s.runs.c.name == name)).first()
            if row is None:
                insert = sa.insert(s.runs).values(name=name, config=dict(config), created=self._clock())
                self._insert_unless_raced(conn, insert)
                row = conn.execute(sa.select(s.runs).where(s.runs.c.name == name)).one()
            return RunRecord(row.name, dict(row.config), row.created)

        return self._transaction(body)

    def get_run(self, name: str) -> RunRecord:
        def body(conn: Connection) -> RunRecord:
            row = conn.execute(sa.select(s.runs).where(s.runs.c.name == name)).first()
            if row is None:
                raise NotFoundError(f"no run named {name!r} in {self._safe_url()}")
            return RunRecord(row.name, dict(row.config), row.created)

        return self._transaction(body, read_only=True)

    def list_runs(self) -> tuple[RunRecord, ...]:
        def body(conn: Connection) -> tuple[RunRecord, ...]:
            rows = conn.execute(sa.select(s.runs).order_by(s.runs.c.created, s.runs.c.name))
            return tuple(RunRecord(r.name, dict(r.config), r.created) for r in rows)

        return self._transaction(body, read_only=True)

    # -- members ------------------------------------------------------------------------------
    def add_member(self, run: str, member_id: int, hparams: Mapping[str, Any]) -> MemberRecord:
        def body(conn: Connection) -> MemberRecord:
            if conn.execute(sa.select(s.runs.c.name).where(s.runs.c.name == run)).first() is None:
                raise NotFoundError(f"no run named {run!r}")
            existing = conn.execute(
                sa.select(s.members).where(s.members.c.run == run, s.members.c.member_id == member_id)
            ).first()
            if existing is not None:
                return self._member_from_row(existing)
            inserted = self._insert_unless_raced(
                conn,
                sa.insert(s.members).values(
                    run=run, member_id=member_id, state=MemberState.PENDING.value, step=0,
                    hparams=dict(hparams), last_ready_step=0, version=0, updated=self._clock(), lineage=member_id,
                ),
            )
            member = self._load_member(conn, run, member_id)
            if not inserted:
                return member  # another process added it (and its init event) first
            self._append_event(conn, member, "init", new_hparams=dict(hparams))
            return member

        return self._transaction(body)

    def add_members(self, run: str, hparams: Sequence[Mapping[str, Any]]) -> tuple[MemberRecord, ...]:
        if self._for_update:  # PostgreSQL: workers on other machines may add the same members now
            return super().add_members(run, hparams)  # one by one (savepoints), in one transaction

        def body(conn: Connection) -> tuple[MemberRecord, ...]:  # SQLite: BEGIN IMMEDIATE excludes races
            if conn.execute(sa.select(s.runs.c.name).where(s.runs.c.name == run)).first() is None:
                raise NotFoundError(f"no run named {run!r}")
            c = s.members.c
            existing = set(conn.execute(sa.select(c.member_id).where(c.run == run)).scalars())
            missing = [i for i in range(len(hparams)) if i not in existing]
            now = self._clock()
            if missing:
                conn.execute(sa.insert(s.members), [
                    {"run": run, "member_id": i, "state": MemberState.PENDING.value, "step": 0,
                     "hparams": dict(hparams[i]), "last_ready_step": 0, "version": 0, "updated": now,
                     "lineage": i}
                    for i in missing
                ])
                conn.execute(sa.insert(s.events), [
                    _event_row(run, i, 0, "init", now, new_hparams=hparams[i]) for i in missing
                ])
            rows = conn.execute(sa.select(s.members).where(c.run == run, c.member_id < len(hparams))
                                .order_by(c.member_id))
            return tuple(self._member_from_row(r) for r in rows)

        return self._transaction(body)

    def get_member(self, run: str, member_id: int) -> MemberRecord:
        return self._transaction(lambda conn: self._load_member(conn, run, member_id), read_only=True)

    def list_members(self, run: str) -> tuple[MemberRecord, ...]:
        def body(conn: Connection) -> tuple[MemberRecord, ...]:
            rows = conn.execute(
                sa.select(s.members).where(s.members.c.run == run).order_by(s.members.c.member_id)
            )
            return tuple(self._member_from_row(r) for r in rows)

        return self._transaction(body, read_only=True)

    def report(
        self,
        run: str,
        member_id: int,
        step: int,
        score: float,
        *,
        metrics: Mapping[str, Any] | None = None,
        checkpoint: CheckpointRef | None = None,
        worker: str | None = None,
        earlier: Sequence[ScorePoint] = (),
    ) -> MemberRecord:
        def body(conn: Connection) -> MemberRecord:
            member = self._load_member(conn, run, member_id, lock=True)
            self._check_not_final(member)
            self._check_lease(member, worker)
            now = self._clock()
            points = [*earlier, ScorePoint(step, score, metrics)]
            conn.execute(
                sa.insert(s.scores),
                [
                    {"run": run, "member_id": member_id, "step": p.step, "score": _score_in(p.score),
                     "metrics": dict(p.metrics) if p.metrics else None, "time": now}
                    for p in points
                ],
            )
            values: dict[str, Any] = {"step": step, "score": _score_in(score), "score_step": step,
                                      "recent": _recent_in(member.recent, points)}
            if member.state in (MemberState.PENDING, MemberState.PAUSED):
                values["state"] = MemberState.RUNNING.value
            if checkpoint is not None:
                self._insert_checkpoint(conn, run, member_id, checkpoint)
                values.update(
                    checkpoint=checkpoint.key, checkpoint_step=checkpoint.step, checkpoint_sha256=checkpoint.sha256
                )
            return self._update_member(conn, member, values)

        return self._transaction(body)

    def report_many(
        self, run: str, scores: Mapping[int, Sequence[ScorePoint]], *, finish: bool = False
    ) -> dict[int, MemberRecord]:
        wanted = {member_id: list(points) for member_id, points in scores.items() if points}

        def body(conn: Connection) -> dict[int, MemberRecord]:
            # Three statements for the whole population (not three per member): 10x fewer round trips.
            members = self._lock_members(conn, run, list(wanted))
            now = self._clock()
            conn.execute(sa.insert(s.scores), [
                {"run": run, "member_id": member_id, "step": p.step, "score": _score_in(p.score),
                 "metrics": dict(p.metrics) if p.metrics else None, "time": now}
                for member_id, points in wanted.items() for p in points
            ])
            values: dict[int, dict[str, Any]] = {}
            for member_id, points in wanted.items():
                member, last = members[member_id], points[-1]
                running = member.state in (MemberState.PENDING, MemberState.PAUSED)
                report = {"step": last.step, "score": _score_in(last.score), "score_step": last.step,
                          "state": (MemberState.RUNNING if running else member.state).value,
                          "recent": _recent_in(member.recent, points)}
                finished = {"state": MemberState.FINISHED.value, "lease_owner": None, "lease_expires": None}
                values[member_id] = _member_values(member, now, report, *([finished] if finish else []))
            return self._update_members(conn, run, members, values)

        return self._transaction(body) if wanted else {}

    def _insert_checkpoint(self, conn: Connection, run: str, member_id: int, ref: CheckpointRef) -> None:
        conn.execute(
            sa.insert(s.checkpoints).values(
                run=run, key=ref.key, member_id=member_id, step=ref.step, sha256=ref.sha256,
                size=ref.size, created=self._clock(),
            )
        )

    def mark_ready_checked(self, run: str, member_id: int, step: int, expected_version: int) -> bool:
        def body(conn: Connection) -> bool:
            member = self._load_member(conn, run, member_id, lock=True)
            if member.version != expected_version or member.state.is_final:
                return False
            self._update_member(conn, member, {"last_ready_step": step})
            return True

        return self._transaction(body)

    def ready_checked(self, run: str, record: MemberRecord, step: int) -> MemberRecord | None:
        if record.state.is_final:
            return None

        def body(conn: Connection) -> MemberRecord | None:  # one compare-and-set UPDATE, no read
            values = _member_values(record, self._clock(), {"last_ready_step": step})
            result = conn.execute(_UPDATE_MEMBER.values(**values), {
                "match_run": run, "match_member_id": record.member_id, "match_version": record.version})
            return _updated_record(record, values) if result.rowcount == 1 else None

        return self._transaction(body)

    def apply_exploit(
        self,
        run: str,
        member_id: int,
        *,
        expected_version: int,
        donor_id: int,
        donor_step: int,
        hparams: Mapping[str, Any],
        checkpoint: CheckpointRef | None,
        summary: str,
        donor_checkpoint: str | None = None,
        donor_lineage: int | None = None,
    ) -> MemberRecord | None:
        write = ExploitWrite(member_id, expected_version, donor_id, donor_step, hparams, summary,
                             checkpoint=checkpoint, donor_checkpoint=donor_checkpoint, donor_lineage=donor_lineage)
        updated = self._apply_round(run, [write], ())
        return None if updated is None else updated[member_id]

    def apply_exploits(
        self, run: str, exploits: Sequence[ExploitWrite], ready_checks: Sequence[ReadyCheckWrite] = ()
    ) -> dict[int, MemberRecord] | None:
        return self._apply_round(run, exploits, ready_checks)

    def _apply_round(
        self, run: str, exploits: Sequence[ExploitWrite], ready_checks: Sequence[ReadyCheckWrite]
    ) -> dict[int, MemberRecord] | None:
        ids = [e.member_id for e in exploits] + [c.member_id for c in ready_checks]
        if len(set(ids)) != len(ids):
            raise ValueError(f"apply_exploits: a member appears more than once in {ids}")

        def body(conn: Connection) -> dict[int, MemberRecord] | None:
            # One SELECT, one UPDATE per kind of write and one INSERT for the whole round.
            members = self._lock_members(conn, run, ids)
            done = {e.member_id for e in exploits if already_applied(members[e.member_id], e)}
            expected = [(e.member_id, e.expected_version) for e in exploits if e.member_id not in done]
            expected += [(c.member_id, c.expected_version) for c in ready_checks]
            if any(members[member_id].version != version for member_id, version in expected):
                return None  # checked before any write: nothing to undo
            now = self._clock()
            exploited: dict[int, dict[str, Any]] = {}
            with_checkpoint: dict[int, dict[str, Any]] = {}
            events = []
            lineages = _donor_lineages(conn, run, [e for e in exploits if e.member_id not in done])
            for e in exploits:
                if e.member_id in done:
                    continue
                member = members[e.member_id]
                writes, member_events = _exploit_writes(member, e, lineages)
                (with_checkpoint if e.checkpoint is not None else exploited)[e.member_id] = _member_values(
                    member, now, *writes)
                events += [_event_row(run, e.member_id, member.step, kind, now, **fields)
                           for kind, fields in member_events]
                if e.checkpoint is not None:
                    self._insert_checkpoint(conn, run, e.member_id, e.checkpoint)
            checked = {c.member_id: _member_values(members[c.member_id], now, {"last_ready_step": c.step})
                       for c in ready_checks}
            updated = {member_id: members[member_id] for member_id in done}
            for values in (exploited, with_checkpoint, checked):  # the same columns within each group
                if values:
                    updated.update(self._update_members(conn, run, members, values))
            if events:
                conn.execute(sa.insert(s.events), events)
            return updated

        return self._transaction(body)

    def set_hparams(
        self,
        run: str,
        member_id: int,
        hparams: Mapping[str, Any],
        *,
        expected_version: int,
        kind: str = "explore",
        summary: str = "",
    ) -> MemberRecord | None:
        def body(conn: Connection) -> MemberRecord | None:
            member = self._load_member(conn, run, member_id, lock=True)
            self._check_not_final(member)
            if member.version != expected_version:
                return None
            updated = self._update_member(conn, member, {"hparams": dict(hparams)})
            self._append_event(
                conn, member, kind, old_hparams=dict(member.hparams), new_hparams=dict(hparams), summary=summary
            )
            return updated

        return self._transaction(body)

    def set_state(
        self,
        run: str,
        member_id: int,
        state: MemberState,
        *,
        worker: str | None = None,
        error: str | None = None,
    ) -> MemberRecord:
        def body(conn: Connection) -> MemberRecord:
            member = self._load_member(conn, run, member_id, lock=True)
            self._check_not_final(member)
            self._check_lease(member, worker)
            if state not in LEGAL_TRANSITIONS[member.state]:
                raise IllegalTransitionError(
                    f"member {member_id} of run {run!r} cannot go from {member.state.value} to {state.value}"
                )
            values: dict[str, Any] = {"state": state.value}
            if state is not MemberState.RUNNING:
                values.update(lease_owner=None, lease_expires=None)
            if error is not None:
                values["error"] = error
            updated = self._update_member(conn, member, values)
            if state is MemberState.FAILED:
                lines = (error or "").strip().splitlines()
                self._append_event(conn, member, "fail", summary=lines[-1] if lines else "failed")
            return updated

        return self._transaction(body)
