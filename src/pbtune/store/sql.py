"""PopulationStore over SQLAlchemy: SQLite (embedded default) and PostgreSQL.

SQLite runs in WAL mode and takes the write lock at the start of every writing transaction
(``BEGIN IMMEDIATE``), so compare-and-set reads cannot go stale inside a transaction. Its
limits: one writer at a time (fine up to a few dozen workers on one machine), and the database
file must be on a local disk (WAL does not work over NFS). Use PostgreSQL when the population
spans machines; there, rows are locked with ``SELECT ... FOR UPDATE``.
"""

from __future__ import annotations

import dataclasses
import math
import os
import random
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any, TypeVar

import sqlalchemy as sa
from sqlalchemy import event
from sqlalchemy.engine import Connection, Engine
from sqlalchemy.exc import ArgumentError, DBAPIError, IntegrityError, OperationalError

from pbtune._storage_url import check_storage_url
from pbtune.errors import (
    IllegalTransitionError,
    InvalidConfigError,
    LeaseLostError,
    NotFoundError,
    SchemaVersionError,
    StoreError,
)
from pbtune.store import _schema as s
from pbtune.store._sqlite import read_only_connect, refuse_foreign_tables, require_file, split_allow_foreign
from pbtune.store.base import (
    CheckpointRef,
    ExploitWrite,
    PopulationStore,
    ReadyCheckWrite,
    ScorePoint,
    already_applied,
)
from pbtune.types import (
    LEGAL_TRANSITIONS,
    RECENT_SCORES,
    EventRecord,
    MemberRecord,
    MemberState,
    RunRecord,
    ScoreRecord,
)

__all__ = ["SQLStore"]

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


def _exploit_writes(member: MemberRecord, e: ExploitWrite) -> tuple[list[dict[str, Any]], _Events]:
    """The logical writes (column values) and events (kind, fields) of one exploit and its explore."""
    taken = dict(e.hparams)
    exploit: dict[str, Any] = {"hparams": taken, "last_ready_step": member.step}
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


class SQLStore(PopulationStore):
    """The SQL population store.

    Args:
        url: SQLAlchemy URL, e.g. ``sqlite:///pbt.db`` or ``postgresql+psycopg://user@host/db``.
        retry_seconds: how long a transaction is retried on lock contention or a dropped
            connection before :class:`StoreError` is raised.
        clock: returns the current time in seconds (injectable for tests).

    Example:
        >>> store = SQLStore("sqlite://")
        >>> store.create_run("demo", {}).name
        'demo'
    """

    def __init__(
        self,
        url: str,
        *,
        retry_seconds: float = 120.0,
        clock: Callable[[], float] = time.time,
        create: bool = True,
        read_only: bool = False,
    ) -> None:
        url, allow_foreign = split_allow_foreign(url)
        self.url = url
        self._retry_seconds = retry_seconds
        self._clock = clock
        self._rng = random.Random()
        self._batch = threading.local()  # .conn: the connection of this thread's open batch()
        self._read_only = read_only
        sqlite_file = _sqlite_file(url)
        if read_only:  # reads never create a store, and work on a read-only file system
            require_file(sqlite_file, self._safe_url())
        elif sqlite_file is not None and not allow_foreign:
            refuse_foreign_tables(sqlite_file, self._safe_url())
        self._engine = self._make_engine(url, read_only=read_only)
        if create and not read_only:
            self._make_sqlite_folder()
            self._transaction(self._ensure_schema)
        else:
            self._check_schema_version()

    # -- plumbing -----------------------------------------------------------------------------
    @staticmethod
    def _make_engine(url: str, *, read_only: bool = False) -> Engine:
        parsed = _parse_url(url)
        if parsed.drivername == "postgresql":  # SQLAlchemy would pick psycopg2; we ship psycopg 3
            parsed = parsed.set(drivername="postgresql+psycopg")
        if parsed.get_backend_name() != "sqlite":
            args: dict[str, Any] = {"connect_timeout": 10} if parsed.get_backend_name() == "postgresql" else {}
            if read_only and parsed.get_backend_name() == "postgresql":
                args["options"] = "-c default_transaction_read_only=on"
            return sa.create_engine(parsed, pool_pre_ping=True, future=True, connect_args=args)
        in_memory = parsed.database in (None, "", ":memory:")
        opened_read_only = read_only and not in_memory
        engine = sa.create_engine(
            url,
            connect_args={"timeout": 30, "check_same_thread": False},
            poolclass=sa.pool.StaticPool if in_memory else sa.pool.QueuePool,
            future=True,
            **({"creator": read_only_connect(str(parsed.database))} if opened_read_only else {}),
        )

        @event.listens_for(engine, "connect")
        def _on_connect(dbapi_connection: Any, _record: Any) -> None:
            dbapi_connection.isolation_level = None  # we issue BEGIN ourselves
            cursor = dbapi_connection.cursor()
            if not in_memory and not opened_read_only:
                cursor.execute("PRAGMA journal_mode=WAL")
            if not opened_read_only:
                cursor.execute("PRAGMA synchronous=NORMAL")
            cursor.execute("PRAGMA busy_timeout=20")  # short: our retry loop is fairer than SQLite's backoff
            cursor.close()

        @event.listens_for(engine, "begin")
        def _on_begin(conn: Connection) -> None:
            reading = opened_read_only or conn.get_execution_options().get("pbtune_read_only", False)
            conn.exec_driver_sql("BEGIN" if reading else "BEGIN IMMEDIATE")

        return engine

    def _make_sqlite_folder(self) -> None:
        """``sqlite:///runs/pbt.db`` may name a folder that does not exist yet: create it."""
        database = self._engine.url.database
        if self._engine.dialect.name == "sqlite" and database not in (None, "", ":memory:"):
            folder = os.path.dirname(os.path.abspath(database))
            os.makedirs(folder, exist_ok=True)

    @property
    def _for_update(self) -> bool:
        return self._engine.dialect.name != "sqlite"  # SQLite already holds the write lock

    def _transaction(self, body: Callable[[Connection], T], *, read_only: bool = False) -> T:
        """Run ``body`` in one transaction: commit, or roll back and retry transient errors.

        A context manager cannot re-run its block, hence a callable. Retries back off
        exponentially with full jitter for at most ``retry_seconds``.
        """
        open_batch = getattr(self._batch, "conn", None)
        if open_batch is not None:
            return body(open_batch)  # part of batch(): its transaction commits or retries all
        deadline = time.monotonic() + self._retry_seconds
        delay = 0.002
        while True:
            try:
                with self._engine.connect() as conn:
                    if read_only:
                        conn = conn.execution_options(pbtune_read_only=True)
                    with conn.begin():
                        return body(conn)
            except (OperationalError, DBAPIError) as exc:
                if not _is_transient(exc) or time.monotonic() >= deadline:
                    raise StoreError(f"population store {self._safe_url()} failed: {exc}") from exc
                time.sleep(self._rng.uniform(0, delay))
                delay = min(delay * 2, 0.1)

    def batch(self, writes: Callable[[], T]) -> T:
        if getattr(self._batch, "conn", None) is not None:
            return writes()  # already inside a batch

        def body(conn: Connection) -> T:
            self._batch.conn = conn
            try:
                return writes()
            finally:
                self._batch.conn = None

        return self._transaction(body)

    def _safe_url(self) -> str:
        return sa.engine.make_url(self.url).render_as_string(hide_password=True)

    def _ensure_schema(self, conn: Connection) -> None:
        if self._for_update:  # PostgreSQL: concurrent CREATE TABLEs collide; serialize them
            conn.execute(sa.text("SELECT pg_advisory_xact_lock(:key)"), {"key": _SCHEMA_LOCK})
        s.metadata.create_all(conn, checkfirst=True)
        row = conn.execute(sa.select(s.meta.c.value).where(s.meta.c.key == "schema_version")).first()
        if row is None:
            try:
                with conn.begin_nested():
                    conn.execute(sa.insert(s.meta).values(key="schema_version", value=str(s.SCHEMA_VERSION)))
            except IntegrityError:
                pass  # another process created it first
        elif int(row[0]) != s.SCHEMA_VERSION:
            raise SchemaVersionError(
                f"{self._safe_url()} holds pbtune schema version {row[0]}, this pbtune uses "
                f"{s.SCHEMA_VERSION}: run `pbtune store upgrade {self._safe_url()}`"
            )

    def _check_schema_version(self) -> None:
        def read(conn: Connection) -> str | None:
            if not sa.inspect(conn).has_table(s.meta.name):
                return None
            return conn.execute(sa.select(s.meta.c.value).where(s.meta.c.key == "schema_version")).scalar()

        found = self._transaction(read, read_only=True)
        if found is None:
            raise NotFoundError(f"no runs in {self._safe_url()} (it holds no pbtune tables)")
        if int(found) != s.SCHEMA_VERSION:
            raise SchemaVersionError(
                f"{self._safe_url()} holds pbtune schema version {found}, this pbtune uses {s.SCHEMA_VERSION}"
            )

    def close(self) -> None:
        self._engine.dispose()

    # -- row helpers --------------------------------------------------------------------------
    @staticmethod
    def _member_from_row(row: Any) -> MemberRecord:
        m = row._mapping
        return MemberRecord(
            run=m["run"],
            member_id=m["member_id"],
            state=MemberState(m["state"]),
            step=m["step"],
            hparams=dict(m["hparams"]),
            score=_score_out(m["score"], m["score_step"] is not None),
            score_step=m["score_step"],
            checkpoint=m["checkpoint"],
            checkpoint_step=m["checkpoint_step"],
            checkpoint_sha256=m["checkpoint_sha256"],
            last_ready_step=m["last_ready_step"],
            version=m["version"],
            lease_owner=m["lease_owner"],
            lease_expires=m["lease_expires"],
            error=m["error"],
            recent=_recent_out(m["recent"]),
        )

    def _load_member(self, conn: Connection, run: str, member_id: int, *, lock: bool = False) -> MemberRecord:
        query = _SELECT_MEMBER_FOR_UPDATE if lock and self._for_update else _SELECT_MEMBER
        row = conn.execute(query, {"run": run, "member_id": member_id}).first()
        if row is None:
            raise NotFoundError(f"run {run!r} has no member {member_id}")
        return self._member_from_row(row)

    def _update_member(self, conn: Connection, current: MemberRecord, *writes: Mapping[str, Any]) -> MemberRecord:
        """Apply ``writes`` (see :func:`_member_values`) with compare-and-set on ``version``; the
        caller holds the row lock, so this cannot lose."""
        values = _member_values(current, self._clock(), *writes)
        result = conn.execute(
            _UPDATE_MEMBER.values(**values),
            {"match_run": current.run, "match_member_id": current.member_id, "match_version": current.version},
        )
        if result.rowcount != 1:
            raise StoreError(f"member {current.member_id} of run {current.run!r} changed under a lock")
        return _updated_record(current, values)

    def _lock_members(self, conn: Connection, run: str, member_ids: Sequence[int]) -> dict[int, MemberRecord]:
        """The members, row-locked on PostgreSQL (in member order: no deadlock between two such
        calls); every one must exist and not be finished, else nothing has been written yet."""
        c = s.members.c
        query = sa.select(s.members).where(c.run == run, c.member_id.in_(sorted(member_ids))).order_by(c.member_id)
        if self._for_update:
            query = query.with_for_update()
        members = {m.member_id: m for m in map(self._member_from_row, conn.execute(query))}
        for member_id in member_ids:
            if member_id not in members:
                raise NotFoundError(f"run {run!r} has no member {member_id}")
            self._check_not_final(members[member_id])
        return members

    def _update_members(
        self, conn: Connection, run: str, current: Mapping[int, MemberRecord], values: Mapping[int, dict[str, Any]]
    ) -> dict[int, MemberRecord]:
        """:meth:`_update_member` for many locked members in one statement (the same columns each)."""
        columns = list(next(iter(values.values())))
        update = _UPDATE_MEMBER.values({name: sa.bindparam(name) for name in columns})
        result = conn.execute(update, [
            {**row, "match_run": run, "match_member_id": member_id, "match_version": current[member_id].version}
            for member_id, row in values.items()
        ])
        if conn.dialect.supports_sane_multi_rowcount and result.rowcount != len(values):
            raise StoreError(f"members of run {run!r} changed under a lock")
        return {member_id: _updated_record(current[member_id], row) for member_id, row in values.items()}

    def _append_event(self, conn: Connection, member: MemberRecord, kind: str, **values: Any) -> None:
        conn.execute(sa.insert(s.events), [_event_row(member.run, member.member_id, member.step, kind,
                                                      self._clock(), **values)])

    def _insert_unless_raced(self, conn: Connection, insert: Any) -> bool:
        """Insert a row; False if another process inserted the same key first.

        PostgreSQL (read committed) lets two transactions both see "no row" and both insert;
        a savepoint keeps the loser's transaction usable. SQLite's write lock prevents the race.
        """
        if not self._for_update:
            conn.execute(insert)
            return True
        try:
            with conn.begin_nested():
                conn.execute(insert)
        except IntegrityError:
            return False
        return True

    @staticmethod
    def _check_lease(member: MemberRecord, worker: str | None) -> None:
        if worker is not None and member.lease_owner != worker:
            raise LeaseLostError(
                f"worker {worker!r} no longer holds member {member.member_id} of run {member.run!r}"
                f" (held by {member.lease_owner!r})"
            )

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
                    hparams=dict(hparams), last_ready_step=0, version=0, updated=self._clock(),
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
                     "hparams": dict(hparams[i]), "last_ready_step": 0, "version": 0, "updated": now}
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
    ) -> MemberRecord | None:
        write = ExploitWrite(member_id, expected_version, donor_id, donor_step, hparams, summary,
                             checkpoint=checkpoint, donor_checkpoint=donor_checkpoint)
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
            for e in exploits:
                if e.member_id in done:
                    continue
                member = members[e.member_id]
                writes, member_events = _exploit_writes(member, e)
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
                .order_by(c.step, c.member_id)
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
