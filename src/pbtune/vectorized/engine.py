"""The vectorized PBT engine: the whole population trains as one batched model in one process.

Same run, members, scores and lineage in the same store as the process engine, so
``pbtune status / best / lineage`` and the reports work unchanged. Exploit and explore are
decided by the same strategy objects with the same seeded generators
(:func:`pbtune.round.plan_round`, the planner every engine calls); the weights move by an
in-memory row copy.

Example::

    from examples.digits_mlp import digits_split, make_mlp
    x, y, xv, yv = digits_split()
    result = pbtune.vectorized.train(
        make_mlp, {"lr": Float(1e-3, 0.5, log=True), "momentum": Float(0.0, 0.99)},
        population=32, data=(x, y), eval_data=(xv, yv), batch_size=64, batches_per_step=25,
        steps=40, ready={"interval": 4}, name="digits-vec", storage="sqlite:///pbt.db",
    )
    model = make_mlp(); model.load_state_dict(result.state_dict())   # the best member
"""

from __future__ import annotations

import time
from collections import OrderedDict
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from pbtune.diversity import diversity
from pbtune.errors import InvalidConfigError
from pbtune.lineage import schedule
from pbtune.member import Population
from pbtune.results import RunResult, require_best
from pbtune.space import Space
from pbtune.validation import check_int
from pbtune.vectorized import loop
from pbtune.vectorized._malloc import tune_malloc
from pbtune.vectorized._state import RunState
from pbtune.vectorized.chunking import ChunkPlan
from pbtune.vectorized.population import StackedPopulation
from pbtune.vectorized.settings import NOT_VECTORIZABLE, Settings, make_settings, member_init_seed
from pbtune.vectorized.threads import ThreadReport, managed_threads

__all__ = ["VectorizedPBT", "VectorizedResult", "train", "member_init_seed", "NOT_VECTORIZABLE"]


@dataclass(frozen=True)
class VectorizedResult(RunResult):
    """A finished vectorized run: :class:`~pbtune.results.RunResult` plus the population itself."""

    population_checkpoint: str | None = None
    chunk_plan: ChunkPlan | None = None
    elapsed_s: float = 0.0
    member_steps: int = 0  # minibatch updates done by this call, summed over members
    threads: ThreadReport | None = None  # the torch thread count the training used, and why
    train_s: float | None = None  # of elapsed_s, in the batched training steps (CPU; None on CUDA)
    population: StackedPopulation | None = field(default=None, compare=False, repr=False)

    def state_dict(self, member_id: int | None = None) -> OrderedDict[str, torch.Tensor]:
        """A member's weights as a plain ``state_dict`` for ``model_fn()`` (default: the best member)."""
        if self.population is None:
            raise InvalidConfigError("population", "VectorizedResult", "the trained population", None)
        return self.population.member_state_dict(self.best.member_id if member_id is None else member_id)


class VectorizedPBT:
    """PBT over a population trained as one batched model (torch.func ``vmap`` + ``grad``).

    Args:
        model_fn: builds one member's ``nn.Module`` (called once per member, under a per-member
            seed: see :func:`member_init_seed`). The model code needs no change.
        space: the hyperparameters (:class:`~pbtune.space.Space` or its config mapping). Only
            vectorizable ones are allowed: the optimizer's (``lr``, ``momentum``,
            ``weight_decay``, ``nesterov``; ``beta1``, ``beta2``, ``eps``), ``dropout`` (the
            probability of every ``nn.Dropout``), ``label_smoothing`` (with the cross-entropy
            loss), and numbers your loss reads through an ``hparams`` argument.
        population: number of members.
        data: ``(inputs, targets)`` tensors (or a ``TensorDataset``); each member draws its own
            minibatches of ``batch_size`` (with replacement).
        eval_data: ``(inputs, targets)`` scored with ``metric`` after every step; without it the
            score is the step's mean training loss (mode ``min``).
        loss: ``"cross_entropy"``, ``"mse"`` or ``f(outputs, targets[, hparams]) -> scalar``,
            written for one member (it runs under ``vmap``).
        metric: ``"accuracy"``, ``"loss"`` or ``f(outputs, targets) -> scalar``.
        optimizer: :class:`~pbtune.vectorized.optim.SGD` (default), ``Adam``, ``AdamW`` or a
            config such as ``{"name": "adamw", "lr": 3e-4}``.
        batch_size: minibatch size, the same for every member.
        batches_per_step: minibatch updates per step; a step ends with an evaluation and a
            score, like one ``Trainable.step()`` of the process engine.
        steps: steps per member (the process engine's ``budget``).
        ready / exploit / explore / mode / ranking / init / seed: as in :class:`~pbtune.config.RunConfig`
            (the engine is generational by construction: every member steps in lockstep).
        name / storage / checkpoints: the run's name, population store URL and checkpoint folder.
        checkpoint: the population checkpoint file (``True``: ``<checkpoints>/<name>/population.pt``;
            ``False``: none). If it exists, the run resumes from it bit-for-bit.
        checkpoint_interval: steps between population checkpoints (default: the ready interval).
        save_final: which members' final weights go to the checkpoint store (``"best"``,
            ``"all"`` or ``"none"``), so ``pbtune best`` names a checkpoint.
        device: ``"cpu"``, ``"cuda"``, ``"cuda:1"``...
        chunk_size: members per batched call; ``None`` chooses from free memory.
        eval_batch_size: evaluation samples per forward call.
        progress: show a live progress bar (rich).
        flush_seconds: buffered scores are written at least this often.
        background_writes: store writes and checkpoint saves run on a background thread, in
            order, overlapping the training. Default (``None``): on when the training leaves a
            CPU core free (on CUDA, or when the most torch threads ``threads`` may use are fewer
            than the cores); inline when torch's threads may use every core, where the writer
            thread would only take turns with them (measured: runs 15 % slower on 2 cores); the
            population checkpoint file, which mostly waits on the disk, is then still written
            on a thread of its own.
            ``False``: everything inline, no thread.
        threads: torch threads of the training on a CPU. ``None`` (default): chosen by timing
            the run's own steps at 1, 2, 4 ... threads up to torch's current count (its default
            or your ``torch.set_num_threads``, a ceiling) and the usable CPUs, re-checked every
            30 s (:mod:`pbtune.vectorized.threads`); but the environment's ``OMP_NUM_THREADS`` /
            ``MKL_NUM_THREADS``, if set, win. ``"auto"``: chosen by timing up to the usable CPUs,
            whatever the environment says. An integer: exactly that many. The caller's torch
            thread count is restored when ``run()`` returns; ``result.threads`` says what ran.
    """

    def __init__(self, model_fn: Callable[[], nn.Module], space: Space | Mapping[str, Any], **settings: Any) -> None:
        # One signature, validated once: pbtune.vectorized.settings.make_settings (the arguments above).
        self.settings: Settings = make_settings(model_fn, space, **settings)
        self.config = self.settings.config
        self.checkpoint_path = self.settings.checkpoint_path
        self.state: RunState | None = None  # the last run()'s state

    @property
    def population(self) -> StackedPopulation | None:
        """The trained population of the last :meth:`run` (None before)."""
        return None if self.state is None else self.state.population

    @property
    def store(self) -> Any:
        """The population store of the last :meth:`run` (None before)."""
        return None if self.state is None else self.state.store

    def run(self, *, until: int | None = None) -> VectorizedResult:
        """Train the population to ``steps`` (resuming from the population checkpoint if it exists).

        ``until`` stops after that step without finishing the members (their scores are
        written and the population checkpoint saved); a later ``run()`` continues from there.
        """
        if until is not None:
            check_int(until, "until", "VectorizedPBT.run", minimum=1)
        settings, cfg = self.settings, self.config
        if settings.device.type == "cpu":
            tune_malloc()
        handle = Population(cfg)
        store = handle.store
        records = {m.member_id: m for m in store.list_members(cfg.name)}
        started = time.perf_counter()
        # the caller's RNG and torch thread count are left as they were
        with torch.random.fork_rng(devices=loop.cuda_devices(settings)), \
                managed_threads(settings.threads, settings.device.type) as tuner:
            state = self.state = loop.start(settings, store, handle.checkpoints, records)
            state.threads = tuner if settings.device.type == "cpu" else None
            stop = cfg.budget if until is None else min(until, cfg.budget)
            if state.step < stop:
                loop.train(state, stop)
            threads = tuner.report()
            train_s = state.train_seconds if state.threads is not None else None
        elapsed = time.perf_counter() - started
        members = store.list_members(cfg.name)
        best = require_best(members, cfg)
        checkpoint_path = None
        if best.checkpoint is not None:
            checkpoint_path = handle.checkpoints.fetch(best.checkpoint, best.checkpoint_sha256 or "")
        events = store.events(cfg.name)
        return VectorizedResult(
            run=cfg.name, best=best, checkpoint_path=checkpoint_path, schedule=schedule(events, best.member_id),
            members=members, storage=cfg.storage, checkpoints=cfg.checkpoints, ranking=cfg.ranking,
            diversity=diversity(members, events, cfg.space), population_checkpoint=self.checkpoint_path,
            chunk_plan=state.plan,
            elapsed_s=elapsed, member_steps=state.member_steps, threads=threads, train_s=train_s,
            population=state.population,
        )


def train(model_fn: Callable[[], nn.Module], space: Space | Mapping[str, Any], **settings: Any) -> VectorizedResult:
    """Train a population with PBT as one batched model; see :class:`VectorizedPBT` for the settings.

    Example::

        result = pbtune.vectorized.train(make_mlp, {"lr": Float(1e-3, 0.5, log=True)}, population=32,
                                         data=(x, y), eval_data=(xv, yv), steps=40, ready={"interval": 4})
        print(result.best.score, dict(result.best.hparams))
    """
    return VectorizedPBT(model_fn, space, **settings).run()
