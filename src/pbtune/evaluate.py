"""Evaluate saved models on held-out data: ``pbtune run CONFIG --mode test``.

A trainable that defines ``evaluate() -> dict`` (test metrics, e.g. ``{"test_accuracy": 0.98}``;
every example under ``examples/`` does) can be tested after training: the best member of a run
(or every member, or one), rebuilt from its checkpoint with its hyperparameters, in this
process. PBT itself never calls ``evaluate``: scores come from ``step``.

Example::

    for row in evaluate_run(pbtune.load_config("fc_PBT.json"), "best"):
        print(row.member_id, row.score, row.metrics)
"""

from __future__ import annotations

import logging
import math
import os
import sys
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from pbtune.config import RunConfig
from pbtune.engine.trainable import Trainable, member_seed
from pbtune.errors import InvalidConfigError, NotFoundError, PBTuneError

__all__ = ["MemberEvaluation", "evaluate_checkpoint", "evaluate_run", "use_device_share"]

log = logging.getLogger(__name__)
WHICH = "'best', 'all' or a member id"


@dataclass(frozen=True)
class MemberEvaluation:
    """One member's test metrics next to what PBT saw of it (``score``: its last score)."""

    member_id: int
    step: int
    score: float | None
    hparams: dict[str, Any]
    metrics: dict[str, float]
    best: bool


def use_device_share(env: Mapping[str, str] | None) -> None:
    """Set this process's ``CUDA_VISIBLE_DEVICES`` share before the trainable is imported; if CUDA
    is already initialised here it can no longer change, and a warning says so."""
    if not env:
        return
    torch = sys.modules.get("torch")
    if torch is not None and torch.cuda.is_initialized():
        log.warning("CUDA is already initialised in this process: the device share %s cannot take effect", env)
        return
    os.environ.update(env)


def evaluate_checkpoint(cls: type[Trainable], args: Mapping[str, Any], hparams: Mapping[str, Any], path: str, *,
                        member_id: int = 0, seed: int = 0) -> dict[str, float]:
    """Build ``cls(**args)``, ``setup(hparams)``, ``load(path)``, and return its ``evaluate()``.

    Raises:
        InvalidConfigError: naming ``trainable`` when it has no ``evaluate()`` method or it
            returns something other than a mapping of numbers.
    """
    trainable = cls(**args)
    evaluate = getattr(trainable, "evaluate", None)
    name = f"{cls.__module__}:{cls.__qualname__}"
    if not callable(evaluate):
        raise InvalidConfigError("trainable", "--mode test", "a Trainable with an evaluate() method that returns "
                                 "test metrics, e.g. {'test_accuracy': 0.98}", name)
    trainable.member_id, trainable.seed = member_id, seed
    trainable.setup(hparams)
    trainable.load(path)
    metrics = evaluate()
    if not isinstance(metrics, Mapping) or not all(
            isinstance(v, (int, float)) and not isinstance(v, bool) for v in metrics.values()):
        raise InvalidConfigError("trainable", "--mode test", "a Trainable whose evaluate() returns a mapping of "
                                 "numbers", f"{name} returned {metrics!r}")
    return {str(k): float(v) for k, v in metrics.items()}


def evaluate_run(config: RunConfig, which: str = "best") -> list[MemberEvaluation]:
    """Test metrics of the run's best member, of ``"all"`` members (those with a checkpoint), or of one id.

    The member is rebuilt on worker 0's device share (``gpus_per_worker`` / ``devices``).

    Raises:
        NotFoundError: the run is not in ``config.storage`` (train it first).
        InvalidConfigError: ``which`` is not 'best', 'all' or a member id of the run, or the
            trainable has no ``evaluate()``.
        PBTuneError: no member has a finite score or a checkpoint yet.
    """
    from pbtune.checkpoints import CheckpointStore
    from pbtune.engine.devices import worker_envs
    from pbtune.engine.worker import load_trainable
    from pbtune.results import require_best
    from pbtune.store import open_store

    if config.trainable is None:
        raise InvalidConfigError("trainable", "config", "set ('module:Class' or 'file.py:Class') to test a run", None)
    try:
        store = open_store(config.storage, read_only=True)
        store.get_run(config.name)
    except NotFoundError:
        raise NotFoundError(f"run {config.name!r} is not in {config.storage}: train it first "
                            f"(pbtune run CONFIG), then test it") from None
    members = store.list_members(config.name)
    best = require_best(members, config)
    if which == "best":
        chosen = [best]
    elif which == "all":
        chosen = [m for m in members if m.checkpoint]
    else:
        chosen = [m for m in members if str(m.member_id) == str(which).strip()]
        if not chosen:
            ids = [m.member_id for m in members]
            raise InvalidConfigError("member", "--mode test", f"{WHICH} (members {ids[0]}..{ids[-1]})", which)
    if not any(m.checkpoint for m in chosen):
        raise PBTuneError(f"no checkpoint to test for {which} member(s) of run {config.name!r}")
    envs = worker_envs(config.workers, config.gpus_per_worker, config.devices)
    use_device_share(envs[0] if envs else None)
    cls = load_trainable(config.trainable)
    checkpoints = CheckpointStore(config.checkpoints)
    rows = []
    for m in chosen:
        if not m.checkpoint:
            log.warning("member %d has no checkpoint yet: not tested", m.member_id)
            continue
        path = checkpoints.fetch(m.checkpoint, m.checkpoint_sha256 or "")
        metrics = evaluate_checkpoint(cls, config.trainable_args, m.hparams, path, member_id=m.member_id,
                                      seed=member_seed(config.seed, m.member_id, m.step))
        score = m.score if m.score is None or math.isfinite(m.score) else None
        is_best = m.member_id == best.member_id
        rows.append(MemberEvaluation(m.member_id, m.step, score, dict(m.hparams), metrics, is_best))
    return rows
