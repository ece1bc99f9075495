"""Shared by the abuse suite: a served run with content, and what "the store did not change" means."""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

import httpx

from pbtune.config import RunConfig
from pbtune.server.runner import PBTServer
from pbtune.store import SQLStore

KEY = "abuse-key-0123456789"
RUN = "abuse"


def config(tmp_path: Path, storage: str | None = None) -> RunConfig:
    return RunConfig(name=RUN, space={"lr": {"type": "float", "low": 1e-3, "high": 1.0, "log": True},
                                      "act": {"type": "choice", "values": ["relu", "tanh"]}},
                     population=3, ready={"interval": 1}, storage=storage or f"sqlite:///{tmp_path}/abuse.db",
                     checkpoints=str(tmp_path / "ckpts"))


def serve(tmp_path: Path, storage: str | None = None) -> tuple[PBTServer, httpx.Client, str]:
    """A server whose run has content: member 0 joined by id (no lease) and reported with a
    checkpoint; member 1 leased to a client token. Returns the server, a keyed client and that token."""
    server = PBTServer(0, KEY, config=config(tmp_path, storage), max_upload_bytes=4096,
                       upload_dir=str(tmp_path / "uploads")).start()
    http = httpx.Client(base_url=server.url, headers={"Authorization": f"Bearer {KEY}"}, timeout=30)
    assert http.post("/join", json={"member_id": 0}).status_code == 200
    body = b"weights of member 0"
    up = http.post("/uploads", content=body, headers={"X-Pbtune-Sha256": hashlib.sha256(body).hexdigest()})
    assert up.status_code == 200, up.text
    ok = http.post("/members/0/report", json={"metric": 0.5, "checkpoint": {"upload": up.json()["upload"]}})
    assert ok.status_code == 200, ok.text
    joined = http.post("/join", json={"token": "abuse-client"})
    assert joined.status_code == 200 and joined.json()["member"]["member_id"] == 1, joined.text
    return server, http, "abuse-client"


def snapshot(server: PBTServer) -> tuple[Any, ...]:
    """Everything a request could change: members (versions included), scores, events, files."""
    store = SQLStore(server.template["storage"])
    try:
        members = tuple((m.member_id, m.version, m.step, m.score, dict(m.hparams), m.state, m.lease_owner,
                         m.checkpoint) for m in store.list_members(RUN))
        return members, store.scores(RUN), store.events(RUN), _files(Path(server.template["checkpoints"]))
    finally:
        store.close()


def _files(root: Path) -> tuple[tuple[str, str], ...]:
    if not root.exists():
        return ()
    return tuple(sorted((str(p.relative_to(root)), hashlib.sha256(p.read_bytes()).hexdigest())
                        for p in root.rglob("*") if p.is_file()))


def check_answer(status: int, body: bytes, what: str) -> None:
    """0 server errors, and every error in the one documented shape."""
    assert status < 500, f"{what}: HTTP {status} {body[:300]!r}"
    if status >= 400:
        import json

        parsed = json.loads(body)
        assert isinstance(parsed, dict) and isinstance(parsed.get("error"), str) and parsed.get("detail"), (
            f"{what}: error body not in the documented shape: {body[:300]!r}")
