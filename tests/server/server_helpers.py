"""Shared by the server tests (imported as a top-level module, like tests/scaleout's helpers)."""

from __future__ import annotations

import socket

KEY = "test-key-0123456789"


def free_port() -> int:
    """A TCP port nothing listens on right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])
