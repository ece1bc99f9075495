"""PostgreSQL helpers for tests, benchmarks and CI: throwaway databases and dropped connections.

Example::

    with temporary_database("postgresql+psycopg://postgres@127.0.0.1:5432/test") as url:
        store = SQLStore(url)      # a fresh, empty database, dropped afterwards
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import sqlalchemy as sa

from pbtune.errors import StoreError

__all__ = ["DEFAULT_ADMIN_URL", "reachable", "temporary_database", "terminate_backends"]

DEFAULT_ADMIN_URL = "postgresql+psycopg://postgres@127.0.0.1:5432/test"


def _connect(url: str) -> Any:
    import psycopg  # the psycopg 3 driver; part of pbtune[postgres]

    parsed = sa.engine.make_url(url)
    return psycopg.connect(
        host=parsed.host or "127.0.0.1", port=parsed.port or 5432, user=parsed.username,
        password=parsed.password, dbname=parsed.database, autocommit=True, connect_timeout=3,
    )


def reachable(admin_url: str = DEFAULT_ADMIN_URL) -> str | None:
    """None when the server answers, else the reason it does not (for ``pytest.skip``).

    Example:
        >>> reason = reachable("postgresql+psycopg://nobody@127.0.0.1:1/none")
        >>> reason is not None
        True
    """
    try:
        with _connect(admin_url) as conn:
            conn.execute("SELECT 1")
    except Exception as exc:  # noqa: BLE001 - any failure means "not usable here"
        return f"PostgreSQL at {sa.engine.make_url(admin_url).render_as_string(hide_password=True)} " \
               f"is not reachable: {str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__}"
    return None


@contextmanager
def temporary_database(admin_url: str = DEFAULT_ADMIN_URL, *, prefix: str = "pbtune_tmp") -> Iterator[str]:
    """Create a uniquely named database, yield its SQLAlchemy URL, drop it (and its sessions) after.

    Raises:
        StoreError: the server is unreachable or refuses to create databases.
    """
    name = f"{prefix}_{uuid.uuid4().hex[:12]}"
    try:
        with _connect(admin_url) as conn:
            conn.execute(f'CREATE DATABASE "{name}"')
    except Exception as exc:  # noqa: BLE001
        raise StoreError(f"could not create a temporary PostgreSQL database: {exc}") from exc
    url = sa.engine.make_url(admin_url).set(drivername="postgresql+psycopg", database=name)
    try:
        yield url.render_as_string(hide_password=False)
    finally:
        with _connect(admin_url) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def terminate_backends(admin_url: str, database: str) -> int:
    """Kill every session connected to ``database`` (``pg_terminate_backend``); return how many.

    Simulates a server restart or a network cut for the clients of that database.
    """
    with _connect(admin_url) as conn:
        rows = conn.execute(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
            "WHERE datname = %s AND pid <> pg_backend_pid()",
            (database,),
        ).fetchall()
    return sum(1 for (killed,) in rows if killed)
