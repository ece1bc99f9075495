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
