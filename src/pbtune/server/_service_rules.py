"""Rules of the server's member protocol that need no state of the service: retried reports and
exploits, forward-only steps, the client's space, fresh lease tokens, the donor's wire form."""

from __future__ import annotations

import math
import os
import uuid
from collections.abc import Mapping
from typing import Any

from pbtune.config import RunConfig
from pbtune.member import Donor
from pbtune.server._wire import CheckpointSpec, float_to_wire
from pbtune.server.errors import ServerError
from pbtune.server.uploads import UploadArea
from pbtune.space import Space
from pbtune.store import PopulationStore
from pbtune.types import MemberRecord

__all__ = [
    "already_reported", "applied_exploit", "check_space", "check_step_increases", "checkpoint_source",
    "donor_to_wire", "fresh_token", "shared_path",
]


def already_reported(record: MemberRecord, step: int, metric: float, with_checkpoint: bool) -> bool:
    """True when ``record`` already holds exactly this report (its answer was lost; it is retried)."""
    if record.score_step != step or record.step != step or record.score is None:
        return False
    same = record.score == metric or (math.isnan(record.score) and math.isnan(metric))
    return same and (not with_checkpoint or record.checkpoint_step == step)


def applied_exploit(store: PopulationStore, record: MemberRecord, step: int | None) -> Donor | None:
    """The donor of the exploit ``record`` already holds at ``step`` (a retried exploit whose
    decision a server restart lost), or None."""
    if step is None or record.step != step or record.last_ready_step != step:
        return None
    events = store.events(record.run, record.member_id)
    last = events[-1] if events else None
    if last is None or last.kind != "exploit" or last.step != step or last.donor_id is None:
        return None
    donor_step = last.donor_step if last.donor_step is not None else step
    scores = [s.score for s in store.scores(record.run, last.donor_id) if s.step == donor_step]
    return Donor(last.donor_id, donor_step, scores[-1] if scores else math.nan, dict(last.new_hparams or {}))


def check_space(config: RunConfig, space: Mapping[str, Any]) -> None:
    """A joining client's space must equal the run's (409 ``space_mismatch`` names the differences)."""
    mine = config.space.to_config()
    theirs = Space(space).to_config()
    if mine == theirs:
        return
    differences = [
        f"{name}: run has {mine.get(name)}, client has {theirs.get(name)}"
        for name in sorted(set(mine) | set(theirs)) if mine.get(name) != theirs.get(name)
    ]
    raise ServerError(
        f"the client's space differs from the space of run {config.name!r}: " + "; ".join(differences),
        status=409, code="space_mismatch",
    )


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


def checkpoint_source(spec: CheckpointSpec | None, uploads: UploadArea, shared_roots: tuple[str, ...]) -> str | None:
    """The local path a report's checkpoint names: an upload, or a file under a shared root."""
    if spec is None:
        return None
    if (spec.upload is None) == (spec.path is None):
        raise ServerError("`checkpoint` must have exactly one of `upload` or `path`", status=422, code="invalid")
    if spec.upload is not None:
        return uploads.path(spec.upload)
    return shared_path(spec.path or "", shared_roots)


def shared_path(path: str, shared_roots: tuple[str, ...]) -> str:
    """``path`` resolved, if it lies inside a shared root.

    Raises:
        ServerError: 400 for a relative path or one with ``..``; 403 outside the shared roots.
    """
    if not shared_roots:
        raise ServerError("this server takes no shared-filesystem paths (start it with --shared-root DIR);"
                          " upload the checkpoint instead", status=403, code="path_not_allowed")
    if "\x00" in path or not os.path.isabs(path) or ".." in path.replace("\\", "/").split("/"):
        raise ServerError(f"checkpoint path {path[:200]!r} must be absolute and without '..'",
                          status=400, code="bad_name")
    real = os.path.realpath(path)
    for root in shared_roots:
        if real == root or real.startswith(root.rstrip(os.sep) + os.sep):
            return real
    raise ServerError(f"checkpoint path {path[:200]!r} is outside the shared roots {list(shared_roots)}",
                      status=403, code="path_not_allowed")
