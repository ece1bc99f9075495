from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest

from pbtune.errors import SchemaVersionError
from pbtune.store import SQLStore
from pbtune.store.base import PopulationStore
from pbtune.testing.store_suite import StoreConformance


class TestSQLiteStore(StoreConformance):
    @pytest.fixture(autouse=True)
    def _tmp(self, tmp_path: Path) -> None:
        self.tmp_path = tmp_path

    def make_store(self, clock: Callable[[], float]) -> PopulationStore:
        return SQLStore(f"sqlite:///{self.tmp_path}/store.db", clock=clock)


class _OneByOneBulkWrites(SQLStore):
    """The contract's default bulk writes (one write per member in a batch), which a store
    without its own bulk statements inherits."""

    add_members = PopulationStore.add_members
    report_many = PopulationStore.report_many
    apply_exploits = PopulationStore.apply_exploits


class TestDefaultBulkWrites(StoreConformance):
    @pytest.fixture(autouse=True)
    def _tmp(self, tmp_path: Path) -> None:
        self.tmp_path = tmp_path

    def make_store(self, clock: Callable[[], float]) -> PopulationStore:
        return _OneByOneBulkWrites(f"sqlite:///{self.tmp_path}/store.db", clock=clock)


def test_schema_version_mismatch_is_a_clear_error(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path}/s.db"
    store = SQLStore(url)
    with store._engine.begin() as conn:  # simulate a database written by a future pbtune
        conn.exec_driver_sql("UPDATE pbtune_meta SET value = '999' WHERE key = 'schema_version'")
    store.close()
    with pytest.raises(SchemaVersionError, match="pbtune store upgrade"):
        SQLStore(url)


def test_in_memory_sqlite_works(tmp_path: Path) -> None:
    store = SQLStore("sqlite://")
    store.create_run("x", {})
    assert store.get_run("x").name == "x"


def _journal_mode(path: Path) -> str:
    import sqlite3

    with sqlite3.connect(path) as conn:
        mode = str(conn.execute("PRAGMA journal_mode").fetchone()[0])
    conn.close()
    return mode


def test_another_applications_database_is_refused_unless_asked(tmp_path: Path) -> None:
    """issue 14 item 11: pbtune added its tables to it and switched it to WAL."""
    import sqlite3

    from pbtune.errors import InvalidConfigError

    app_db = tmp_path / "app.db"
    with sqlite3.connect(app_db) as conn:
        conn.execute("CREATE TABLE users (id INTEGER PRIMARY KEY, name TEXT)")
    conn.close()
    with pytest.raises(InvalidConfigError, match="users.*pbtune_allow_foreign_tables=1"):
        SQLStore(f"sqlite:///{app_db}")
    with sqlite3.connect(app_db) as conn:
        tables = {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
    conn.close()
    assert tables == {"users"} and _journal_mode(app_db) == "delete"  # untouched
    store = SQLStore(f"sqlite:///{app_db}?pbtune_allow_foreign_tables=1")  # asked for
    store.create_run("shared", {})
    assert [r.name for r in store.list_runs()] == ["shared"]
    store.close()
    SQLStore(f"sqlite:///{app_db}?pbtune_allow_foreign_tables=1").close()  # pbtune's own tables: fine


def test_a_file_that_is_not_a_database_is_refused(tmp_path: Path) -> None:
    from pbtune.errors import InvalidConfigError

    text = tmp_path / "notes.txt"
    text.write_text("not a database, just text " * 100)
    with pytest.raises(InvalidConfigError, match="a SQLite database file"):
        SQLStore(f"sqlite:///{text}")
    assert text.read_text().startswith("not a database")


def test_read_only_store_reads_without_writing_or_creating(tmp_path: Path) -> None:
    import hashlib

    from pbtune.errors import NotFoundError, StoreError

    missing = tmp_path / "sub" / "none.db"
    with pytest.raises(NotFoundError, match="no runs in"):
        SQLStore(f"sqlite:///{missing}", read_only=True)
    assert not (tmp_path / "sub").exists()

    path = tmp_path / "pbt.db"
    writer = SQLStore(f"sqlite:///{path}")
    writer.create_run("r", {"budget": 3})
    writer.add_member("r", 0, {"lr": 0.1})
    writer.close()
    before = hashlib.sha256(path.read_bytes()).hexdigest()
    reader = SQLStore(f"sqlite:///{path}", read_only=True)
    assert [r.name for r in reader.list_runs()] == ["r"] and reader.get_member("r", 0).hparams == {"lr": 0.1}
    with pytest.raises(StoreError, match="readonly"):
        reader.create_run("other", {})
    reader.close()
    assert hashlib.sha256(path.read_bytes()).hexdigest() == before

    foreign = tmp_path / "other.db"
    import sqlite3

    with sqlite3.connect(foreign) as conn:
        conn.execute("CREATE TABLE t (x)")
    conn.close()
    with pytest.raises(NotFoundError, match="no pbtune tables"):
        SQLStore(f"sqlite:///{foreign}", read_only=True)
