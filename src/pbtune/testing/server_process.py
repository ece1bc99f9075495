"""A `pbtune server` in a subprocess, for tests that kill and restart it."""

from __future__ import annotations

import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path

__all__ = ["start_server"]


def start_server(
    folder: Path, port: int, key_file: Path, storage: str, population: int, extra: Sequence[str] = ()
) -> subprocess.Popen[bytes]:
    """Start `pbtune server` on 127.0.0.1:``port`` (log in ``folder/server.log``); return once it answers.

    ``extra``: more command-line options (e.g. ``["--sync", "--lease-seconds", "2"]``)."""
    import httpx

    command = [
        sys.executable, "-m", "pbtune.cli", "server", "--port", str(port), "--auth-key-file", str(key_file),
        "--storage", storage, "--checkpoints", str(folder / "ckpts"), "--population", str(population),
        "--ready-interval", "2", "--upload-dir", str(folder / "uploads"), *extra,
    ]
    log = open(folder / "server.log", "ab")  # noqa: SIM115 - the process owns it
    server = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, cwd=folder)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        try:
            if httpx.get(f"http://127.0.0.1:{port}/health", timeout=1).status_code == 200:
                return server
        except httpx.TransportError:
            pass
        if server.poll() is not None:
            raise RuntimeError(f"the server exited: {(folder / 'server.log').read_text()}")
        time.sleep(0.05)
    raise RuntimeError("the server did not come up within 60 s")
