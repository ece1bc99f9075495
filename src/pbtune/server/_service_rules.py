"""Rules of the server's member protocol that need no state: retried reports, forward-only
steps, fresh lease tokens, the donor's wire form."""

from __future__ import annotations

import math
import uuid
from typing import Any

from pbtune.member import Donor
from pbtune.server._wire import float_to_wire
from pbtune.server.errors import ServerError
from pbtune.types import MemberRecord

__all__ = ["already_reported", "check_step_increases", "donor_to_wire", "fresh_token"]


def already_reported(record: MemberRecord, step: int, metric: float, with_checkpoint: bool) -> bool:
    """True when ``record`` already holds exactly this report (its answer was lost; it is retried)."""
    if record.score_step != step or record.step != step or record.score is None:
        return False
    same = record.score == metric or (math.isnan(record.score) and math.isnan(metric))
    return same and (not with_checkpoint or record.checkpoint_step == step)


def check_step_increases(record: MemberRecord, step: int) -> None:
    """Steps only go forward: a report must be past the member's step (or at it, when that step
    has no score yet, e.g. step 0 or a step rolled back to after a takeover)."""
    if step < record.step or (step == record.step and record.score_step == step):
        raise ServerError(
            f"`step` of the report must be greater than member {record.member_id}'s last step {record.step}"
            f" (steps only go forward); got {step}",
            status=409, code="step_not_increasing",
        )


def fresh_token() -> str:
    return f"pbtune-{uuid.uuid4().hex}"


def donor_to_wire(donor: Donor | None) -> dict[str, Any] | None:
    if donor is None:
        return None
    return {"member_id": donor.member_id, "step": donor.step, "score": float_to_wire(donor.score),
            "hparams": dict(donor.hparams)}
