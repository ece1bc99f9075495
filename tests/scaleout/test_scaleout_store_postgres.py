from __future__ import annotations

import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

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


_CREATE = """
import sys, time
from pbtune.config import RunConfig
from pbtune.member import Population
url, start_at = sys.argv[1], float(sys.argv[2])
config = RunConfig(name="race", space={"lr": {"type": "float", "low": 0.01, "high": 0.1}}, population=8,
                   storage=url, checkpoints=sys.argv[3])
time.sleep(max(0.0, start_at - time.time()))  # all processes hit the empty database together
Population(config)
"""


def test_concurrent_first_use_of_an_empty_database(pg_url: str, tmp_path: Path) -> None:
    """Schema creation, create_run and add_member race across processes (every SLURM task
    opens the Population at once); all must succeed with one run, one copy of each member."""
    start_at = str(time.time() + 2.5)
    procs = [subprocess.Popen([sys.executable, "-c", _CREATE, pg_url, start_at, str(tmp_path / "ck")],
                              stderr=subprocess.PIPE) for _ in range(4)]
    errors = [p.communicate(timeout=60)[1].decode()[-800:] for p in procs]
    assert [p.returncode for p in procs] == [0] * 4, errors
    store = SQLStore(pg_url)
    assert [r.name for r in store.list_runs()] == ["race"]
    assert [m.member_id for m in store.list_members("race")] == list(range(8))
    assert sorted(e.member_id for e in store.events("race") if e.kind == "init") == list(range(8))
    store.close()


def test_plain_postgresql_url_uses_psycopg3(pg_url: str) -> None:
    plain = pg_url.replace("postgresql+psycopg://", "postgresql://")
    store = SQLStore(plain)
    assert store._engine.dialect.driver == "psycopg"
    store.create_run("plain", {})
    assert store.get_run("plain").name == "plain"
    store.close()


def test_read_only_store_on_postgresql_never_creates_tables(pg_url: str) -> None:
    """issue 14 item 11: read commands open read-only; an empty database has no runs."""
    from pbtune.errors import NotFoundError, StoreError

    with pytest.raises(NotFoundError, match="no runs in"):
        SQLStore(pg_url, read_only=True)
    writer = SQLStore(pg_url)
    writer.create_run("r", {})
    writer.close()
    reader = SQLStore(pg_url, read_only=True)
    assert [r.name for r in reader.list_runs()] == ["r"]
    with pytest.raises(StoreError, match="read-only transaction"):
        reader.create_run("other", {})
    reader.close()


def test_server_on_postgresql_takes_nan_and_inf_metrics(pg_url: str, tmp_path: Path) -> None:
    """issue 14 item 2: behind the server a NaN metric was a 503 that clients retried for 120 s."""
    pytest.importorskip("fastapi", reason="the server needs pip install 'pbtune[server]'")
    import httpx

    from pbtune.config import RunConfig
    from pbtune.server.runner import PBTServer

    config = RunConfig(name="nan", space={"lr": {"type": "float", "low": 1e-3, "high": 1.0}}, population=2,
                       storage=pg_url, checkpoints=str(tmp_path / "ck"))
    server = PBTServer(0, "pg-key-0123456789", config=config, upload_dir=str(tmp_path / "up")).start()
    try:
        with httpx.Client(base_url=server.url, headers={"Authorization": "Bearer pg-key-0123456789"}) as http:
            assert http.post("/join", json={"member_id": 0}).status_code == 200
            body = {"metric": "NaN", "metrics": {"loss": "NaN", "g": "-Infinity"}}
            answer = http.post("/members/0/report", json=body)
            assert answer.status_code == 200, answer.text
            assert answer.json()["member"]["score"] == "NaN"
    finally:
        server.stop()
    store = SQLStore(pg_url)
    metrics = store.scores("nan", 0)[0].metrics
    store.close()
    assert str(metrics["loss"]) == "nan" and metrics["g"] == float("-inf")
