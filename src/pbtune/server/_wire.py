"""What travels on the wire: JSON request models and the JSON form of records.

JSON has no NaN or infinity, and a NaN score is meaningful (it ranks worst), so non-finite
floats travel as the strings ``"NaN"``, ``"Infinity"`` and ``"-Infinity"``.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from typing import Annotated, Any

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, model_validator

from pbtune.types import MemberRecord

__all__ = [
    "PROTOCOL_VERSION",
    "MAX_STEP",
    "TOKEN_PATTERN",
    "float_to_wire",
    "float_from_wire",
    "member_to_wire",
    "JoinRequest",
    "TokenRequest",
    "ReportRequest",
    "ExploitRequest",
    "ExploreRequest",
    "FailRequest",
    "CheckpointSpec",
]

PROTOCOL_VERSION = 1
TOKEN_PATTERN = r"^[A-Za-z0-9_.:@-]{1,120}$"
_TOKEN_RE = re.compile(TOKEN_PATTERN)
_FLOAT_MAX = 1.7976931348623157e308
# Steps are 32-bit integers in the store (PostgreSQL INTEGER); one below the top leaves room for
# the step after it (a report without ``step`` is the last step + 1).
MAX_STEP = 2**31 - 2
_NON_FINITE = {"nan": math.nan, "infinity": math.inf, "inf": math.inf, "-infinity": -math.inf, "-inf": -math.inf}


def float_to_wire(value: float | None) -> float | str | None:
    """``nan`` -> ``"NaN"``, ``inf`` -> ``"Infinity"``; finite floats and None unchanged."""
    if value is None or math.isfinite(value):
        return value
    return "NaN" if math.isnan(value) else ("Infinity" if value > 0 else "-Infinity")


def float_from_wire(value: Any) -> float:
    """The inverse of :func:`float_to_wire`; rejects booleans and other strings."""
    if isinstance(value, bool):
        raise ValueError("a number, not a boolean")
    if isinstance(value, str):
        try:
            return _NON_FINITE[value.strip().lower()]
        except KeyError:
            raise ValueError("a number or one of 'NaN', 'Infinity', '-Infinity'") from None
    if isinstance(value, (int, float)):
        try:
            return float(value)
        except OverflowError:  # an integer beyond the float range
            raise ValueError(f"a number within +-{_FLOAT_MAX:.3g}") from None
    raise ValueError("a number")


def _metrics_from_wire(value: Any) -> Any:
    if isinstance(value, Mapping):
        return {k: float_from_wire(v) if isinstance(v, str) and v.strip().lower() in _NON_FINITE else v
                for k, v in value.items()}
    return value


def metrics_to_wire(metrics: Mapping[str, Any] | None) -> dict[str, Any] | None:
    if metrics is None:
        return None
    return {k: float_to_wire(v) if isinstance(v, float) else v for k, v in metrics.items()}


WireFloat = Annotated[float, BeforeValidator(float_from_wire)]


def _token(value: Any) -> Any:
    if value is not None and (not isinstance(value, str) or not _TOKEN_RE.match(value)):
        raise ValueError(f"a client token matching {TOKEN_PATTERN}")
    return value


_TOKEN_DOC = (
    "The client token: for a free-member join, the name the lease is taken under; for every member request,"
    " the token the join answered (null for a member joined by id without a lease). A request whose token"
    " does not hold the member's lease is refused with 409 lease_lost."
)
Token = Annotated[
    str | None, BeforeValidator(_token), Field(description=_TOKEN_DOC, json_schema_extra={"pattern": TOKEN_PATTERN})
]


def member_to_wire(record: MemberRecord, now: float | None = None) -> dict[str, Any]:
    """The JSON form of a member snapshot (what clients and ``GET /population`` see).

    ``gone``: its client's lease expired (``now``: the server's clock; None: not checked).
    """
    return {
        "member_id": record.member_id,
        "state": record.state.value,
        "gone": now is not None and record.is_gone(now),
        "step": record.step,
        "hparams": dict(record.hparams),
        "score": float_to_wire(record.score),
        "score_step": record.score_step,
        "checkpoint_step": record.checkpoint_step,
        "has_checkpoint": record.checkpoint is not None,
        "last_ready_step": record.last_ready_step,
        "client": record.lease_owner,
        "lease_expires": record.lease_expires,
        "error": record.error,
    }


def _utf8_only(value: Any) -> None:
    """Reject strings that cannot be written as UTF-8 (a JSON ``\\ud800`` decodes to a lone
    surrogate, which every later encode - the store, a file name, a log line - chokes on)."""
    if isinstance(value, str):
        try:
            value.encode("utf-8")
        except UnicodeEncodeError:
            raise ValueError("text without lone surrogates (valid UTF-8)") from None
    elif isinstance(value, Mapping):
        for key, item in value.items():
            _utf8_only(key)
            _utf8_only(item)
    elif isinstance(value, (list, tuple)):
        for item in value:
            _utf8_only(item)


class _Strict(BaseModel):
    # strict: `true` is not the integer 1, "3" is not a step (floats still take integers)
    model_config = ConfigDict(extra="forbid", strict=True)

    @model_validator(mode="before")
    @classmethod
    def _valid_text(cls, data: Any) -> Any:
        _utf8_only(data)
        return data


class JoinRequest(_Strict):
    """Join the population: as ``member_id`` (rejoin), or as any free member (``member_id`` null)."""

    member_id: int | None = Field(default=None, ge=0, description="rejoin this member; null: any free member")
    token: Token = None
    space: dict[str, Any] | None = Field(default=None, description="the client's search space (creates the run"
                                         " if the server has none; must equal the run's otherwise)")


class TokenRequest(_Strict):
    token: Token = None


class CheckpointSpec(_Strict):
    """Exactly one of: ``upload`` (an id from ``POST /uploads``) or ``path`` (on a shared filesystem).

    Both or neither is refused with 422 ``invalid``.
    """

    upload: str | None = Field(default=None, max_length=64, description="exactly one of upload or path")
    path: str | None = Field(default=None, max_length=4096, description="exactly one of upload or path: an"
                             " absolute path without '..' inside one of the server's shared roots")


class ReportRequest(_Strict):
    token: Token = None
    step: int | None = Field(default=None, ge=0, le=MAX_STEP)
    metric: WireFloat
    metrics: Annotated[dict[str, Any] | None, BeforeValidator(_metrics_from_wire)] = None
    checkpoint: CheckpointSpec | None = None


class ExploitRequest(_Strict):
    token: Token = None
    step: int | None = Field(default=None, ge=0, le=MAX_STEP)
    after_decision: bool = False


class ExploreRequest(_Strict):
    token: Token = None
    from_hparams: dict[str, Any] | None = None


class FailRequest(_Strict):
    """Mark the member failed: it leaves the population's generations (its state is final)."""

    token: Token = None
    error: str = Field(default="failed", max_length=20_000, description="what went wrong (a traceback, say)")
