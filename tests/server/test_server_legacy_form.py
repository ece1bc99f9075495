"""The server/client scripts of the older project run unchanged: ``PBTServer(port, key, maximize)``."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import httpx
import pytest
from server_helpers import KEY, free_port

from pbtune.server.runner import PBTServer


def _info(port: int) -> dict[str, object]:
    answer = httpx.get(f"http://127.0.0.1:{port}/info", headers={"Authorization": f"Bearer {KEY}"}, timeout=5)
    answer.raise_for_status()
    return dict(answer.json())


def _refused(port: int) -> bool:
    try:
        _info(port)
    except httpx.TransportError:
        return True
    return False


def test_three_positional_arguments_serve_at_construction_and_stop_ends_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    port = free_port()
    server = PBTServer(port, KEY, True)
    try:
        assert server.running
        assert _info(port)["run"] == "pbt"  # listening without serve() or start()
        assert server.start() is server  # start() on a serving server is a no-op
    finally:
        server.stop()
    assert not server.running and _refused(port)
    server.stop()  # twice is fine


def test_context_manager_stops_the_server(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    port = free_port()
    with PBTServer(port, KEY, False) as server:
        assert _info(port)["mode"] == "min"
        assert server.running
    assert _refused(port)


def test_serve_blocks_on_a_background_server_until_stopped(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    port = free_port()
    server = PBTServer(port, KEY, True)
    announced: list[str] = []
    blocker = threading.Thread(target=server.serve, kwargs={"announce": announced.append}, daemon=True)
    blocker.start()
    time.sleep(0.3)
    assert blocker.is_alive() and _info(port)["run"] == "pbt"
    server.stop()
    blocker.join(timeout=10)
    assert not blocker.is_alive() and announced == [f"http://127.0.0.1:{port}"] and _refused(port)


def test_background_false_only_constructs(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    port = free_port()
    server = PBTServer(port, KEY, True, background=False)
    assert not server.running and _refused(port)
    with server:
        assert _info(port)["run"] == "pbt"
    assert _refused(port)
