"""The SQL store's plumbing: engine, retried transactions, schema checks, member rows."""

from __future__ import annotations

import os
import random
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from typing import TYPE_CHECKING, Any, TypeVar

import sqlalchemy as sa
from sqlalchemy import event
from sqlalchemy.engine import Connection, Engine
from sqlalchemy.exc import DBAPIError, IntegrityError, OperationalError

from pbtune.errors import (
    LeaseLostError,
    NotFoundError,
    SchemaVersionError,
    StoreError,
)
from pbtune.store import _schema as s
from pbtune.store._sql_rows import (
    _SCHEMA_LOCK,
    _SELECT_MEMBER,
    _SELECT_MEMBER_FOR_UPDATE,
    _UPDATE_MEMBER,
    _event_row,
    _is_transient,
    _member_values,
    _parse_url,
    _recent_out,
    _score_out,
    _sqlite_file,
    _updated_record,
)
from pbtune.store._sql_view import SQLView
from pbtune.store._sqlite import read_only_connect, refuse_foreign_tables, require_file, split_allow_foreign
from pbtune.store.base import (
    PopulationStore,
)
from pbtune.types import (
    MemberRecord,
    MemberState,
)

if TYPE_CHECKING:
    from pbtune.strategies._view import PopulationView

T = TypeVar("T")


class SQLBase(PopulationStore):
    """Engine, transactions, schema and row helpers of the SQL population store.

    :class:`~pbtune.store.sql.SQLStore` is the class to use; its arguments:

    Args:
        url: SQLAlchemy URL, e.g. ``sqlite:///pbt.db`` or ``postgresql+psycopg://user@host/db``.
        retry_seconds: how long a transaction is retried on lock contention or a dropped
            connection before :class:`StoreError` is raised.
        clock: returns the current time in seconds (injectable for tests).

    Example:
        >>> from pbtune.store import SQLStore
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
            # No pre-ping (a round trip per transaction): a dropped connection fails the first
            # statement as invalidated, which _transaction retries on a fresh one.
            return sa.create_engine(parsed, future=True, connect_args=args)
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
            lineage=-1 if m["lineage"] is None else m["lineage"],
        )

    def population_view(self, run: str, mode: str, known: Sequence[MemberRecord] = ()) -> PopulationView:
        return SQLView(self, run, mode, tuple(known))

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
