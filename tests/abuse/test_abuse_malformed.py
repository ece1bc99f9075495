"""A few hundred malformed requests (auth, encodings, sizes, nesting, path tricks, methods), sent
as raw bytes: 0 server errors, every error in the documented shape, and the store unchanged."""

from __future__ import annotations

import json
import socket
from collections.abc import Iterator
from typing import Any

import httpx
from abuse_helpers import KEY, check_answer, snapshot

from pbtune.server.app import MAX_JSON_BYTES, MAX_JSON_DEPTH
from pbtune.server.runner import PBTServer

AUTH = f"Bearer {KEY}"
MEMBER_ROUTES = ["report", "should-exploit", "exploit", "explore", "finish", "heartbeat"]
ROUTES = [("GET", "/info"), ("GET", "/population"), ("POST", "/join"), ("GET", "/members/0"),
          ("GET", "/members/0/checkpoint"), ("GET", "/members/0/checkpoint/content"), ("POST", "/uploads"),
          *[("POST", f"/members/0/{r}") for r in MEMBER_ROUTES], ("GET", "/openapi.json")]


def _request(method: str, path: str, body: bytes = b"", headers: dict[str, Any] | None = None,
             *, auth: str | bytes | None = AUTH, chunks: list[bytes] | None = None) -> bytes:
    lines = [f"{method} {path} HTTP/1.1".encode("latin-1"), b"Host: 127.0.0.1", b"Connection: close"]
    if auth is not None:
        lines.append(b"Authorization: " + (auth.encode("latin-1") if isinstance(auth, str) else auth))
    for name, value in (headers or {}).items():
        lines.append(f"{name}: ".encode("latin-1") + (value if isinstance(value, bytes) else str(value).encode()))
    if chunks is not None:
        lines.append(b"Transfer-Encoding: chunked")
        payload = b"".join(b"%x\r\n%s\r\n" % (len(c), c) for c in chunks) + b"0\r\n\r\n"
    else:
        if body or method in ("POST", "PUT", "PATCH"):
            lines.append(b"Content-Length: %d" % len(body))
        payload = body
    return b"\r\n".join(lines) + b"\r\n\r\n" + payload


def _send(server: PBTServer, raw: bytes) -> tuple[int, dict[str, str], bytes]:
    with socket.create_connection(("127.0.0.1", server.port), timeout=30) as sock:
        try:
            sock.sendall(raw)
        except (BrokenPipeError, ConnectionResetError):
            pass  # refused before reading it all (413): the answer is still there
        data = b""
        while True:
            try:
                chunk = sock.recv(65536)
            except ConnectionResetError:
                break
            if not chunk:
                break
            data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    status_line, *header_lines = head.decode("latin-1").split("\r\n")
    headers = {k.strip().lower(): v.strip() for k, _, v in (h.partition(":") for h in header_lines)}
    if headers.get("transfer-encoding") == "chunked":
        decoded, rest = b"", body
        while rest:
            size_line, _, rest = rest.partition(b"\r\n")
            size = int(size_line.split(b";")[0] or b"0", 16)
            if size == 0:
                break
            decoded, rest = decoded + rest[:size], rest[size + 2:]
        body = decoded
    return int(status_line.split()[1]), headers, body


def _json(value: Any) -> bytes:
    return json.dumps(value).encode()


def _cases() -> Iterator[tuple[str, bytes, bool]]:
    """(name, raw request, whether the answer comes from pbtune's app: framing errors come from
    the HTTP layer, which answers in its own words but must not fail either)."""
    ct = {"Content-Type": "application/json"}
    report = "/members/0/report"
    # -- auth: every route, every way of getting the key wrong
    wrong_auth: dict[str, str | bytes | None] = {
        "none": None, "empty": "", "scheme only": "Bearer", "scheme and space": "Bearer ", "wrong": "Bearer nope",
        "basic": f"Basic {KEY}", "key twice": f"Bearer {KEY} {KEY}", "key plus one": f"Bearer {KEY}x",
        "prefix of the key": f"Bearer {KEY[:-1]}", "nul in key": b"Bearer " + KEY.encode() + b"\x00",
        "latin-1 bytes": b"Bearer \xe9\xe8\xff", "long": "Bearer " + "k" * 6000, "token not key": "Bearer abuse-client",
    }
    for method, path in ROUTES:
        for label, auth in wrong_auth.items():
            framing_error = label == "nul in key"  # h11 refuses a NUL in a header before the app sees it
            yield f"auth {label}: {method} {path}", _request(method, path, b"{}", ct, auth=auth), not framing_error
    # -- encodings
    # (not here: a UTF-16 or BOM-prefixed body, and 1e999 (infinity), are valid JSON and taken)
    bodies: dict[str, bytes] = {
        "invalid utf-8": b'{"metric": 1.0, "metrics": {"x": "\xff\xfe"}}',
        "latin-1 text": '{"metric": 1.0, "metrics": {"caf\xe9": 1}}'.encode("latin-1"),
        "lone surrogate escape": b'{"metric": 1.0, "metrics": {"\\ud800": 1}}',
        "low surrogate escape": b'{"metric": 1.0, "metrics": {"x": "\\udc00"}}',
        "nul byte": b'{"metric": 1.0}\x00',
        "empty": b"",
        "whitespace": b"   \n",
        "null": b"null", "number": b"3", "string": b'"metric"', "array": b"[1.0]", "true": b"true",
        "truncated": b'{"metric": 1.', "trailing garbage": b'{"metric": 1.0} x', "two documents": b"{}{}",
        "single quotes": b"{'metric': 1.0}", "comment": b'{"metric": 1.0 /* c */}',
        "huge integer literal": b'{"metric": 1' + b"0" * 5000 + b"}",
        "metric null": b'{"metric": null}', "metric object": b'{"metric": {}}', "metric list": b'{"metric": [1]}',
        "metric bad string": b'{"metric": "NaNa"}', "metric bool": b'{"metric": false}',
        "step negative": b'{"metric": 1.0, "step": -1}', "step string": b'{"metric": 1.0, "step": "9"}',
        "step float": b'{"metric": 1.0, "step": 9.5}', "step bool": b'{"metric": 1.0, "step": true}',
        "step huge": b'{"metric": 1.0, "step": 99999999999999999999999999}',
        "step backwards": b'{"metric": 1.0, "step": 0}', "step repeated": b'{"metric": 7.0, "step": 1}',
        "unknown key": b'{"metric": 1.0, "admin": true}', "metrics not an object": b'{"metric": 1.0, "metrics": 4}',
        "checkpoint both": b'{"metric": 1.0, "checkpoint": {"upload": "a", "path": "/b"}}',
        "checkpoint neither": b'{"metric": 1.0, "checkpoint": {}}',
        "checkpoint traversal": b'{"metric": 1.0, "checkpoint": {"upload": "../../../etc/passwd"}}',
        "checkpoint abs path": b'{"metric": 1.0, "checkpoint": {"path": "/etc/passwd"}}',
        "checkpoint nul": b'{"metric": 1.0, "checkpoint": {"path": "/tmp/x\\u0000y"}}',
        "token with slash": b'{"metric": 1.0, "token": "a/b"}', "token huge": _json({"metric": 1, "token": "t" * 500}),
        "token not a string": b'{"metric": 1.0, "token": 5}',
        "token of member 1": b'{"metric": 1.0, "token": "abuse-client"}',
    }
    for label, body in bodies.items():
        yield f"body {label}", _request("POST", report, body, ct), True
        yield f"body {label} without a content type", _request("POST", report, body), True
    for label, content_type in {"text": "text/plain", "form": "application/x-www-form-urlencoded",
                                "multipart": "multipart/form-data; boundary=x", "garbage": "\x01\x02"}.items():
        yield f"content type {label}", _request("POST", report, b"metric=1", {"Content-Type": content_type}), True
    for route in ("/join", "/members/0/explore", "/members/0/exploit", "/members/1/heartbeat"):
        for label, body in {"bool id": b'{"member_id": true}', "string id": b'{"member_id": "0"}',
                            "float id": b'{"member_id": 0.0}', "negative id": b'{"member_id": -1}',
                            "huge id": b'{"member_id": 1e30}', "space not object": b'{"space": [1]}',
                            "space bad domain": b'{"member_id": 2, "space": {"lr": {"type": "float", "low": 1}}}',
                            "from_hparams list": b'{"from_hparams": [1]}', "after_decision int":
                            b'{"after_decision": 1}', "step str": b'{"step": "1"}'}.items():
            yield f"{route} {label}", _request("POST", route, body, ct), True
    # -- sizes
    over = b'{"metric": 1.0, "metrics": {"x": "' + b"a" * MAX_JSON_BYTES + b'"}}'
    yield "over the limit with a length", _request("POST", report, over, ct), True
    pieces = [over[i:i + 65536] for i in range(0, len(over), 65536)]
    yield "over the limit chunked", _request("POST", report, headers=ct, chunks=pieces), True
    tiny = [b'{"metric": 1.0, "metrics": {"x": "'] + [b"b" * 4096] * 300
    yield "over the limit in tiny chunks", _request("POST", report, headers=ct, chunks=tiny), True
    yield "a length far beyond the limit", _request("POST", report, b"{}", {**ct, "Content-Length": 10**12}), False
    yield "upload over its limit", _request("POST", "/uploads", b"x" * 5000, {"X-Pbtune-Sha256": "0" * 64}), True
    yield "upload over its limit chunked", _request("POST", "/uploads", headers={"X-Pbtune-Sha256": "0" * 64},
                                                    chunks=[b"x" * 1000] * 6), True
    yield "a huge header", _request("GET", "/info", headers={"X-Junk": "j" * 200_000}), False
    yield "many headers", _request("GET", "/info", headers={f"X-H{i}": "v" for i in range(2000)}), False
    # -- nesting
    for depth in (MAX_JSON_DEPTH - 1, MAX_JSON_DEPTH, MAX_JSON_DEPTH + 1, 200, 5000, 200_000):
        nested = b"[" * depth + b"]" * depth
        yield f"metrics nested {depth} deep", _request(
            "POST", report, b'{"metric": 1.0, "metrics": {"x": ' + nested + b"}}", ct), True
        objects = b'{"a": ' * depth + b"1" + b"}" * depth
        yield f"space nested {depth} deep", _request("POST", "/join", b'{"member_id": 2, "space": ' + objects + b"}",
                                                     ct), True
        yield f"brackets {depth} deep inside a string", _request(
            "POST", "/members/2/report", b'{"metric": 1.0, "token": "' + b"[" * depth + b'"}', ct), True
    yield "unbalanced brackets", _request("POST", report, b"]]]]" * 40, ct), True
    # -- path tricks
    for path in ["/members/../population", "/members/%2e%2e/population", "//join", "/members//report",
                 "/members/0/report/", "/members/0%00/report", "/members/00/report", "/members/1e0/report",
                 "/members/0x1/report", "/members/%D9%A3/report", "/members/99999999999999999999999/report",
                 "/members/-0/report", "/members/+0/report", "/members/%200/report", "/members/0%20/report",
                 "/MEMBERS/0/report", "/members/0/REPORT", "/members/0;x=1/report",
                 "/health/../population", "/health/%2e%2e/population", "/health%00", "/" + "a" * 10000,
                 "/members/" + "9" * 5000, "/uploads/../members/0/report", "/members/0/checkpoint/content?sha256=..",
                 "/members/0/checkpoint/content?sha256=" + "%00" * 10, "/members/0/checkpoint/content?sha256=\xe9",
                 "/%ff%fe", "/members/\u00e9/report", "/openapi.json/../population", "/docs", "/redoc"]:
        method = "GET" if "checkpoint" in path or path in ("/docs", "/redoc") else "POST"
        ascii_path = path.isascii()  # raw non-ASCII bytes in the request line: h11 answers, not the app
        raw = _request(method, path if ascii_path else path.encode("utf-8").decode("latin-1"), b'{"metric": 3.0}', ct)
        yield f"path {path[:60]}", raw, ascii_path
    # -- methods
    for method, path in ROUTES:
        for other in ("GET", "POST", "PUT", "PATCH", "DELETE", "OPTIONS", "TRACE"):
            if other != method:
                yield f"method {other} {path}", _request(other, path, b"{}", ct), True
    # -- broken framing (answered by the HTTP layer)
    yield "no http version", b"GET /info\r\n\r\n", False
    yield "garbage request line", b"\x16\x03\x01\x00\xa5\x01\x00\x00\xa1\x03\x03" + b"\x00" * 40, False
    yield "bad chunk size", _request("POST", report, headers=ct, chunks=[]).replace(b"0\r\n\r\n", b"zz\r\n\r\n"), False


CASES = list(_cases())


def test_there_are_a_few_hundred_cases() -> None:
    assert len(CASES) >= 300, len(CASES)


def test_malformed_requests_get_4xx_in_one_shape_and_change_nothing(
    served: tuple[PBTServer, httpx.Client, str],
) -> None:
    server, http, _ = served
    before = snapshot(server)
    failures: list[str] = []
    for name, raw, from_app in CASES:
        try:
            status, headers, body = _send(server, raw)
        except (OSError, ValueError, IndexError) as exc:  # the HTTP layer may just close the connection
            if from_app:
                failures.append(f"{name}: no answer ({exc!r})")
            continue
        try:
            if from_app and status >= 400:
                check_answer(status, body, name)
            else:
                assert status < 500, f"{name}: HTTP {status} {body[:200]!r}"
            if status < 300 and from_app and not name.startswith("method"):  # (3xx: a trailing-slash redirect)
                failures.append(f"{name}: accepted with HTTP {status}: {body[:200]!r}")
        except (AssertionError, json.JSONDecodeError) as exc:
            failures.append(f"{name}: HTTP {status} {body[:120]!r}: {exc}")
        assert http.get("/info").status_code == 200, f"the server stopped answering after {name}"
    assert not failures, "\n".join(failures)
    assert snapshot(server) == before  # no malformed request changed the store or the checkpoints
