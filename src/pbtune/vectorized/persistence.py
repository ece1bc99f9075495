"""What a vectorized run writes: scores, a round's exploits and ready checks, final weights,
the population checkpoint file; and resuming from that file.

Store writes go through ``state.writer`` (a background thread or inline, in order), so the
checkpoint file on disk is never newer than the store.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import tempfile
from collections.abc import Mapping, Sequence

import torch

from pbtune.errors import InvalidConfigError, PBTuneError
from pbtune.member import Member
from pbtune.ranking import best_member
from pbtune.round import ExploitPlan, Plan, ReadyCheck
from pbtune.store.base import ScorePoint
from pbtune.types import MemberRecord, MemberState
from pbtune.vectorized._state import RunState
from pbtune.vectorized.population import CHECKPOINT_FORMAT, atomic_save, load_checkpoint

__all__ = ["flush", "resume", "save", "snapshot", "write_round"]

log = logging.getLogger(__name__)


def snapshot(state: RunState) -> list[MemberRecord]:
    """The population as the round planner sees it; every member's weights are in memory."""
    cfg, pop = state.settings.config, state.population
    return [
        MemberRecord(
            run=cfg.name, member_id=i, state=MemberState.RUNNING, step=state.step, hparams=dict(pop.hparams[i]),
            score=state.scores[i], score_step=state.step, checkpoint=f"memory:{cfg.name}/{i}",
            checkpoint_step=state.step, last_ready_step=state.last_ready[i], version=state.versions[i],
            recent=tuple(state.recent[i]), lineage=state.lineages[i],
        )
        for i in range(cfg.population)
    ]


def flush(state: RunState, pending: list[list[ScorePoint]], *, final: bool) -> None:
    """Write the buffered scores of the whole population in one transaction (``report_many``);
    ``final``: with the final weights of the members ``save_final`` names, and finish them."""
    settings, store = state.settings, state.store
    cfg = settings.config
    best_id = None
    if final and settings.save_final != "none":
        best = best_member(snapshot(state), cfg.mode, cfg.ranking)
        best_id = best.member_id if best is not None else None
    weights = {
        member_id: state.population.member_state_dict(member_id)  # taken now: training goes on meanwhile
        for member_id in range(cfg.population)
        if final and (settings.save_final == "all" or member_id == best_id)
    }

    def write() -> None:
        # Weights first (they write a checkpoint file: outside any transaction), so that finishing
        # the members stays the run's last write, in one transaction: if anything before it
        # fails, the run is still unfinished and resumes from its population checkpoint.
        for member_id, member_weights in weights.items():
            points = pending[member_id]
            report_with_weights(state, member_id, member_weights, points[-1], points[:-1])
        plain = {member_id: points for member_id, points in enumerate(pending) if member_id not in weights}

        def scores() -> dict[int, MemberRecord]:
            updated = store.report_many(cfg.name, plain, finish=final)
            for member_id in weights if final else ():
                updated[member_id] = store.set_state(cfg.name, member_id, MemberState.FINISHED)
            return updated

        for member_id, record in store.batch(scores).items():
            state.versions[member_id] = record.version

    state.writer.submit(write)


def report_with_weights(
    state: RunState, member_id: int, weights: Mapping[str, torch.Tensor], last: ScorePoint,
    earlier: Sequence[ScorePoint],
) -> None:
    """The member's final report carries its weights (a plain state_dict) into the checkpoint store."""
    cfg = state.settings.config
    member = Member(state.store, state.checkpoints, cfg, member_id)
    folder = tempfile.mkdtemp(prefix="pbtune-vec-")
    path = os.path.join(folder, "model.pt")
    try:
        atomic_save(dict(weights), path)
        member.report(last.step, last.score, checkpoint=path, metrics=last.metrics, earlier=earlier)
    finally:
        if os.path.exists(path):
            os.remove(path)
        os.rmdir(folder)
    state.versions[member_id] = member.record.version


def write_round(state: RunState, plans: Mapping[int, Plan]) -> None:
    """A round's exploits (with their explores) and ready checks in one transaction.

    Versions are the ones the store holds when the write runs (the scores of this step may be
    written just before it, on the same writer).
    """
    if not plans:
        return
    store, name = state.store, state.settings.config.name

    def write() -> None:
        exploits = [dataclasses.replace(p.write(), expected_version=state.versions[p.member_id])
                    for p in plans.values() if isinstance(p, ExploitPlan)]
        checks = [dataclasses.replace(p.write(), expected_version=state.versions[p.member_id])
                  for p in plans.values() if isinstance(p, ReadyCheck)]
        updated = store.apply_exploits(name, exploits, checks)
        if updated is None:
            raise PBTuneError(
                f"a member of run {name!r} was changed by another process; "
                "a vectorized run must be the only writer of its run"
            )
        state.versions.update({member_id: record.version for member_id, record in updated.items()})

    state.writer.submit(write)


def save(state: RunState) -> None:
    """Queue the population checkpoint file (copied now, written after this round's store writes)."""
    settings = state.settings
    path = settings.checkpoint_path
    if path is None:
        return
    device = settings.device
    engine = {
        "mode": settings.config.mode,
        "step": state.step,
        "scores": [None if s is None else float(s) for s in state.scores],
        "last_ready": list(state.last_ready),
        "recent": [[[step, score] for step, score in member] for member in state.recent],
        "lineages": list(state.lineages),
        "data_rng": state.generator.get_state(),
        "torch_rng": torch.get_rng_state(),
        "cuda_rng": torch.cuda.get_rng_state(device) if device.type == "cuda" else None,
    }
    payload = {
        "format": CHECKPOINT_FORMAT,
        "run": settings.config.name,
        "population": state.population.state_dict(),
        "engine": engine,
    }
    state.files.submit(lambda: atomic_save(payload, path))


def resume(state: RunState, path: str, records: Mapping[int, MemberRecord]) -> None:
    """Load the population checkpoint at ``path`` into ``state``; realign the store's members with it."""
    settings = state.settings
    cfg, pop = settings.config, state.population
    data = load_checkpoint(path)
    if data.get("run") != cfg.name:
        raise InvalidConfigError("checkpoint", "vectorized.train", f"a checkpoint of run {cfg.name!r}", data.get("run"))
    pop.load_state_dict(data["population"])
    engine = data["engine"]
    state.step = int(engine["step"])
    state.scores = list(engine["scores"])
    state.last_ready = [int(v) for v in engine["last_ready"]]
    if "recent" in engine:  # population checkpoints written before smoothed ranking have none
        state.recent = [[(int(step), float(score)) for step, score in member] for member in engine["recent"]]
    if "lineages" in engine:  # the weights' lineages (the store's may be a round ahead of the file)
        state.lineages = [int(v) for v in engine["lineages"]]
    state.generator.set_state(engine["data_rng"])
    torch.set_rng_state(engine["torch_rng"])
    if settings.device.type == "cuda" and engine.get("cuda_rng") is not None:
        torch.cuda.set_rng_state(engine["cuda_rng"], settings.device)
    for member_id in range(cfg.population):
        record = records[member_id]
        if record.state.is_final and state.step < cfg.budget:
            raise PBTuneError(
                f"member {member_id} of run {cfg.name!r} is {record.state.value} but the "
                f"population checkpoint is at step {state.step}: start a new run"
            )
        if not record.state.is_final and (record.step != state.step or dict(record.hparams) != pop.hparams[member_id]):
            updated = state.store.set_hparams(
                cfg.name, member_id, pop.hparams[member_id], expected_version=record.version, kind="resume",
                summary=f"resumed from the population checkpoint at step {state.step}",
            )
            if updated is None:
                raise PBTuneError(f"member {member_id} of run {cfg.name!r} changed while resuming")
            state.versions[member_id] = updated.version
    log.info("vectorized run %s resumed from %s at step %d", cfg.name, path, state.step)
