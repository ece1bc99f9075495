from __future__ import annotations

import os
import uuid
from collections.abc import Iterator

import pytest
import sqlalchemy as sa

from pbtune.scaleout.postgres import (
    DEFAULT_ADMIN_URL,
    reachable,
    temporary_database,
    terminate_backends,
)

ADMIN_URL = os.environ.get("PBTUNE_TEST_POSTGRES", DEFAULT_ADMIN_URL)


@pytest.fixture(scope="session")
def pg_admin() -> str:
    reason = reachable(ADMIN_URL)
    if reason is not None:
        pytest.skip(f"{reason} (set PBTUNE_TEST_POSTGRES to a server where user may CREATE DATABASE)")
    return ADMIN_URL


@pytest.fixture(scope="session")
def _pg_database(pg_admin: str) -> Iterator[str]:
    with temporary_database(pg_admin, prefix="pbtune_test") as url:
        yield url


@pytest.fixture
def pg_url(pg_admin: str, _pg_database: str) -> str:
    """An empty database for each test (one database per session, emptied before each test:
    creating a database per test costs ~0.5 s)."""
    terminate_backends(pg_admin, sa.engine.make_url(_pg_database).database or "")  # leftovers hold locks
    engine = sa.create_engine(_pg_database)
    try:
        with engine.begin() as conn:
            conn.exec_driver_sql("DROP SCHEMA public CASCADE")
            conn.exec_driver_sql("CREATE SCHEMA public")
    finally:
        engine.dispose()
    return _pg_database


@pytest.fixture(scope="session")
def moto_endpoint() -> Iterator[str]:
    """A real S3-compatible HTTP server (moto's server mode) on a free loopback port."""
    pytest.importorskip("s3fs", reason="S3 checkpoints need s3fs: pip install 'pbtune[s3]'")
    server_module = pytest.importorskip("moto.server", reason="the S3 tests need moto[server]")
    server = server_module.ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    yield f"http://{host}:{port}"
    server.stop()


@pytest.fixture
def s3_env(moto_endpoint: str, monkeypatch: pytest.MonkeyPatch) -> dict[str, str]:
    """Fake credentials in the environment (inherited by worker subprocesses)."""
    env = {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing", "AWS_DEFAULT_REGION": "us-east-1"}
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    return env


@pytest.fixture
def s3_bucket(moto_endpoint: str, s3_env: dict[str, str]) -> str:
    """A fresh bucket; returns its s3:// URL with a prefix."""
    import s3fs

    fs = s3fs.S3FileSystem(endpoint_url=moto_endpoint, skip_instance_cache=True)
    bucket = f"pbtune-{uuid.uuid4().hex[:10]}"
    fs.mkdir(bucket)
    return f"s3://{bucket}/checkpoints"
