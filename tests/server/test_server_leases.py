"""Issue 14 item 3: every write and decision checks the lease; a rejoin gets a fresh token."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from server_helpers import KEY

from pbtune.config import RunConfig
from pbtune.server.runner import PBTServer
from pbtune.store import SQLStore

LEASE = 0.4


@pytest.fixture
def served(tmp_path: Path) -> Iterator[tuple[PBTServer, httpx.Client]]:
    config = RunConfig(name="lease", space={"lr": {"type": "float", "low": 1e-3, "high": 1.0, "log": True}},
                       population=2, ready={"interval": 1}, lease_seconds=LEASE,
                       storage=f"sqlite:///{tmp_path}/lease.db", checkpoints=str(tmp_path / "ckpts"))
    server = PBTServer(0, KEY, config=config, upload_dir=str(tmp_path / "uploads")).start()
    with httpx.Client(base_url=server.url, headers={"Authorization": f"Bearer {KEY}"}, timeout=10) as http:
        _join(http, member_id=1)  # reserved by id (no lease): free joins below all get member 0
        yield server, http
    server.stop()


def _history(server: PBTServer) -> tuple[Any, ...]:
    store = SQLStore(server.template["storage"])
    try:
        run = server.template["name"]
        return store.list_members(run), store.scores(run), store.events(run)
    finally:
        store.close()


def _join(http: httpx.Client, **body: Any) -> dict[str, Any]:
    answer = http.post("/join", json=body)
    assert answer.status_code == 200, answer.text
    return answer.json()  # type: ignore[no-any-return]


STALE_REQUESTS = [
    ("report", {"metric": 0.9, "step": 2}),
    ("should-exploit", {}),
    ("exploit", {"step": 1, "after_decision": True}),
    ("explore", {}),
    ("finish", {}),
]


def test_a_client_that_lost_its_lease_can_neither_write_nor_decide(served: tuple[PBTServer, httpx.Client]) -> None:
    server, http = served
    _join(http, token="old-client")
    assert http.post("/members/0/report", json={"token": "old-client", "metric": 0.1, "step": 1}).status_code == 200
    time.sleep(LEASE * 2.5)  # the old client stopped heartbeating
    heir = _join(http, token="new-client")
    assert heir["member"]["member_id"] == 0 and heir["token"] == "new-client"
    before = _history(server)
    for action, body in STALE_REQUESTS:
        for token in ("old-client", None):  # the old token, and no token at all
            answer = http.post(f"/members/0/{action}", json={"token": token, **body})
            assert answer.status_code == 409, (action, token, answer.text)
            assert answer.json()["error"] == "lease_lost", (action, answer.text)
    assert _history(server) == before  # nothing changed, the new owner's lr included
    answer = http.post("/members/0/explore", json={"token": "new-client"})
    assert answer.status_code == 200, answer.text


@pytest.mark.parametrize("token", ["rejoiner", None])
def test_rejoining_a_dead_clients_member_gets_a_fresh_token(
    served: tuple[PBTServer, httpx.Client], token: str | None
) -> None:
    server, http = served
    _join(http, token="dead-client")
    assert http.post("/members/0/report", json={"token": "dead-client", "metric": 0.1, "step": 1}).status_code == 200
    time.sleep(LEASE * 2.5)
    rejoined = _join(http, member_id=0, token=token)
    fresh = rejoined["token"]
    assert fresh not in (None, "dead-client")
    if token is not None:
        assert fresh == token
    assert rejoined["member"]["client"] == fresh
    # the dead client comes back: it is refused, so step 2 is held once, by the new owner
    stale = http.post("/members/0/report", json={"token": "dead-client", "metric": 0.5, "step": 2})
    assert stale.status_code == 409 and stale.json()["error"] == "lease_lost"
    assert http.post("/members/0/report", json={"token": fresh, "metric": 0.7, "step": 2}).status_code == 200
    _, all_scores, events = _history(server)
    scores = [s for s in all_scores if s.member_id == 0]
    events = [e for e in events if e.member_id == 0]
    assert [(s.step, s.score) for s in scores] == [(1, 0.1), (2, 0.7)]
    assert events[-1].kind == "resume"


def test_a_restarted_client_with_its_own_token_keeps_its_lease(served: tuple[PBTServer, httpx.Client]) -> None:
    server, http = served
    _join(http, token="me")
    again = _join(http, member_id=0, token="me")
    assert again["token"] == "me"
    assert http.post("/members/0/report", json={"token": "me", "metric": 0.3, "step": 1}).status_code == 200
