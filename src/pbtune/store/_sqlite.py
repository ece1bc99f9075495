"""Opening SQLite files safely: never another application's database, read-only for reads."""

from __future__ import annotations

import os
import sqlite3
import urllib.parse
from collections.abc import Callable

from pbtune.errors import InvalidConfigError, NotFoundError

__all__ = ["ALLOW_FOREIGN", "split_allow_foreign", "refuse_foreign_tables", "read_only_connect", "require_file"]

# A URL query flag (``sqlite:///app.db?pbtune_allow_foreign_tables=1``): it travels wherever a
# storage URL does (config files, the CLI, the server); it is removed before SQLAlchemy sees it.
ALLOW_FOREIGN = "pbtune_allow_foreign_tables"


def split_allow_foreign(url: str) -> tuple[str, bool]:
    """``url`` without the :data:`ALLOW_FOREIGN` flag, and whether it was set (to 1/true/yes)."""
    base, sep, query = url.partition("?")
    if not sep:
        return url, False
    pairs = urllib.parse.parse_qsl(query, keep_blank_values=True)
    allowed = any(k == ALLOW_FOREIGN and v.lower() in ("1", "true", "yes") for k, v in pairs)
    rest = [(k, v) for k, v in pairs if k != ALLOW_FOREIGN]
    return (base + ("?" + urllib.parse.urlencode(rest) if rest else "")), allowed


def refuse_foreign_tables(path: str, shown_url: str) -> None:
    """Refuse a SQLite file that holds tables of another application.

    pbtune would add its tables and switch the file to WAL mode, which changes how that
    application's own connections work; an empty or missing file, or pbtune's own, is fine.
    """
    if not os.path.isfile(path) or os.path.getsize(path) == 0:
        return
    try:
        with sqlite3.connect(f"file:{urllib.parse.quote(path)}?mode=ro", uri=True) as conn:
            names = [r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type IN ('table', 'view')")]
        conn.close()
    except sqlite3.DatabaseError as exc:  # not a database at all (a text file, say)
        raise InvalidConfigError("storage", "population store", "a SQLite database file (or a new path)",
                                 f"{shown_url} ({exc})") from None
    foreign = sorted(n for n in names if not n.startswith(("pbtune_", "sqlite_")))
    if foreign:
        raise InvalidConfigError(
            "storage", "population store",
            f"a database without other applications' tables (found {', '.join(foreign[:5])}"
            f"{' ...' if len(foreign) > 5 else ''}): use another file, or add ?{ALLOW_FOREIGN}=1"
            " to the URL to add pbtune's tables to it anyway", shown_url,
        )


def require_file(path: str | None, shown_url: str) -> None:
    """A read must not create a store: a missing file means there are no runs."""
    if path not in (None, "", ":memory:") and not os.path.isfile(path):
        raise NotFoundError(f"no runs in {shown_url} (there is no store there yet)")


def read_only_connect(path: str) -> Callable[[], sqlite3.Connection]:
    """A ``creator`` for SQLAlchemy that opens ``path`` read-only.

    On a read-only file system a WAL database cannot get its ``-shm`` file; nobody can be writing
    there, so it is then opened as immutable.
    """
    uri = f"file:{urllib.parse.quote(path)}"

    def connect() -> sqlite3.Connection:
        try:
            conn = sqlite3.connect(f"{uri}?mode=ro", uri=True, timeout=30, check_same_thread=False)
            conn.execute("SELECT count(*) FROM sqlite_master").fetchall()  # opening is lazy: touch it
            return conn
        except sqlite3.OperationalError:
            return sqlite3.connect(f"{uri}?mode=ro&immutable=1", uri=True, check_same_thread=False)

    return connect
