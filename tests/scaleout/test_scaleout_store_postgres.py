from __future__ import annotations

from collections.abc import Callable

import pytest

from pbtune.store import SQLStore
from pbtune.store.base import PopulationStore
from pbtune.testing.store_suite import StoreConformance


class TestPostgresStore(StoreConformance):
    """The unchanged conformance suite over PostgreSQL (psycopg 3), one fresh database per test."""

    @pytest.fixture(autouse=True)
    def _database(self, pg_url: str) -> None:
        self.url = pg_url

    def make_store(self, clock: Callable[[], float]) -> PopulationStore:
        return SQLStore(self.url, clock=clock)
