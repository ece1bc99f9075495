"""The vectorized PBT engine: the whole population trains as one batched model in one process.

Same run, members, scores and lineage in the same store as the process engine, so
``pbtune status / best / lineage`` and the reports work unchanged. Exploit and explore are
decided by the same strategy objects with the same seeded generators
(:func:`pbtune.member.decision_rng`); the weights move by an in-memory row copy.

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

import contextlib
import hashlib
import logging
import os
import time
from collections import OrderedDict
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from pbtune.config import DEFAULT_DIR, RunConfig
from pbtune.engine.local import RunResult, best_member
from pbtune.errors import InvalidConfigError, PBTuneError
from pbtune.lineage import schedule
from pbtune.member import Member, Population, decision_rng
from pbtune.space import Choice, Float, Int, Space
from pbtune.store.base import ExploitWrite, PopulationStore, ScorePoint
from pbtune.strategies import Exploit
from pbtune.types import MemberRecord, MemberState
from pbtune.vectorized._functional import LossFn, MetricFn, resolve_loss, resolve_metric
from pbtune.vectorized._malloc import tune_malloc
from pbtune.vectorized._writer import BackgroundWriter
from pbtune.vectorized.chunking import ChunkPlan, chunk_slices, plan_chunks
from pbtune.vectorized.optim import SGD, OptimizerSpec, optimizer_from_config
from pbtune.vectorized.population import (
    CHECKPOINT_FORMAT,
    StackedPopulation,
    atomic_save,
    load_checkpoint,
)

__all__ = ["VectorizedPBT", "VectorizedResult", "train", "member_init_seed", "NOT_VECTORIZABLE"]

log = logging.getLogger(__name__)

_REGULARISERS = ("dropout", "label_smoothing")
NOT_VECTORIZABLE = {
    "batch_size": "per-member batch size is not vectorizable: every member's minibatch is one slice of a "
    "[population, batch, ...] tensor, so all members share `batch_size=`; tune it with the process engine "
    "(pbtune.run) instead",
}


def member_init_seed(seed: int, member_id: int) -> int:
    """The torch seed under which member ``member_id``'s model is built (``torch.manual_seed``).

    Build the same initial model outside the engine with::

        with torch.random.fork_rng():
            torch.manual_seed(member_init_seed(seed, member_id))
            model = model_fn()
    """
    digest = hashlib.sha256(f"pbtune.vectorized:{seed}:{member_id}".encode()).digest()
    return int.from_bytes(digest[:8], "little") & (2**63 - 1)


def _run_seed(seed: int, purpose: str) -> int:
    digest = hashlib.sha256(f"pbtune.vectorized:{seed}:{purpose}".encode()).digest()
    return int.from_bytes(digest[:8], "little") & (2**63 - 1)


@dataclass(frozen=True)
class VectorizedResult(RunResult):
    """A finished vectorized run: :class:`~pbtune.engine.local.RunResult` plus the population itself."""

    population_checkpoint: str | None = None
    chunk_plan: ChunkPlan | None = None
    elapsed_s: float = 0.0
    member_steps: int = 0  # minibatch updates done by this call, summed over members
    engine: Any = field(default=None, compare=False, repr=False)

    def state_dict(self, member_id: int | None = None) -> OrderedDict[str, torch.Tensor]:
        """A member's weights as a plain ``state_dict`` for ``model_fn()`` (default: the best member)."""
        return self.engine.population.member_state_dict(self.best.member_id if member_id is None else member_id)


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
        ready / exploit / explore / mode / seed: as in :class:`~pbtune.config.RunConfig`.
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
            CPU core free (on CUDA, or fewer torch threads than cores); inline when torch's
            threads use every core, where the writer thread would only take turns with them
            (measured: runs 15 % slower on 2 cores); the population checkpoint file, which
            mostly waits on the disk, is then still written on a thread of its own.
            ``False``: everything inline, no thread.
    """

    def __init__(
        self,
        model_fn: Callable[[], nn.Module],
        space: Space | Mapping[str, Any],
        *,
        population: int = 64,
        data: Any,
        eval_data: Any = None,
        loss: str | LossFn = "cross_entropy",
        metric: str | MetricFn = "accuracy",
        optimizer: Any = None,
        batch_size: int = 64,
        batches_per_step: int = 1,
        steps: int = 100,
        ready: Any = None,
        exploit: Any = None,
        explore: Any = None,
        mode: str | None = None,
        seed: int = 0,
        name: str | None = None,
        storage: str = f"sqlite:///{DEFAULT_DIR}/pbtune.db",
        checkpoints: str = f"{DEFAULT_DIR}/checkpoints",
        checkpoint: str | bool = True,
        checkpoint_interval: int | None = None,
        save_final: str = "best",
        device: Any = "cpu",
        chunk_size: int | None = None,
        eval_batch_size: int = 1024,
        progress: bool = False,
        flush_seconds: float = 5.0,
        background_writes: bool | None = None,
    ) -> None:
        where = "vectorized.train"
        if not callable(model_fn):
            raise InvalidConfigError("model_fn", where, "a callable that returns an nn.Module", model_fn)
        self.model_fn = model_fn
        self.space = space if isinstance(space, Space) else Space(space)
        self.optimizer: OptimizerSpec = optimizer_from_config(optimizer if optimizer is not None else SGD())
        for field_name, value, low in (
            ("batch_size", batch_size, 1),
            ("batches_per_step", batches_per_step, 1),
            ("eval_batch_size", eval_batch_size, 1),
        ):
            if isinstance(value, bool) or not isinstance(value, int) or value < low:
                raise InvalidConfigError(field_name, where, f"an integer >= {low}", value)
        self.batch_size, self.batches_per_step, self.eval_batch_size = (
            batch_size,
            batches_per_step,
            eval_batch_size,
        )
        if save_final not in ("best", "all", "none"):
            raise InvalidConfigError("save_final", where, "one of ['all', 'best', 'none']", save_final)
        self.save_final = save_final
        self.device = _check_device(device)
        self.data = _check_data(data, "data")
        self.eval_data = None if eval_data is None else _check_data(eval_data, "eval_data")
        self.loss, self.loss_takes_hparams = resolve_loss(loss, label_smoothing="label_smoothing" in self.space)
        self.tensor_hparams = self._check_space()
        if self.eval_data is None:
            self.metric: MetricFn | None = None
            metric_mode = "min"
        else:
            self.metric, metric_mode = resolve_metric(metric, self.loss, self.loss_takes_hparams)
        if mode is None and not metric_mode:
            raise InvalidConfigError("mode", where, "'max' or 'min' (required with a custom metric)", mode)
        self.metric_name = metric if isinstance(metric, str) else getattr(metric, "__name__", "metric")
        self.config = RunConfig(
            name=name or time.strftime("vectorized-%Y%m%d-%H%M%S"),
            space=self.space,
            population=population,
            budget=steps,
            workers=1,
            mode=mode or metric_mode,
            ready=ready if ready is not None else {"interval": 10},
            exploit=exploit if exploit is not None else "truncation",
            explore=explore if explore is not None else "perturb_or_resample",
            seed=seed,
            storage=storage,
            checkpoints=checkpoints,
            checkpoint_interval=checkpoint_interval,
        )
        if checkpoint is True:
            self.checkpoint_path: str | None = os.path.join(checkpoints, self.config.name, "population.pt")
        elif checkpoint is False or checkpoint is None:
            self.checkpoint_path = None
        elif isinstance(checkpoint, str) and checkpoint:
            self.checkpoint_path = checkpoint
        else:
            raise InvalidConfigError("checkpoint", where, "True, False or a file path", checkpoint)
        if self.checkpoint_path is not None and "://" in self.checkpoint_path:
            raise InvalidConfigError("checkpoint", where, "a local file path (written atomically)", checkpoint)
        self.chunk_size = chunk_size
        self.progress = progress
        self.flush_seconds = float(flush_seconds)
        if background_writes not in (None, True, False):
            raise InvalidConfigError("background_writes", where, "True, False or None (automatic)", background_writes)
        self.background_writes = background_writes
        self.population: StackedPopulation | None = None
        self.store: PopulationStore | None = None

    # -- validation -----------------------------------------------------------------------------
    def _check_space(self) -> list[str]:
        """The non-optimizer hyperparameters kept as tensors; reject what cannot be vectorized."""
        where = "space"
        tensor_hparams: list[str] = []
        for name, domain in self.space.items():
            if name in NOT_VECTORIZABLE:
                raise InvalidConfigError(name, where, f"absent: {NOT_VECTORIZABLE[name]}", domain.to_config())
            if name == "nesterov":
                if name in self.optimizer.hparam_names and not (
                    isinstance(domain, Choice) and all(isinstance(v, bool) for v in domain.values)
                ):
                    raise InvalidConfigError(name, where, "a choice of true/false", domain.to_config())
            elif not _numeric_domain(domain):
                raise InvalidConfigError(
                    name,
                    where,
                    "a number (float, int or a choice of numbers): only numeric hyperparameters are vectorizable",
                    domain.to_config(),
                )
            if name in self.optimizer.hparam_names:
                continue
            if name in _REGULARISERS or self.loss_takes_hparams:
                if name == "dropout" and _domain_max(domain) >= 1.0:
                    raise InvalidConfigError(name, where, "a probability below 1", domain.to_config())
                if name == "label_smoothing" and not 0.0 <= _domain_max(domain) <= 1.0:
                    raise InvalidConfigError(name, where, "within [0, 1]", domain.to_config())
                tensor_hparams.append(name)
                continue
            raise InvalidConfigError(
                name,
                where,
                f"a vectorizable hyperparameter: one of {list(self.optimizer.hparam_names)} "
                f"({type(self.optimizer).__name__}), {list(_REGULARISERS)}, or one the loss reads through "
                "an `hparams` argument",
                domain.to_config(),
            )
        return tensor_hparams

    # -- the run --------------------------------------------------------------------------------
    def run(self, *, until: int | None = None) -> VectorizedResult:
        """Train the population to ``steps`` (resuming from the population checkpoint if it exists).

        ``until`` stops after that step without finishing the members (their scores are
        written and the population checkpoint saved); a later ``run()`` continues from there.
        """
        if until is not None and (isinstance(until, bool) or not isinstance(until, int) or until < 1):
            raise InvalidConfigError("until", "VectorizedPBT.run", "an integer >= 1 or None", until)
        cfg = self.config
        if self.device.type == "cpu":
            tune_malloc()
        handle = Population(cfg)
        store = self.store = handle.store
        records = {m.member_id: m for m in store.list_members(cfg.name)}
        started = time.perf_counter()
        with torch.random.fork_rng(devices=self._cuda_devices()):  # the caller's RNG is left as it was
            state = self._start(records)
            stop = cfg.budget if until is None else min(until, cfg.budget)
            if state.step < stop:
                self._loop(state, stop)
        elapsed = time.perf_counter() - started
        members = store.list_members(cfg.name)
        best = best_member(members, cfg.mode)
        checkpoint_path = None
        if best.checkpoint is not None:
            checkpoint_path = handle.checkpoints.fetch(best.checkpoint, best.checkpoint_sha256 or "")
        return VectorizedResult(
            run=cfg.name,
            best=best,
            checkpoint_path=checkpoint_path,
            schedule=schedule(store.events(cfg.name), best.member_id),
            members=members,
            storage=cfg.storage,
            checkpoints=cfg.checkpoints,
            population_checkpoint=self.checkpoint_path,
            chunk_plan=state.plan,
            elapsed_s=elapsed,
            member_steps=state.member_steps,
            engine=self,
        )

    def _cuda_devices(self) -> list[int]:
        if self.device.type != "cuda":
            return []
        return [self.device.index if self.device.index is not None else torch.cuda.current_device()]

    def _start(self, records: Mapping[int, MemberRecord]) -> _RunState:
        cfg = self.config
        size = cfg.population
        self.data = (self.data[0].to(self.device), self.data[1].to(self.device))
        if self.eval_data is not None:
            self.eval_data = (self.eval_data[0].to(self.device), self.eval_data[1].to(self.device))
        modules = []
        for member_id in range(size):
            with torch.random.fork_rng(devices=self._cuda_devices()):
                if self.device.type == "cpu":
                    # the CPU generator only: torch.manual_seed also queues lazy seeds for every
                    # accelerator backend (0.8 ms a call: 5 % of a short run at population 32)
                    torch.default_generator.manual_seed(member_init_seed(cfg.seed, member_id))
                else:
                    torch.manual_seed(member_init_seed(cfg.seed, member_id))
                modules.append(self.model_fn())
        if self.space.get("dropout") is not None and not any(type(m) is nn.Dropout for m in modules[0].modules()):
            raise InvalidConfigError(
                "dropout",
                "space",
                "used by an nn.Dropout module of the model (it has none)",
                self.space["dropout"].to_config(),
            )
        pop = self.population = StackedPopulation(
            modules, self.optimizer, device=self.device, tensor_hparams=self.tensor_hparams
        )
        del modules
        pop.set_loss(self.loss, self.loss_takes_hparams)
        generator = torch.Generator(device=self.device)
        generator.manual_seed(_run_seed(cfg.seed, "data"))
        state = _RunState(population=pop, generator=generator, versions={i: r.version for i, r in records.items()})
        state.scores = [r.score for r in (records[i] for i in range(size))]
        state.last_ready = [0] * size
        resumed = self.checkpoint_path is not None and os.path.exists(self.checkpoint_path)
        if resumed:
            self._resume(state, records)
        else:
            trained = [i for i, r in records.items() if r.step > 0 or r.state.is_final]
            if trained:
                raise PBTuneError(
                    f"run {cfg.name!r} in {cfg.storage} already has trained members ({len(trained)}) but no "
                    f"population checkpoint{'' if self.checkpoint_path is None else ' at ' + self.checkpoint_path}"
                    ": resume with the same checkpoint=, or start a run with a new name"
                )
            for member_id in range(size):
                pop.set_hparams(member_id, records[member_id].hparams)
            torch.manual_seed(_run_seed(cfg.seed, "dropout"))
            if self.device.type == "cuda":
                torch.cuda.manual_seed(_run_seed(cfg.seed, "dropout"))
        x, y = self.data
        sample = torch.randint(
            len(x),
            (min(size, 2), self.batch_size),
            generator=torch.Generator(device=x.device).manual_seed(0),
            device=x.device,
        )
        with _vmap_errors():
            state.plan = plan_chunks(pop, x[sample], y[sample], chunk_size=self.chunk_size)
        log.info("vectorized run %s: %s", cfg.name, state.plan.describe())
        return state

    def _resume(self, state: _RunState, records: Mapping[int, MemberRecord]) -> None:
        assert self.checkpoint_path is not None and self.store is not None
        cfg, pop = self.config, state.population
        data = load_checkpoint(self.checkpoint_path)
        if data.get("run") != cfg.name:
            raise InvalidConfigError(
                "checkpoint",
                "vectorized.train",
                f"a checkpoint of run {cfg.name!r}",
                data.get("run"),
            )
        pop.load_state_dict(data["population"])
        engine = data["engine"]
        state.step = int(engine["step"])
        state.scores = list(engine["scores"])
        state.last_ready = [int(v) for v in engine["last_ready"]]
        state.generator.set_state(engine["data_rng"])
        torch.set_rng_state(engine["torch_rng"])
        if self.device.type == "cuda" and engine.get("cuda_rng") is not None:
            torch.cuda.set_rng_state(engine["cuda_rng"], self.device)
        for member_id in range(cfg.population):
            record = records[member_id]
            if record.state.is_final and state.step < cfg.budget:
                raise PBTuneError(
                    f"member {member_id} of run {cfg.name!r} is {record.state.value} but the "
                    f"population checkpoint is at step {state.step}: start a new run"
                )
            if not record.state.is_final and (
                record.step != state.step or dict(record.hparams) != pop.hparams[member_id]
            ):
                updated = self.store.set_hparams(
                    cfg.name,
                    member_id,
                    pop.hparams[member_id],
                    expected_version=record.version,
                    kind="resume",
                    summary=f"resumed from the population checkpoint at step {state.step}",
                )
                if updated is None:
                    raise PBTuneError(f"member {member_id} of run {cfg.name!r} changed while resuming")
                state.versions[member_id] = updated.version
        log.info(
            "vectorized run %s resumed from %s at step %d",
            cfg.name,
            self.checkpoint_path,
            state.step,
        )

    def _loop(self, state: _RunState, stop: int) -> None:
        cfg, pop = self.config, state.population
        assert self.store is not None and state.plan is not None
        slices = chunk_slices(cfg.population, state.plan.chunk_size)
        x, y = self.data
        size, batch = cfg.population, self.batch_size
        interval = cfg.effective_checkpoint_interval
        pending: list[list[ScorePoint]] = [[] for _ in range(size)]
        last_flush = time.monotonic()
        bar = _progress(cfg, state.step) if self.progress else None
        overlap = self.background_writes
        if overlap is None:
            overlap = self.device.type != "cpu" or torch.get_num_threads() < (os.cpu_count() or 1)
        writer = state.writer = BackgroundWriter(enabled=overlap)
        # Writing the checkpoint file mostly waits on the disk (fsync): it gets a thread of its
        # own unless every write must be inline. Store writes are then inline and done before a
        # save is queued, so the file on disk is still never newer than the store.
        files = state.files = writer if overlap or self.background_writes is False else BackgroundWriter(
            name="pbtune-vectorized-files"
        )
        ok = False
        try:
            while state.step < stop:
                loss_sum = torch.zeros(size, device=self.device, dtype=pop.dtype)
                for _ in range(self.batches_per_step):
                    index = torch.randint(len(x), (size, batch), generator=state.generator, device=self.device)
                    for rows in slices:
                        chunk_index = index[rows]
                        loss_sum[rows] += self._train_step(_gather(x, chunk_index), _gather(y, chunk_index), rows)
                state.member_steps += size * self.batches_per_step
                state.step += 1
                step = state.step
                train_loss = (loss_sum / self.batches_per_step).tolist()
                scores = train_loss if self.metric is None else self._evaluate(slices)
                for i in range(size):
                    state.scores[i] = scores[i]
                    pending[i].append(ScorePoint(step, float(scores[i]), {"loss": float(train_loss[i])}))
                final = step >= cfg.budget
                snapshot = self._snapshot(state)
                ready = [] if final else [m.member_id for m in snapshot if cfg.ready.is_ready(m)]
                at_checkpoint = step % interval == 0 or final or step == stop
                if ready or at_checkpoint or time.monotonic() - last_flush >= self.flush_seconds:
                    self._flush(state, pending, final=final)
                    pending = [[] for _ in range(size)]
                    last_flush = time.monotonic()
                if ready:
                    self._exploit_and_explore(state, snapshot, ready)
                if at_checkpoint and self.checkpoint_path is not None:
                    self._save(state)
                if bar is not None:
                    bar.update(step, state)
            ok = True
        finally:
            try:
                writer.close(raise_errors=ok)  # on an error in the loop, that error wins
            finally:
                files.close(raise_errors=ok)
                state.writer = state.files = None
            if bar is not None:
                bar.close()

    def _train_step(self, inputs: torch.Tensor, targets: torch.Tensor, rows: slice) -> torch.Tensor:
        assert self.population is not None
        with _vmap_errors():
            return self.population.train_step(inputs, targets, rows)

    @torch.no_grad()
    def _evaluate(self, slices: Sequence[slice]) -> list[float]:
        assert self.eval_data is not None and self.population is not None and self.metric is not None
        pop = self.population
        x, y = self.eval_data
        scores = torch.empty(pop.size, dtype=torch.float64)
        bounds = [(s, min(s + self.eval_batch_size, len(x))) for s in range(0, len(x), self.eval_batch_size)]
        for rows in slices:
            if self.metric_name == "accuracy":
                correct = None
                for start, stop in bounds:
                    hits = (pop.forward(x[start:stop], rows).argmax(dim=-1) == y[start:stop]).sum(dim=-1)
                    correct = hits if correct is None else correct + hits
                assert correct is not None
                scores[rows] = (correct.double() / len(x)).cpu()
            else:
                outputs = torch.cat([pop.forward(x[start:stop], rows) for start, stop in bounds], dim=1)
                values = torch.vmap(self.metric, in_dims=(0, None))(outputs, y)
                scores[rows] = values.double().cpu()
        return scores.tolist()

    def _snapshot(self, state: _RunState) -> list[MemberRecord]:
        """The population as the strategies see it; every member's weights are in memory."""
        cfg, pop = self.config, state.population
        return [
            MemberRecord(
                run=cfg.name,
                member_id=i,
                state=MemberState.RUNNING,
                step=state.step,
                hparams=dict(pop.hparams[i]),
                score=state.scores[i],
                score_step=state.step,
                checkpoint=f"memory:{cfg.name}/{i}",
                checkpoint_step=state.step,
                last_ready_step=state.last_ready[i],
                version=state.versions[i],
            )
            for i in range(cfg.population)
        ]

    def _flush(self, state: _RunState, pending: list[list[ScorePoint]], *, final: bool) -> None:
        """Write the buffered scores of the whole population in one transaction (``report_many``)."""
        assert self.store is not None and self.population is not None
        cfg = self.config
        best_id = None
        if final and self.save_final != "none":
            best_id = best_member(tuple(self._snapshot(state)), cfg.mode).member_id
        store = self.store
        weights = {
            member_id: self.population.member_state_dict(member_id)  # taken now: training goes on meanwhile
            for member_id in range(cfg.population)
            if final and (self.save_final == "all" or member_id == best_id)
        }

        def write() -> None:
            # Weights first (they write a checkpoint file: outside any transaction), so that finishing
            # the members stays the run's last write, in one transaction: if anything before it
            # fails, the run is still unfinished and resumes from its population checkpoint.
            for member_id, member_weights in weights.items():
                points = pending[member_id]
                self._report_with_weights(state, member_id, member_weights, points[-1], points[:-1])
            plain = {member_id: points for member_id, points in enumerate(pending) if member_id not in weights}

            def scores() -> dict[int, MemberRecord]:
                updated = store.report_many(cfg.name, plain, finish=final)
                for member_id in weights if final else ():
                    updated[member_id] = store.set_state(cfg.name, member_id, MemberState.FINISHED)
                return updated

            for member_id, record in store.batch(scores).items():
                state.versions[member_id] = record.version

        self._submit(state, write)

    def _submit(self, state: _RunState, task: Callable[[], None]) -> None:
        if state.writer is None:
            task()
        else:
            state.writer.submit(task)

    def _report_with_weights(
        self,
        state: _RunState,
        member_id: int,
        weights: Mapping[str, torch.Tensor],
        last: ScorePoint,
        earlier: Sequence[ScorePoint],
    ) -> None:
        """The member's final report carries its weights (a plain state_dict) into the checkpoint store."""
        assert self.store is not None
        import tempfile

        member = Member(self.store, _checkpoint_store(self.config), self.config, member_id)
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

    def _exploit_and_explore(self, state: _RunState, snapshot: Sequence[MemberRecord], ready: Sequence[int]) -> None:
        """Decide for every ready member against the same snapshot, copy weights, record lineage."""
        assert self.store is not None
        cfg, pop, step = self.config, state.population, state.step
        decisions: list[tuple[int, Exploit]] = []
        for member_id in ready:
            rng = decision_rng(cfg.seed, member_id, step, "exploit")
            decision = cfg.exploit_strategy.decide(snapshot, member_id, rng, mode=cfg.mode)
            state.last_ready[member_id] = step
            if isinstance(decision, Exploit):
                decisions.append((member_id, decision))
        if not decisions:
            return
        for copy_hparams in (True, False):  # one strategy gives one kind; weights-only keeps own hparams
            group = [(m, d) for m, d in decisions if getattr(d, "copy_hparams", True) is copy_hparams]
            pop.copy_members([d.donor_id for _, d in group], [m for m, _ in group], copy_hparams=copy_hparams)
        writes = []
        for member_id, decision in decisions:
            me, donor = snapshot[member_id], snapshot[decision.donor_id]
            copy_hparams = getattr(decision, "copy_hparams", True)
            taken = dict(donor.hparams if copy_hparams else me.hparams)
            summary = (
                f"copied member {donor.member_id} (step {decision.donor_step}, score {decision.donor_score:.6g})"
                f" over member {member_id} (score {_fmt(me.score)}) in memory"
                + ("" if copy_hparams else " (weights only)")
            )
            # Explore is pure: decided here (the member trains on with it), recorded by the writer.
            new, changes = cfg.explore_strategy.explore(
                taken, cfg.space, decision_rng(cfg.seed, member_id, step, "explore")
            )
            pop.set_hparams(member_id, new)
            writes.append((member_id, decision, taken, summary, new, "; ".join(c.summary() for c in changes)))
        store, name = self.store, cfg.name

        def write() -> None:  # one transaction for the round
            updated = store.apply_exploits(name, [
                ExploitWrite(member_id, state.versions[member_id], decision.donor_id, decision.donor_step, taken,
                             summary, explored=new, explore_summary=explore_summary)
                for member_id, decision, taken, summary, new, explore_summary in writes
            ])
            if updated is None:
                raise PBTuneError(
                    f"a member of run {name!r} was changed by another process; "
                    "a vectorized run must be the only writer of its run"
                )
            state.versions.update({member_id: record.version for member_id, record in updated.items()})

        self._submit(state, write)
        log.debug("step %d: %d exploits", step, len(decisions))

    def _save(self, state: _RunState) -> None:
        assert self.checkpoint_path is not None
        engine = {
            "mode": self.config.mode,
            "step": state.step,
            "scores": [None if s is None else float(s) for s in state.scores],
            "last_ready": list(state.last_ready),
            "data_rng": state.generator.get_state(),
            "torch_rng": torch.get_rng_state(),
            "cuda_rng": torch.cuda.get_rng_state(self.device) if self.device.type == "cuda" else None,
        }
        payload = {  # copied now (CPU tensors); written after this round's store writes
            "format": CHECKPOINT_FORMAT,
            "run": self.config.name,
            "population": state.population.state_dict(),
            "engine": engine,
        }
        path = self.checkpoint_path
        assert state.files is not None  # only called from _loop
        state.files.submit(lambda: atomic_save(payload, path))


@dataclass
class _RunState:
    population: StackedPopulation
    generator: torch.Generator
    versions: dict[int, int]
    step: int = 0
    scores: list[float | None] = field(default_factory=list)
    last_ready: list[int] = field(default_factory=list)
    plan: ChunkPlan | None = None
    member_steps: int = 0
    writer: BackgroundWriter | None = None  # store writes (and checkpoint files when it runs on a thread)
    files: BackgroundWriter | None = None  # checkpoint files


def train(model_fn: Callable[[], nn.Module], space: Space | Mapping[str, Any], **settings: Any) -> VectorizedResult:
    """Train a population with PBT as one batched model; see :class:`VectorizedPBT` for the settings.

    Example::

        result = pbtune.vectorized.train(make_mlp, {"lr": Float(1e-3, 0.5, log=True)}, population=32,
                                         data=(x, y), eval_data=(xv, yv), steps=40, ready={"interval": 4})
        print(result.best.score, dict(result.best.hparams))
    """
    return VectorizedPBT(model_fn, space, **settings).run()


# -- helpers --------------------------------------------------------------------------------------
@contextlib.contextmanager
def _vmap_errors() -> Iterator[None]:
    """Turn torch.func's vmap errors into one message that says what to change."""
    try:
        yield
    except RuntimeError as exc:
        if "vmap" not in str(exc):
            raise
        raise PBTuneError(
            "the model or loss cannot run under torch.func.vmap (no .item() or Python branches on tensor values "
            "in forward; BatchNorm needs a numeric momentum); see docs/vectorized.md. "
            f"torch said: {str(exc).splitlines()[0]}"
        ) from exc


def _gather(data: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    """``data[index]`` for a ``[members, batch]`` index: rows picked by one ``index_select``.

    Advanced indexing with a 2-D index is about 7x slower on a CPU (87 vs 13 us per call on the
    digits data at population 32): a tenth of a whole step.
    """
    return data.index_select(0, index.reshape(-1)).view(*index.shape, *data.shape[1:])


def _fmt(score: float | None) -> str:
    return "None" if score is None else f"{score:.6g}"


def _numeric_domain(domain: Any) -> bool:
    if isinstance(domain, (Float, Int)):
        return True
    return isinstance(domain, Choice) and all(
        isinstance(v, (int, float)) and not isinstance(v, bool) for v in domain.values
    )


def _domain_max(domain: Any) -> float:
    if isinstance(domain, (Float, Int)):
        return float(domain.high)
    return float(max(domain.values))


def _check_device(device: Any) -> torch.device:
    try:
        resolved = torch.device(device)
    except (RuntimeError, TypeError) as exc:
        raise InvalidConfigError(
            "device", "vectorized.train", "a torch device such as 'cpu' or 'cuda:0'", device
        ) from exc
    if resolved.type == "cuda" and not torch.cuda.is_available():
        raise InvalidConfigError(
            "device",
            "vectorized.train",
            "an available device (torch.cuda.is_available() is False on this machine)",
            device,
        )
    if resolved.type == "cuda" and resolved.index is None:
        resolved = torch.device("cuda", torch.cuda.current_device())
    return resolved


def _check_data(data: Any, field_name: str) -> tuple[torch.Tensor, torch.Tensor]:
    tensors = getattr(data, "tensors", data)  # a TensorDataset
    if (
        not isinstance(tensors, (tuple, list))
        or len(tensors) != 2
        or not all(isinstance(t, torch.Tensor) for t in tensors)
    ):
        raise InvalidConfigError(
            field_name,
            "vectorized.train",
            "(inputs, targets) tensors or a TensorDataset",
            type(data).__name__,
        )
    inputs, targets = tensors
    if len(inputs) != len(targets) or len(inputs) == 0:
        raise InvalidConfigError(
            field_name,
            "vectorized.train",
            "inputs and targets of the same non-zero length",
            (len(inputs), len(targets)),
        )
    return inputs, targets


def _checkpoint_store(config: RunConfig) -> Any:
    from pbtune.checkpoints import CheckpointStore

    return CheckpointStore(config.checkpoints)


class _progress:  # noqa: N801 - used like a function
    """A rich progress bar over member-steps (minibatch updates of all members)."""

    def __init__(self, config: RunConfig, start: int) -> None:
        from rich.progress import (
            BarColumn,
            MofNCompleteColumn,
            Progress,
            TextColumn,
            TimeRemainingColumn,
        )

        self._bar = Progress(
            TextColumn("[bold]{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("best {task.fields[best]}"),
            TimeRemainingColumn(),
        )
        self._task = self._bar.add_task(config.name, total=config.budget, completed=start, best="-")
        self._mode = config.mode
        self._bar.start()

    def update(self, step: int, state: _RunState) -> None:
        finite = [s for s in state.scores if s is not None and s == s]
        best = (max(finite) if self._mode == "max" else min(finite)) if finite else None
        self._bar.update(self._task, completed=step, best="-" if best is None else f"{best:.5g}")

    def close(self) -> None:
        self._bar.stop()
