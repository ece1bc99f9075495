"""Bad requests get the right 4xx, the server stays up, and the store does not change."""

from __future__ import annotations

import hashlib
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from server_helpers import KEY

from pbtune.config import RunConfig
from pbtune.server.runner import PBTServer
from pbtune.store import SQLStore


def _config(tmp_path: Path) -> RunConfig:
    return RunConfig(name="rej", space={"lr": {"type": "float", "low": 1e-3, "high": 1.0, "log": True}},
                     population=2, ready={"interval": 1}, storage=f"sqlite:///{tmp_path}/rej.db",
                     checkpoints=str(tmp_path / "ckpts"))


@pytest.fixture(scope="module")
def module_tmp(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("rejects")


@pytest.fixture(scope="module")
def served(module_tmp: Path) -> Iterator[tuple[PBTServer, httpx.Client]]:
    """One server for every case (each case checks the store before and after itself)."""
    shared = module_tmp / "shared"
    shared.mkdir()
    server = PBTServer(0, KEY, config=_config(module_tmp), shared_roots=(str(shared),), max_upload_bytes=1024,
                       upload_dir=str(module_tmp / "uploads")).start()
    with httpx.Client(base_url=server.url, headers={"Authorization": f"Bearer {KEY}"}, timeout=10) as http:
        # one committed report, so "unchanged" compares against a store with content
        (shared / "w0.bin").write_bytes(b"w0")
        assert http.post("/join", json={"member_id": 0}).status_code == 200
        ok = http.post("/members/0/report", json={"metric": 0.5, "checkpoint": {"path": str(shared / "w0.bin")}})
        assert ok.status_code == 200, ok.text
        yield server, http
    server.stop()


def _snapshot(server: PBTServer, tmp_path: Path) -> tuple[Any, ...]:
    store = SQLStore(server.template["storage"])
    try:
        run = server.template["name"]
        files = sorted(str(p.relative_to(tmp_path)) for p in tmp_path.rglob("*") if p.is_file()
                       and "cache" not in p.parts)
        return store.list_members(run), store.scores(run), store.events(run), files
    finally:
        store.close()


def _still_up(server: PBTServer) -> None:
    assert httpx.get(f"{server.url}/health", timeout=5).json() == {"ok": True}


BAD_REQUESTS: dict[str, tuple[dict[str, Any], int, str]] = {
    "missing key": (dict(method="POST", url="/members/0/report", json={"metric": 9.0}, auth=None), 401, "unauthorized"),
    "wrong key": (dict(method="POST", url="/members/0/report", json={"metric": 9.0}, auth="Bearer nope"),
                  401, "unauthorized"),
    "key of the wrong length": (dict(method="POST", url="/members/0/report", json={"metric": 9.0},
                                     auth=f"Bearer {KEY}x"), 401, "unauthorized"),
    "wrong scheme": (dict(method="POST", url="/members/0/report", json={"metric": 9.0}, auth=f"Basic {KEY}"),
                     401, "unauthorized"),
    "wrong key reading the population": (dict(method="GET", url="/population", auth="Bearer nope"), 401,
                                         "unauthorized"),
    "wrong key with malformed json": (dict(method="POST", url="/members/0/report", content=b"{not json",
                                           auth="Bearer nope"), 401, "unauthorized"),
    "malformed json": (dict(method="POST", url="/members/0/report", content=b"{not json",
                            headers={"Content-Type": "application/json"}), 400, "bad_json"),
    "malformed json without a content type": (dict(method="POST", url="/members/0/report", content=b"{not json"),
                                              400, "bad_json"),
    "json that is not an object": (dict(method="POST", url="/members/0/report", json=[1, 2]), 422, "invalid"),
    "metric not a number": (dict(method="POST", url="/members/0/report", json={"metric": "fast"}), 422, "invalid"),
    "metric a boolean": (dict(method="POST", url="/members/0/report", json={"metric": True}), 422, "invalid"),
    "unknown field": (dict(method="POST", url="/members/0/report", json={"metric": 1.0, "stpe": 3}), 422,
                      "invalid"),
    "unknown member": (dict(method="POST", url="/members/7/report", json={"metric": 1.0}), 404, "not_found"),
    "negative member": (dict(method="POST", url="/members/-1/report", json={"metric": 1.0}), 404, "not_found"),
    "member id not a number": (dict(method="GET", url="/members/abc"), 422, "invalid"),
    "join unknown member": (dict(method="POST", url="/join", json={"member_id": 2}), 404, "not_found"),
    "relative shared path": (dict(method="POST", url="/members/0/report",
                                  json={"metric": 1.0, "checkpoint": {"path": "../../etc/passwd"}}), 400, "bad_name"),
    "absolute path outside the shared roots": (dict(method="POST", url="/members/0/report",
                                                    json={"metric": 1.0, "checkpoint": {"path": "/etc/passwd"}}),
                                               403, "path_not_allowed"),
    "upload id with a path": (dict(method="POST", url="/members/0/report",
                                   json={"metric": 1.0, "checkpoint": {"upload": "../../etc/passwd"}}), 400,
                              "bad_name"),
    "unknown upload id": (dict(method="POST", url="/members/0/report",
                               json={"metric": 1.0, "checkpoint": {"upload": "0" * 32}}), 404, "upload_not_found"),
    "both checkpoint kinds": (dict(method="POST", url="/members/0/report",
                                   json={"metric": 1.0, "checkpoint": {"upload": "0" * 32, "path": "/x"}}), 422,
                              "invalid"),
    "oversized json body": (dict(method="POST", url="/members/0/report",
                                 content=b'{"metric": 1.0, "metrics": {"x": "' + b"a" * (2 << 20) + b'"}}'),
                            413, "too_large"),
    # issue 14 item 8: a chunked body announces no length; it was read whole and stored
    "oversized chunked json body": (dict(method="POST", url="/members/0/report",
                                         content=iter([b'{"metric": 1.0, "metrics": {"x": "'] + [b"a" * 65536] * 40
                                                      + [b'"}}']),
                                         headers={"Content-Type": "application/json"}), 413, "too_large"),
    "oversized upload": (dict(method="POST", url="/uploads", content=b"x" * 4096,
                              headers={"X-Pbtune-Sha256": hashlib.sha256(b"x" * 4096).hexdigest()}), 413, "too_large"),
    "oversized upload without a length": (dict(method="POST", url="/uploads", content=iter([b"x" * 700] * 3),
                                               headers={"X-Pbtune-Sha256": "0" * 64}), 413, "too_large"),
    "upload with a path as suffix": (dict(method="POST", url="/uploads", content=b"w",
                                          headers={"X-Pbtune-Sha256": hashlib.sha256(b"w").hexdigest(),
                                                   "X-Pbtune-Suffix": "/../../evil"}), 400, "bad_name"),
    "upload with a wrong checksum": (dict(method="POST", url="/uploads", content=b"w",
                                          headers={"X-Pbtune-Sha256": hashlib.sha256(b"v").hexdigest()}), 400,
                                     "checksum_mismatch"),
    "upload without a checksum": (dict(method="POST", url="/uploads", content=b"w"), 400, "bad_checksum"),
    # issue 14 item 7: each of these answered 500 (or was taken)
    "integer metric beyond the float range": (dict(method="POST", url="/members/0/report",
                                                   content=b'{"metric": 1' + b"0" * 400 + b"}",
                                                   headers={"Content-Type": "application/json"}), 422, "invalid"),
    "step beyond 2**63": (dict(method="POST", url="/members/0/report", json={"metric": 1.0, "step": 2**63}),
                          422, "invalid"),
    "step beyond the 32-bit column": (dict(method="POST", url="/members/0/report",
                                           json={"metric": 1.0, "step": 2**31 - 1}), 422, "invalid"),
    "lone surrogate in a space name": (dict(method="POST", url="/join", content=b'{"member_id": 1, "space": '
                                            b'{"\\ud800": {"type": "float", "low": 0, "high": 1}}}',
                                            headers={"Content-Type": "application/json"}), 422, "invalid"),
    "lone surrogate in a metrics key": (dict(method="POST", url="/members/0/report",
                                             content=b'{"metric": 1.0, "metrics": {"\\udfff": 1}}',
                                             headers={"Content-Type": "application/json"}), 422, "invalid"),
    "step going backwards": (dict(method="POST", url="/members/0/report", json={"metric": 1.0, "step": 0}),
                             409, "step_not_increasing"),
    "a second score for the last step": (dict(method="POST", url="/members/0/report",
                                              json={"metric": 2.0, "step": 1}), 409, "step_not_increasing"),
    # issue 14 item 9: one error shape, strict types
    "json nested too deep": (dict(method="POST", url="/members/0/report", content=b"[" * 100000 + b"]" * 100000,
                                  headers={"Content-Type": "application/json"}), 400, "bad_json"),
    "metrics nested too deep": (dict(method="POST", url="/members/0/report",
                                     content=b'{"metric": 1.0, "metrics": {"x": ' + b"[" * 900 + b"]" * 900 + b"}}",
                                     headers={"Content-Type": "application/json"}), 400, "bad_json"),
    "truncated json": (dict(method="POST", url="/members/0/report", content=b'{"metric": ',
                            headers={"Content-Type": "application/json"}), 400, "bad_json"),
    "unknown route": (dict(method="GET", url="/nope"), 404, "not_found"),
    "unknown route under a member": (dict(method="POST", url="/members/0/teleport", json={}), 404, "not_found"),
    "wrong method": (dict(method="DELETE", url="/population"), 405, "method_not_allowed"),
    "wrong method on a member route": (dict(method="GET", url="/members/0/report"), 405, "method_not_allowed"),
    "boolean member id": (dict(method="POST", url="/join", json={"member_id": True}), 422, "invalid"),
    "member id as a string": (dict(method="POST", url="/join", json={"member_id": "1"}), 422, "invalid"),
    "step as a float": (dict(method="POST", url="/members/0/report", json={"metric": 1.0, "step": 7.0}), 422,
                        "invalid"),
    "after_decision as a number": (dict(method="POST", url="/members/0/exploit", json={"after_decision": 1}), 422,
                                   "invalid"),
    "member id with a decimal point": (dict(method="GET", url="/members/1.0"), 422, "invalid"),
    "member id minus zero": (dict(method="GET", url="/members/-0"), 422, "invalid"),
    "member id with a leading zero": (dict(method="POST", url="/members/01/report", json={"metric": 1.0}), 422,
                                      "invalid"),
    "member id with a plus sign": (dict(method="GET", url="/members/+1"), 422, "invalid"),
    "exploit without a decision": (dict(method="POST", url="/members/0/exploit", json={}), 409, "conflict"),
    "checkpoint of another version": (dict(method="GET", url="/members/0/checkpoint/content?sha256=abc"), 409,
                                      "checkpoint_changed"),
}


@pytest.mark.parametrize("case", sorted(BAD_REQUESTS))
def test_bad_request_is_refused_and_changes_nothing(
    case: str, served: tuple[PBTServer, httpx.Client], module_tmp: Path
) -> None:
    server, http = served
    spec, status, code = BAD_REQUESTS[case]
    spec = dict(spec)
    headers = dict(spec.pop("headers", {}))
    if "auth" in spec:
        auth = spec.pop("auth")
        headers["Authorization"] = auth if auth is not None else ""
    before = _snapshot(server, module_tmp)
    request = http.build_request(spec.pop("method"), spec.pop("url"), headers=headers, **spec)
    if headers.get("Authorization") == "":
        del request.headers["Authorization"]
    response = http.send(request)
    assert response.status_code == status, response.text
    assert response.json()["error"] == code
    assert response.json()["detail"]
    _still_up(server)
    assert _snapshot(server, module_tmp) == before


def test_symlink_out_of_a_shared_root_is_refused(served: tuple[PBTServer, httpx.Client], module_tmp: Path) -> None:
    server, http = served
    secret = module_tmp / "secret.txt"
    secret.write_text("not yours")
    link = module_tmp / "shared" / "link.txt"
    os.symlink(secret, link)
    before = _snapshot(server, module_tmp)
    response = http.post("/members/0/report", json={"metric": 1.0, "checkpoint": {"path": str(link)}})
    assert response.status_code == 403 and response.json()["error"] == "path_not_allowed"
    assert _snapshot(server, module_tmp) == before


def test_unauthorized_response_asks_for_a_bearer_token(served: tuple[PBTServer, httpx.Client]) -> None:
    server, _ = served
    response = httpx.get(f"{server.url}/population", timeout=5)
    assert response.status_code == 401
    assert response.headers["www-authenticate"] == "Bearer"


def test_good_requests_after_bad_ones_still_work(served: tuple[PBTServer, httpx.Client]) -> None:
    server, http = served
    http.post("/members/0/report", content=b"{broken")
    body = b"real weights"
    up = http.post("/uploads", content=body, headers={"X-Pbtune-Sha256": hashlib.sha256(body).hexdigest(),
                                                      "X-Pbtune-Suffix": ".pt"})
    assert up.status_code == 200, up.text
    ok = http.post("/members/0/report", json={"metric": "NaN", "checkpoint": {"upload": up.json()["upload"]}})
    assert ok.status_code == 200 and ok.json()["member"]["score"] == "NaN"
    content = http.get("/members/0/checkpoint/content")
    assert content.content == body
    assert content.headers["x-pbtune-sha256"] == hashlib.sha256(body).hexdigest()
    assert not any(Path(server.upload_dir).iterdir())  # the staged upload was used up


def test_stale_staged_uploads_are_swept(tmp_path: Path) -> None:
    import asyncio
    import time

    from pbtune.server.errors import ServerError
    from pbtune.server.uploads import UploadArea

    area = UploadArea(str(tmp_path), max_bytes=100, max_age=60)

    async def body() -> Any:
        yield b"abc"

    old = asyncio.run(area.receive(body(), hashlib.sha256(b"abc").hexdigest(), ".pt", 3))
    fresh = asyncio.run(area.receive(body(), hashlib.sha256(b"abc").hexdigest(), "", 3))
    os.utime(area.path(old.upload_id), (time.time() - 120, time.time() - 120))
    assert area.sweep() == 1
    assert os.path.exists(area.path(fresh.upload_id))
    with pytest.raises(ServerError, match="no staged upload"):
        area.path(old.upload_id)


def test_a_chunked_json_body_under_the_limit_is_taken(served: tuple[PBTServer, httpx.Client]) -> None:
    _, http = served
    parts = [b'{"metric": 0.25, ', b'"metrics": {"note": "', b"b" * 1000, b'"}}']
    answer = http.post("/members/0/report", content=iter(parts), headers={"Content-Type": "application/json"})
    assert answer.status_code == 200, answer.text
    assert answer.json()["member"]["score"] == 0.25


def test_store_failure_answers_503_without_the_drivers_text(tmp_path: Path) -> None:
    """The driver's message holds SQL and parameters: it goes to the server log, not the client."""
    from fastapi.testclient import TestClient

    from pbtune.errors import StoreError
    from pbtune.server.app import create_app
    from pbtune.server.service import PopulationService
    from pbtune.server.uploads import UploadArea

    service = PopulationService(_config(tmp_path).to_dict(), uploads=UploadArea(str(tmp_path / "up"), max_bytes=10))

    def broken(*_args: Any, **_kwargs: Any) -> Any:
        raise StoreError("population store postgresql://pbt@db.internal/prod failed: (psycopg.OperationalError)"
                         " [SQL: SELECT pbtune_members.secret FROM pbtune_members]")

    service.store.list_members = broken  # type: ignore[method-assign]
    client = TestClient(create_app(service, auth_key=KEY), headers={"Authorization": f"Bearer {KEY}"})
    answer = client.get("/population")
    assert answer.status_code == 503
    assert answer.json()["error"] == "store_unavailable"
    assert "SELECT" not in answer.text and "db.internal" not in answer.text and "psycopg" not in answer.text
    service.close()


def test_openapi_document_is_served_behind_the_key_and_states_the_rules(
    served: tuple[PBTServer, httpx.Client],
) -> None:
    server, http = served
    assert httpx.get(f"{server.url}/openapi.json", timeout=5).status_code == 401
    doc = http.get("/openapi.json").json()
    assert doc["components"]["securitySchemes"]["bearer"]["scheme"] == "bearer"
    assert "/members/{member_id}/report" in doc["paths"]
    text = str(doc)
    assert "lease_lost" in text and "exactly one of" in text
    report = doc["paths"]["/members/{member_id}/report"]["post"]
    assert "4XX" in report["responses"] and "422" not in report["responses"]  # our error shape, not FastAPI's
