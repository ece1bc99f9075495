"""The HTTP API: FastAPI routes over :class:`~pbtune.server.service.PopulationService`.

Every route except ``GET /health`` needs ``Authorization: Bearer <key>``; the key is checked
(in constant time) before the request body is read, so a request with a wrong or missing
key changes nothing. Bodies are JSON (checkpoint uploads are raw bytes); errors are JSON
``{"error": code, "detail": message}`` with a 4xx/5xx status.

Example:
    >>> import tempfile
    >>> from pbtune.server.uploads import UploadArea
    >>> from pbtune.server.service import PopulationService
    >>> d = tempfile.mkdtemp()
    >>> service = PopulationService({"name": "doc", "space": None, "storage": f"sqlite:///{d}/s.db",
    ...     "checkpoints": f"{d}/ck", "population": 2}, uploads=UploadArea(f"{d}/up", max_bytes=10))
    >>> app = create_app(service, auth_key="secret")
    >>> sorted(r.path for r in app.routes if r.path.startswith("/pop"))
    ['/population']
"""

from __future__ import annotations

import hmac
import logging
import math
import re
import time
from typing import Annotated, Any

from fastapi import Depends, FastAPI, Request
from fastapi import Path as FastAPIPath
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, JSONResponse, Response
from pydantic import BaseModel, Field
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from pbtune.errors import (
    CheckpointError,
    CorruptCheckpointError,
    IllegalTransitionError,
    InvalidConfigError,
    LeaseLostError,
    MemberFinishedError,
    NotFoundError,
    PBTuneError,
    StoreError,
)
from pbtune.server._service_rules import donor_to_wire
from pbtune.server._wire import (
    ExploitRequest,
    ExploreRequest,
    FailRequest,
    JoinRequest,
    ReportRequest,
    TokenRequest,
    member_to_wire,
)
from pbtune.server.errors import ServerError
from pbtune.server.service import PopulationService

__all__ = ["create_app", "MAX_JSON_BYTES", "MAX_JSON_DEPTH"]

log = logging.getLogger(__name__)

MAX_JSON_BYTES = 1 << 20
MAX_JSON_DEPTH = 32
_OPEN_PATHS = frozenset({"/health"})


def _error(status: int, code: str, detail: str, **extra: Any) -> JSONResponse:
    headers = {"WWW-Authenticate": "Bearer"} if status == 401 else None
    if "retry_after" in extra:  # HTTP's own form of the hint: whole seconds
        headers = {"Retry-After": str(max(1, math.ceil(extra["retry_after"])))}
    return JSONResponse({"error": code, "detail": detail, **extra}, status_code=status, headers=headers)


class AuthMiddleware:
    """Rejects requests without the shared key (401) and oversized JSON bodies (413) up front."""

    def __init__(self, app: ASGIApp, *, key: bytes, upload_path: str = "/uploads") -> None:
        self.app = app
        self._key = key
        self._upload_path = upload_path

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["path"] in _OPEN_PATHS:
            await self.app(scope, receive, send)
            return
        headers = dict(scope["headers"])
        scheme, _, given = headers.get(b"authorization", b"").partition(b" ")
        if scheme.lower() != b"bearer" or not hmac.compare_digest(given.strip(), self._key):
            reason = "missing" if b"authorization" not in headers else "wrong"
            response = _error(401, "unauthorized", f"{reason} auth key: send the header 'Authorization: Bearer <key>'")
            await response(scope, receive, send)
            return
        if scope["path"] == self._upload_path:  # uploads stream to disk under their own limit
            await self.app(scope, receive, send)
            return
        # JSON bodies are read here, counting as they stream in: a chunked body announces no
        # length, so the limit must hold while reading, not only on Content-Length.
        length = headers.get(b"content-length", b"")
        body = None if length.isdigit() and int(length) > MAX_JSON_BYTES else await _read_limited(receive)
        if body is None:
            refusal = _error(413, "too_large", f"request bodies are limited to {MAX_JSON_BYTES} bytes")
            await refusal(scope, receive, send)
            return
        if _nesting(body) > MAX_JSON_DEPTH:
            refusal = _error(400, "bad_json", f"the request body nests deeper than {MAX_JSON_DEPTH} levels")
            await refusal(scope, receive, send)
            return
        await self.app(scope, _replay(body, receive), send)


_STRINGS = re.compile(rb'"[^"\\]*(?:\\.[^"\\]*)*"')  # JSON strings (unrolled: linear and fast)


def _nesting(body: bytes) -> int:
    """How deep the JSON arrays/objects of ``body`` nest (strings skipped). Deep bodies are refused
    before parsing: the parser, validation and the store all recurse."""
    if body.count(b"[") + body.count(b"{") <= MAX_JSON_DEPTH:
        return 0
    depth = deepest = 0
    for char in _STRINGS.sub(b"", body).translate(None, _NOT_BRACKETS):
        depth += 1 if char in b"[{" else -1
        if depth > deepest:
            deepest = depth
            if deepest > MAX_JSON_DEPTH:
                break  # deep enough to refuse: no need to read on
    return deepest


_NOT_BRACKETS = bytes(c for c in range(256) if c not in b"[]{}")


async def _read_limited(receive: Receive) -> bytes | None:
    """The whole request body, or None as soon as it exceeds :data:`MAX_JSON_BYTES`."""
    chunks: list[bytes] = []
    size = 0
    while True:
        message = await receive()
        if message["type"] != "http.request":  # the client went away: nothing to answer
            return b""
        chunk = message.get("body", b"")
        size += len(chunk)
        if size > MAX_JSON_BYTES:
            return None
        chunks.append(chunk)
        if not message.get("more_body", False):
            return b"".join(chunks)


def _replay(body: bytes, receive: Receive) -> Receive:
    sent = False

    async def replay() -> Message:
        nonlocal sent
        if not sent:
            sent = True
            return {"type": "http.request", "body": body, "more_body": False}
        return await receive()  # after the body: wait for a disconnect, as the server would

    return replay


def _install_error_handlers(app: FastAPI) -> None:
    def handler(status: int, code: str) -> Any:
        async def handle(_request: Request, exc: Exception) -> JSONResponse:
            return _error(status, code, str(exc))

        return handle

    async def server_error(_request: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, ServerError)
        return _error(exc.status, exc.code, str(exc), **exc.wire_extra())

    async def invalid_config(_request: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, InvalidConfigError)
        return _error(422, "invalid", str(exc), field=exc.field, where=exc.where, constraint=exc.constraint,
                      value=repr(exc.value)[:200])

    async def validation(_request: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, RequestValidationError)
        errors = exc.errors()
        if any(e.get("type") == "json_invalid" for e in errors):
            return _error(400, "bad_json", "the request body is not valid JSON")
        if any(tuple(e.get("loc", ())) == ("body",) and isinstance(e.get("input"), (bytes, str)) for e in errors):
            return _error(400, "bad_json", "the request body is not JSON (send Content-Type: application/json)")
        first = errors[0] if errors else {}
        where = ".".join(str(p) for p in first.get("loc", ()) if p != "body") or "body"
        detail = f"`{where}` of `request` must be valid: {first.get('msg', 'invalid')}"
        return _error(422, "invalid", detail, field=where, where="request", constraint=str(first.get("msg")),
                      value=repr(first.get("input"))[:200])

    async def http_error(_request: Request, exc: Exception) -> JSONResponse:
        # Starlette's own answers (no route, wrong method, a body it could not parse) in our shape
        assert isinstance(exc, StarletteHTTPException)
        if exc.status_code == 404:
            return _error(404, "not_found", "no such route: see GET /openapi.json")
        if exc.status_code == 405:
            return _error(405, "method_not_allowed", "this route does not take that method: see GET /openapi.json")
        if exc.status_code == 400:
            return _error(400, "bad_json", "the request body is not valid JSON")
        return _error(exc.status_code, "http_error", f"HTTP {exc.status_code}")

    async def store_unavailable(_request: Request, exc: Exception) -> JSONResponse:
        # the driver's text (SQL, parameters, host names) stays in the server log
        log.error("population store error: %s", exc)
        return _error(503, "store_unavailable", "the population store is unavailable; retry later")

    async def unexpected(_request: Request, exc: Exception) -> JSONResponse:
        log.exception("unexpected error in the pbtune server")
        return _error(500, "internal", f"internal server error: {type(exc).__name__}")

    app.add_exception_handler(ServerError, server_error)
    app.add_exception_handler(InvalidConfigError, invalid_config)
    app.add_exception_handler(RequestValidationError, validation)
    app.add_exception_handler(NotFoundError, handler(404, "not_found"))
    app.add_exception_handler(MemberFinishedError, handler(409, "member_finished"))
    app.add_exception_handler(IllegalTransitionError, handler(409, "illegal_transition"))
    app.add_exception_handler(LeaseLostError, handler(409, "lease_lost"))
    app.add_exception_handler(CorruptCheckpointError, handler(500, "corrupt_checkpoint"))
    app.add_exception_handler(CheckpointError, handler(422, "checkpoint_error"))
    app.add_exception_handler(StoreError, store_unavailable)
    app.add_exception_handler(StarletteHTTPException, http_error)
    app.add_exception_handler(PBTuneError, handler(409, "conflict"))
    app.add_exception_handler(Exception, unexpected)


class ErrorBody(BaseModel):
    """Every error answer (4xx and 5xx) has this shape."""

    error: str = Field(description="a stable code, e.g. invalid, lease_lost, not_found, too_large")
    detail: str = Field(description="a message for people")
    field: str | None = Field(default=None, description="for `invalid`: the field at fault")
    where: str | None = None
    constraint: str | None = None
    value: str | None = None
    retry_after: float | None = Field(default=None, description="for `generation_waiting` and"
                                      " `generation_deciding`: seconds to wait before sending the request again")
    waiting_for: list[int] | None = Field(default=None, description="for `generation_*`: the members waited for")
    step: int | None = Field(default=None, description="for `generation_*`: the step of the generation")


_ERROR_RESPONSES: dict[int | str, dict[str, Any]] = {
    "4XX": {"model": ErrorBody, "description": "refused; nothing was changed"},
    "5XX": {"model": ErrorBody, "description": "server or store failure (503: retry later)"},
}

_API_DESCRIPTION = (
    "Every route except GET /health needs the header `Authorization: Bearer <key>` (401 otherwise,"
    " checked before the body is read). JSON bodies are at most 1 MiB and 32 levels deep. Member"
    " requests carry the `token` their join answered: a token that does not hold the member's lease"
    " is refused (409 lease_lost). A report's `checkpoint` has exactly one of `upload` or `path`."
    " In a generational run (sync) should-exploit and report may answer 409 generation_waiting or"
    " generation_deciding: nothing was done; send the same request again after `retry_after` seconds."
    " Non-finite floats travel as the strings \"NaN\", \"Infinity\", \"-Infinity\"."
)


def _add_security_scheme(app: FastAPI) -> None:
    plain = app.openapi

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            schema = plain()
            schema.setdefault("components", {})["securitySchemes"] = {"bearer": {"type": "http", "scheme": "bearer"}}
            schema["security"] = [{"bearer": []}]
            schema["paths"].get("/health", {}).get("get", {})["security"] = []
            app.openapi_schema = schema
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]


def _member_path(
    member_id: Annotated[str, FastAPIPath(pattern=r"^(0|-?[1-9][0-9]{0,17})$",
                                          description="a member id: 0, 1, ... (no sign, point or leading zero)")],
) -> int:
    return int(member_id)


MemberId = Annotated[int, Depends(_member_path)]


def create_app(service: PopulationService, *, auth_key: str | bytes) -> FastAPI:
    """The FastAPI application serving ``service``; requests must carry ``auth_key``."""
    key = auth_key.encode() if isinstance(auth_key, str) else bytes(auth_key)
    if not key:
        raise InvalidConfigError("auth_key", "pbtune server", "a non-empty key", auth_key)
    app = FastAPI(title="pbtune server", version="1", description=_API_DESCRIPTION, docs_url=None, redoc_url=None,
                  openapi_url="/openapi.json", responses=_ERROR_RESPONSES)
    _add_security_scheme(app)
    _install_error_handlers(app)
    app.add_middleware(AuthMiddleware, key=key)
    started = time.time()

    @app.get("/health")
    def health() -> dict[str, Any]:
        return {"ok": True}

    @app.get("/info")
    def info() -> dict[str, Any]:
        return {**service.info(), "uptime_s": round(time.time() - started, 3)}

    @app.get("/population")
    def population() -> dict[str, Any]:
        return service.population_view()

    @app.post("/join")
    def join(body: JoinRequest) -> dict[str, Any]:
        record, token = service.join(body.member_id, body.token, body.space)
        assert service.config is not None
        return {"member": member_to_wire(record), "token": token, "lease_seconds": service.config.lease_seconds,
                "info": service.info()}

    @app.get("/members/{member_id}")
    def member(member_id: MemberId) -> dict[str, Any]:
        return {"member": member_to_wire(service.member(member_id))}

    @app.post("/members/{member_id}/heartbeat")
    def heartbeat(member_id: MemberId, body: TokenRequest) -> dict[str, Any]:
        return {"held": service.heartbeat(member_id, body.token)}

    @app.post("/members/{member_id}/report")
    def report(member_id: MemberId, body: ReportRequest) -> dict[str, Any]:
        record = service.report(member_id, body.token, body.step, body.metric, metrics=body.metrics,
                                checkpoint=body.checkpoint)
        return {"member": member_to_wire(record)}

    @app.post("/members/{member_id}/should-exploit")
    def should_exploit(member_id: MemberId, body: TokenRequest) -> dict[str, Any]:
        decided, record = service.should_exploit(member_id, body.token)
        return {"exploit": decided, "member": member_to_wire(record)}

    @app.post("/members/{member_id}/exploit")
    def exploit(member_id: MemberId, body: ExploitRequest) -> dict[str, Any]:
        donor, record = service.exploit(member_id, body.token, body.step, body.after_decision)
        return {"donor": donor_to_wire(donor), "member": member_to_wire(record)}

    @app.post("/members/{member_id}/explore")
    def explore(member_id: MemberId, body: ExploreRequest) -> dict[str, Any]:
        hparams, record = service.explore(member_id, body.token, body.from_hparams)
        return {"hparams": hparams, "member": member_to_wire(record)}

    @app.post("/members/{member_id}/finish")
    def finish(member_id: MemberId, body: TokenRequest) -> dict[str, Any]:
        return {"member": member_to_wire(service.finish(member_id, body.token))}

    @app.post("/members/{member_id}/fail")
    def fail(member_id: MemberId, body: FailRequest) -> dict[str, Any]:
        return {"member": member_to_wire(service.fail(member_id, body.token, body.error))}

    @app.get("/members/{member_id}/checkpoint")
    def checkpoint(member_id: MemberId) -> dict[str, Any]:
        found = service.checkpoint(member_id)
        return {"checkpoint": found}

    @app.get("/members/{member_id}/checkpoint/content")
    def checkpoint_content(member_id: MemberId, sha256: str | None = None) -> Response:
        found = service.checkpoint(member_id)
        if found is None:
            raise NotFoundError(f"member {member_id} has no checkpoint yet")
        if sha256 is not None and sha256 != found["sha256"]:
            raise ServerError(f"member {member_id}'s checkpoint changed since it was asked for; ask again",
                              status=409, code="checkpoint_changed")
        if found["is_dir"]:
            raise ServerError("this checkpoint is a folder: folders are served only on a shared filesystem",
                              status=409, code="checkpoint_is_folder")
        return FileResponse(found["path"], media_type="application/octet-stream",
                            headers={"X-Pbtune-Sha256": found["sha256"] or ""})

    @app.post("/uploads")
    async def upload(request: Request) -> dict[str, Any]:
        length = request.headers.get("content-length", "")
        staged = await service.uploads.receive(
            request.stream(), request.headers.get("x-pbtune-sha256", ""), request.headers.get("x-pbtune-suffix", ""),
            int(length) if length.isdigit() else None,
        )
        return {"upload": staged.upload_id, "size": staged.size, "sha256": staged.sha256}

    return app
