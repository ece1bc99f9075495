"""Copy a member's checkpoint out of the run, with a JSON file of how it was made.

``export_member`` writes a folder::

    OUT/checkpoint.<ext>   (or OUT/checkpoint/ for a folder checkpoint), verified by its SHA-256
    OUT/member.json        hyperparameters, schedule, scores, model age, the run's config

The folder is assembled next to ``OUT`` and renamed into place, so ``OUT`` is either complete
or absent.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
import time
from dataclasses import dataclass
from typing import Any

from pbtune.checkpoints import CheckpointStore
from pbtune.errors import CheckpointError, InvalidConfigError
from pbtune.report._files import atomic_file
from pbtune.report.data import (
    RunData,
    ancestry_scores,
    member_schedule,
    model_age,
    resolve_member,
    schedule_records,
    score_curves,
)

__all__ = ["ExportResult", "export_member", "member_summary"]

MANIFEST = "member.json"


@dataclass(frozen=True)
class ExportResult:
    folder: str
    checkpoint: str  # path of the copied checkpoint inside ``folder``
    manifest: str  # path of member.json
    member_id: int


def member_summary(data: RunData, member_id: int) -> dict[str, Any]:
    """The JSON-ready account of one member: hyperparameters, schedule, scores, lineage.

    ``scores`` are the member's own (its steps); ``model_scores`` follow its model back through
    the donors it copied (steps are the model's age), the curve a replay reproduces.
    """
    member = data.member(member_id)
    own = score_curves(data.scores, data.events).get(member_id)
    along = ancestry_scores(data, member_id)
    return {
        "run": data.run,
        "member": member_id,
        "state": member.state.value,
        "step": member.step,
        "model_age": model_age(data.events, member_id, member.step),
        "metric": data.metric,
        "mode": data.mode,
        "score": member.score,
        "hparams": dict(member.hparams),
        "schedule": schedule_records(member_schedule(data, member_id)),
        "scores": [{"step": s, "score": v} for s, v in zip(own.steps, own.values, strict=True)] if own else [],
        "model_scores": [{"age": s, "score": v} for s, v in zip(along.steps, along.values, strict=True)],
        "lineage": [
            {"step": e.step, "kind": e.kind, "donor": e.donor_id, "donor_step": e.donor_step, "summary": e.summary}
            for e in data.events if e.member_id == member_id and e.kind in ("exploit", "explore", "resume", "fail")
        ],
        "config": dict(data.config),
    }


def export_member(
    data: RunData,
    member: int | str,
    out: str,
    *,
    checkpoints: CheckpointStore | str | None = None,
    overwrite: bool = False,
) -> ExportResult:
    """Copy ``member``'s (an id or ``"best"``) latest checkpoint to the folder ``out`` with ``member.json``.

    Args:
        checkpoints: the run's checkpoint store; defaults to the ``checkpoints`` URL in the run's
            config (a relative folder is relative to where the run was started).
        overwrite: replace an existing non-empty ``out``.

    Raises:
        InvalidConfigError: unknown member, or ``out`` exists and is not empty (without ``overwrite``).
        CheckpointError: the member has no checkpoint, or it is missing.
        CorruptCheckpointError: its bytes do not match the recorded checksum.

    Example::

        result = export_member(load_run(store, "exp"), "best", "best-model")
        print(result.checkpoint, result.manifest)
    """
    member_id = resolve_member(data, member)
    record = data.member(member_id)
    if record.checkpoint is None:
        raise CheckpointError(f"member {member_id} of run {data.run!r} has no checkpoint yet")
    out = os.path.abspath(out)
    if os.path.exists(out) and not (os.path.isdir(out) and not os.listdir(out)) and not overwrite:
        raise InvalidConfigError("out", "export", "a new or empty folder (or pass overwrite=True / --force)", out)
    if checkpoints is None:
        checkpoints = str(data.config.get("checkpoints") or "")
        if not checkpoints:
            raise InvalidConfigError("checkpoints", f"run {data.run!r}", "a checkpoint store URL", checkpoints)
    store = CheckpointStore(checkpoints) if isinstance(checkpoints, str) else checkpoints
    source = store.fetch(record.checkpoint, record.checkpoint_sha256 or "")
    parent = os.path.dirname(out)
    os.makedirs(parent, exist_ok=True)
    staging = tempfile.mkdtemp(prefix=f".{os.path.basename(out)}-", dir=parent)
    os.chmod(staging, 0o777 & ~_umask())  # mkdtemp makes 0700; give the usual permissions
    try:
        if os.path.isdir(source):
            name = "checkpoint"
            shutil.copytree(source, os.path.join(staging, name))
        else:
            name = "checkpoint" + "".join(os.path.splitext(source)[1:])
            shutil.copyfile(source, os.path.join(staging, name))
        summary = member_summary(data, member_id)
        summary["checkpoint"] = {
            "file": name, "key": record.checkpoint, "step": record.checkpoint_step,
            "sha256": record.checkpoint_sha256, "store": store.url,
        }
        summary["exported_at"] = time.time()
        with atomic_file(os.path.join(staging, MANIFEST), "w", encoding="utf-8") as handle:
            json.dump(summary, handle, indent=2, default=str)
        _move_into_place(staging, out)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return ExportResult(out, os.path.join(out, name), os.path.join(out, MANIFEST), member_id)


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _move_into_place(staging: str, out: str) -> None:
    """Rename the finished folder to ``out``; an old ``out`` is moved aside first and then removed."""
    if not os.path.exists(out):
        os.rename(staging, out)
        return
    aside = f"{out}.old-{os.getpid()}-{time.time_ns()}"
    os.rename(out, aside)
    try:
        os.rename(staging, out)
    except BaseException:
        os.rename(aside, out)
        raise
    if os.path.isdir(aside):
        shutil.rmtree(aside, ignore_errors=True)
    else:
        os.remove(aside)
