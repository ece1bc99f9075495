"""Errors of the HTTP transport, and the table that maps them to and from wire error codes."""

from __future__ import annotations

import math
from typing import Any

from pbtune.errors import (
    CheckpointError,
    CorruptCheckpointError,
    IllegalTransitionError,
    InvalidConfigError,
    LeaseLostError,
    MemberFinishedError,
    NotFoundError,
    PBTuneError,
)

__all__ = [
    "ServerError",
    "AuthenticationError",
    "GENERATION_WAIT_CODES",
    "GenerationTimeoutError",
    "GenerationWaitError",
    "PopulationFullError",
    "ServerUnavailableError",
    "error_from_wire",
]

# 409 answers of a generational run: nothing was done; send the same request again later
GENERATION_WAIT_CODES = frozenset({"generation_waiting", "generation_deciding"})


class ServerError(PBTuneError):
    """The server answered with an error. ``status`` is the HTTP status, ``code`` the wire code."""

    def __init__(self, message: str, *, status: int = 500, code: str = "internal") -> None:
        super().__init__(message)
        self.status = status
        self.code = code

    def wire_extra(self) -> dict[str, Any]:
        """Fields the error answer carries besides ``error`` and ``detail``."""
        return {}


class AuthenticationError(ServerError):
    """The server rejected the auth key (HTTP 401)."""


class PopulationFullError(ServerError):
    """Every member is held by a live client or finished: no member id is free to join as."""


class GenerationWaitError(ServerError):
    """A generational (``sync``) run's member must wait for its generation; nothing was decided or
    recorded. Send the same request again after ``retry_after`` seconds.

    ``code`` is ``generation_waiting`` (should-exploit: ``waiting_for`` are behind ``step``) or
    ``generation_deciding`` (report: ``waiting_for`` have not decided at ``step`` yet).
    """

    def __init__(self, message: str, *, code: str, step: int, waiting_for: tuple[int, ...],
                 retry_after: float) -> None:
        super().__init__(message, status=409, code=code)
        self.step = step
        self.waiting_for = waiting_for
        self.retry_after = retry_after

    def wire_extra(self) -> dict[str, Any]:
        return {"step": self.step, "waiting_for": list(self.waiting_for), "retry_after": self.retry_after}


class GenerationTimeoutError(PBTuneError):
    """A client waited longer than its ``generation_timeout`` for its generation."""


class ServerUnavailableError(PBTuneError):
    """The server could not be reached for longer than the client's retry bound."""


# code -> exception class the client raises for it (anything else: ServerError)
_CLIENT_ERRORS: dict[str, type[Exception]] = {
    "member_finished": MemberFinishedError,
    "lease_lost": LeaseLostError,
    "illegal_transition": IllegalTransitionError,
    "not_found": NotFoundError,
    "checkpoint_error": CheckpointError,
    "corrupt_checkpoint": CorruptCheckpointError,
}


def error_from_wire(status: int, body: Any) -> Exception:
    """The exception a client raises for an error response (``body`` is its parsed JSON, or text)."""
    if not isinstance(body, dict):
        return ServerError(f"server answered HTTP {status}: {str(body)[:200]}", status=status)
    code = str(body.get("error", "internal"))
    detail = str(body.get("detail", f"HTTP {status}"))
    if code == "unauthorized":
        return AuthenticationError(f"{detail} (check the auth key)", status=status, code=code)
    if code == "population_full":
        return PopulationFullError(detail, status=status, code=code)
    if code in GENERATION_WAIT_CODES:
        return _generation_wait(detail, code, body)
    if code == "invalid" and "field" in body:
        return InvalidConfigError(str(body["field"]), str(body.get("where", "request")),
                                  str(body.get("constraint", "valid")), body.get("value"))
    cls = _CLIENT_ERRORS.get(code)
    if cls is not None:
        return cls(detail)
    return ServerError(detail, status=status, code=code)


def _generation_wait(detail: str, code: str, body: dict[str, Any]) -> GenerationWaitError:
    """The wait answer, read defensively (a proxy or an older server may leave fields out)."""
    try:
        retry_after = float(body.get("retry_after", 1.0))
    except (TypeError, ValueError):
        retry_after = 1.0
    retry_after = min(max(retry_after, 0.01), 60.0) if math.isfinite(retry_after) else 1.0
    waiting = body.get("waiting_for")
    waiting_for = tuple(int(m) for m in waiting if isinstance(m, int)) if isinstance(waiting, list) else ()
    step = body.get("step")
    return GenerationWaitError(detail, code=code, step=step if isinstance(step, int) else -1,
                               waiting_for=waiting_for, retry_after=retry_after)
