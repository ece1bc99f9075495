"""Fixtures for the server tests: a real PBTServer on 127.0.0.1 (in a thread), and clients."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from server_helpers import KEY

from pbtune.server.client import PBTClient
from pbtune.server.runner import PBTServer


@pytest.fixture
def start_server(tmp_path: Path) -> Iterator[Callable[..., PBTServer]]:
    """Start PBTServers on free ports; all are stopped after the test."""
    servers: list[PBTServer] = []

    def start(**kwargs: Any) -> PBTServer:
        settings: dict[str, Any] = dict(
            port=0, auth_key=KEY, upload_dir=str(tmp_path / f"uploads-{len(servers)}"),
        )
        if "config" not in kwargs:  # a named run: a restarted server continues it
            settings.update(storage=f"sqlite:///{tmp_path}/pbt.db", checkpoints=str(tmp_path / "ckpts"), run="pbt")
        settings.update(kwargs)
        server = PBTServer(**settings).start()
        servers.append(server)
        return server

    yield start
    for server in servers:
        server.stop()


@pytest.fixture
def connect(tmp_path: Path) -> Iterator[Callable[..., PBTClient]]:
    """Make PBTClients (closed after the test)."""
    clients: list[PBTClient] = []

    def make(server: PBTServer, config_path: str | None = None, **kwargs: Any) -> PBTClient:
        kwargs.setdefault("cache_dir", str(tmp_path / f"cache-{len(clients)}"))
        kwargs.setdefault("retry_seconds", 5.0)
        client = PBTClient(server.url, None, KEY, config_path, **kwargs)
        clients.append(client)
        return client

    yield make
    for client in clients:
        client.close()
