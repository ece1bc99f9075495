"""The client's small local pieces: its lease token, the identity file that lets a restarted
client rejoin its member, and checkpoint digests."""

from __future__ import annotations

import hashlib
import json
import os
import re
import socket
import uuid
from collections.abc import Mapping
from typing import Any

from pbtune.errors import InvalidConfigError

__all__ = ["new_token", "read_identity", "safe_name", "sha256_of", "write_identity"]


def new_token() -> str:
    host = re.sub(r"[^A-Za-z0-9_.-]", "-", socket.gethostname())[:40] or "host"
    return f"{host}:{os.getpid()}:{uuid.uuid4().hex[:10]}"


def safe_name(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]", "_", name)[:100] or "run"


def sha256_of(path: str) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while chunk := handle.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


def read_identity(path: str | None) -> dict[str, Any] | None:
    if not path or not os.path.exists(path):
        return None
    try:
        with open(path, encoding="utf-8") as handle:
            data = json.load(handle)
    except (OSError, ValueError) as exc:
        raise InvalidConfigError("identity_file", "PBTClient", f"a readable JSON file ({exc})", path) from None
    member_id = data.get("member_id") if isinstance(data, dict) else None
    if isinstance(member_id, bool) or not isinstance(member_id, int) or member_id < 0:
        raise InvalidConfigError("member_id", path, "an integer >= 0", member_id)
    token = data.get("token")
    run = data.get("run")
    return {"member_id": member_id, "token": token if isinstance(token, str) else None,
            "run": run if isinstance(run, str) else None}


def write_identity(path: str, data: Mapping[str, Any]) -> None:
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    temp = f"{path}.tmp-{uuid.uuid4().hex[:8]}"
    with open(temp, "w", encoding="utf-8") as handle:
        json.dump(dict(data), handle)
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(temp, path)
