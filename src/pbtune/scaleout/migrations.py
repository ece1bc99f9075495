"""Schema upgrades of the population store: ``pbtune store upgrade URL``.

The schema's version lives in ``pbtune_meta`` (``schema_version``); the tables of the current
version are in :mod:`pbtune.store._schema`. To change the schema: edit the tables, bump
``SCHEMA_VERSION`` and register the step that brings an old database forward::

    @migration(1)                      # from version 1 to version 2
    def _add_member_note(conn):
        conn.execute(sa.text("ALTER TABLE pbtune_members ADD COLUMN note TEXT"))

All steps of one upgrade run in a single transaction (PostgreSQL and SQLite both have
transactional DDL), under the same lock that store creation takes, so an interrupted or
failed upgrade leaves the database at its old version and concurrent upgrades wait their turn.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import sqlalchemy as sa
from sqlalchemy import event
from sqlalchemy.engine import Connection, Engine

from pbtune.errors import SchemaVersionError, StoreError
from pbtune.store import _schema as schema
from pbtune.store._sql_rows import _SCHEMA_LOCK

__all__ = ["STEPS", "Upgrade", "current_version", "migration", "upgrade"]

Step = Callable[[Connection], None]

STEPS: dict[int, Step] = {}
"""Upgrade steps by the version they start from: ``STEPS[n]`` turns version n into n + 1."""


def migration(from_version: int) -> Callable[[Step], Step]:
    """Register the step that upgrades a database from ``from_version`` to ``from_version + 1``."""

    def register(step: Step) -> Step:
        if from_version in STEPS:
            raise ValueError(f"a migration from schema version {from_version} is already registered")
        STEPS[from_version] = step
        return step

    return register


@dataclass(frozen=True)
class Upgrade:
    """What :func:`upgrade` did: ``found`` is None for a database without pbtune tables."""

    found: int | None
    now: int

    @property
    def changed(self) -> bool:
        return self.found != self.now


def _engine(url: str) -> Engine:
    parsed = sa.engine.make_url(url)
    if parsed.drivername == "postgresql":
        parsed = parsed.set(drivername="postgresql+psycopg")
    if parsed.get_backend_name() != "sqlite":
        return sa.create_engine(parsed, future=True)
    engine = sa.create_engine(parsed, connect_args={"timeout": 60}, future=True)

    @event.listens_for(engine, "connect")
    def _manual_begin(dbapi_connection: Any, _record: Any) -> None:
        dbapi_connection.isolation_level = None

    @event.listens_for(engine, "begin")
    def _write_lock(conn: Connection) -> None:
        conn.exec_driver_sql("BEGIN IMMEDIATE")  # the whole upgrade holds the write lock

    return engine


def _read_version(conn: Connection) -> int | None:
    if not sa.inspect(conn).has_table(schema.meta.name):
        return None
    value = conn.execute(
        sa.select(schema.meta.c.value).where(schema.meta.c.key == "schema_version")
    ).scalar()
    return None if value is None else int(value)


def current_version(url: str) -> int | None:
    """The schema version of the database at ``url`` (None: no pbtune tables yet).

    Example:
        >>> current_version("sqlite://") is None
        True
    """
    engine = _engine(url)
    try:
        with engine.connect() as conn:
            return _read_version(conn)
    finally:
        engine.dispose()


def upgrade(
    url: str, *, target: int = schema.SCHEMA_VERSION, steps: Mapping[int, Step] | None = None
) -> Upgrade:
    """Bring the database at ``url`` to schema version ``target`` (creating it when empty).

    Args:
        url: SQLAlchemy URL of the population store.
        target: the version to reach (this pbtune's by default).
        steps: the registry of steps (:data:`STEPS` by default; tests pass their own).

    Raises:
        SchemaVersionError: the database is newer than ``target``, or no step leads onward.
        StoreError: the database failed; nothing was changed.

    Example:
        >>> import tempfile
        >>> url = f"sqlite:///{tempfile.mkdtemp()}/pbt.db"
        >>> upgrade(url)
        Upgrade(found=None, now=4)
        >>> upgrade(url).changed
        False
    """
    registry = STEPS if steps is None else steps
    engine = _engine(url)
    safe = sa.engine.make_url(url).render_as_string(hide_password=True)
    try:
        with engine.begin() as conn:
            if engine.dialect.name == "postgresql":
                conn.execute(sa.text("SELECT pg_advisory_xact_lock(:key)"), {"key": _SCHEMA_LOCK})
            found = _read_version(conn)
            if found is None:
                if target != schema.SCHEMA_VERSION:
                    raise SchemaVersionError(
                        f"{safe} has no pbtune tables; only the current version "
                        f"{schema.SCHEMA_VERSION} can be created, not {target}"
                    )
                schema.metadata.create_all(conn, checkfirst=True)
                conn.execute(sa.insert(schema.meta).values(key="schema_version", value=str(target)))
                return Upgrade(None, target)
            if found > target:
                raise SchemaVersionError(
                    f"{safe} holds pbtune schema version {found}, newer than {target}: "
                    "upgrade pbtune instead (schema downgrades are not supported)"
                )
            version = found
            while version < target:
                step = registry.get(version)
                if step is None:
                    raise SchemaVersionError(
                        f"no migration from pbtune schema version {version} to {version + 1} "
                        f"(database {safe}); is this pbtune older than the one that wrote it?"
                    )
                step(conn)
                version += 1
            if version != found:
                conn.execute(
                    sa.update(schema.meta)
                    .where(schema.meta.c.key == "schema_version")
                    .values(value=str(version))
                )
            return Upgrade(found, version)
    except sa.exc.SQLAlchemyError as exc:
        raise StoreError(f"schema upgrade of {safe} failed; nothing was changed: {exc}") from exc
    finally:
        engine.dispose()


@migration(1)
def _exploit_events_record_checkpoints(conn: Connection) -> None:
    """v1 -> v2: exploit events name the donor checkpoint copied and the copy (older events keep NULL)."""
    conn.execute(sa.text("ALTER TABLE pbtune_events ADD COLUMN donor_checkpoint VARCHAR(500)"))
    conn.execute(sa.text("ALTER TABLE pbtune_events ADD COLUMN checkpoint VARCHAR(500)"))


@migration(2)
def _members_keep_recent_scores(conn: Connection) -> None:
    """v2 -> v3: members keep their recent scores (older members start with none); checkpoints get
    a (run, member) index so collecting a member's old checkpoints does not scan the run."""
    conn.execute(sa.text("ALTER TABLE pbtune_members ADD COLUMN recent JSON"))
    conn.execute(sa.text(
        "CREATE INDEX IF NOT EXISTS ix_pbtune_checkpoints_run_member ON pbtune_checkpoints (run, member_id)"
    ))


@migration(3)
def _members_keep_their_lineage(conn: Connection) -> None:
    """v3 -> v4: members keep their lineage (the root ancestor's id). Existing members get what the
    column would hold had it existed: the exploit events replayed in order, each copier taking its
    donor's lineage of that moment (failed members' replacements included); no exploit: its own id."""
    conn.execute(sa.text("ALTER TABLE pbtune_members ADD COLUMN lineage INTEGER"))
    lineage: dict[tuple[str, int], int] = {}
    rows = conn.execute(sa.text(
        "SELECT run, member_id, donor_id FROM pbtune_events "
        "WHERE kind = 'exploit' AND donor_id IS NOT NULL ORDER BY id"
    ))
    for run, member_id, donor_id in rows:
        lineage[(run, member_id)] = lineage.get((run, donor_id), donor_id)
    members = conn.execute(sa.text("SELECT run, member_id FROM pbtune_members")).all()
    values = [{"run": run, "member_id": member_id, "lineage": lineage.get((run, member_id), member_id)}
              for run, member_id in members]
    if values:
        update = "UPDATE pbtune_members SET lineage = :lineage WHERE run = :run AND member_id = :member_id"
        conn.execute(sa.text(update), values)
