"""The abuse suite: the server under malformed and random requests (issue 14, "keep it fixed")."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from abuse_helpers import serve

from pbtune.server.runner import PBTServer


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[PBTServer, httpx.Client, str]]:
    server, http, token = serve(Path(tmp_path_factory.mktemp("abuse")))
    yield server, http, token
    http.close()
    server.stop()
