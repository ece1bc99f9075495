"""Errors of the HTTP transport, and the table that maps them to and from wire error codes."""

from __future__ import annotations

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
    "PopulationFullError",
    "ServerUnavailableError",
    "error_from_wire",
]


class ServerError(PBTuneError):
    """The server answered with an error. ``status`` is the HTTP status, ``code`` the wire code."""

    def __init__(self, message: str, *, status: int = 500, code: str = "internal") -> None:
        super().__init__(message)
        self.status = status
        self.code = code


class AuthenticationError(ServerError):
    """The server rejected the auth key (HTTP 401)."""


class PopulationFullError(ServerError):
    """Every member is held by a live client or finished: no member id is free to join as."""


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
    if code == "invalid" and "field" in body:
        return InvalidConfigError(str(body["field"]), str(body.get("where", "request")),
                                  str(body.get("constraint", "valid")), body.get("value"))
    cls = _CLIENT_ERRORS.get(code)
    if cls is not None:
        return cls(detail)
    return ServerError(detail, status=status, code=code)
