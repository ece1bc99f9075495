"""The vectorized training loop: build (or resume) the stacked population, train it in
lockstep, evaluate, and carry out each round's plans by row copies in memory."""

from __future__ import annotations

import contextlib
import logging
import os
import time
from collections.abc import Iterator, Mapping, Sequence

import torch
from torch import nn

from pbtune.checkpoints import CheckpointStore
from pbtune.errors import InvalidConfigError, PBTuneError
from pbtune.round import ExploitPlan, plan_round, ready_members
from pbtune.store.base import PopulationStore, ScorePoint
from pbtune.types import MemberRecord
from pbtune.vectorized import persistence
from pbtune.vectorized._functional import MetricFn
from pbtune.vectorized._state import RunState
from pbtune.vectorized._writer import BackgroundWriter
from pbtune.vectorized.chunking import chunk_slices, plan_chunks
from pbtune.vectorized.population import StackedPopulation
from pbtune.vectorized.settings import Settings, member_init_seed, run_seed

__all__ = ["start", "train"]

log = logging.getLogger(__name__)


def start(
    settings: Settings, store: PopulationStore, checkpoints: CheckpointStore, records: Mapping[int, MemberRecord]
) -> RunState:
    """The run's state at its first step, or where its population checkpoint left it."""
    cfg, device = settings.config, settings.device
    size = cfg.population
    modules = []
    for member_id in range(size):
        with torch.random.fork_rng(devices=cuda_devices(settings)):
            if device.type == "cpu":
                # the CPU generator only: torch.manual_seed also queues lazy seeds for every
                # accelerator backend (0.8 ms a call: 5 % of a short run at population 32)
                torch.default_generator.manual_seed(member_init_seed(cfg.seed, member_id))
            else:
                torch.manual_seed(member_init_seed(cfg.seed, member_id))
            modules.append(settings.model_fn())
    space = settings.space
    if space.get("dropout") is not None and not any(type(m) is nn.Dropout for m in modules[0].modules()):
        raise InvalidConfigError(
            "dropout", "space", "used by an nn.Dropout module of the model (it has none)", space["dropout"].to_config()
        )
    pop = StackedPopulation(modules, settings.optimizer, device=device, tensor_hparams=list(settings.tensor_hparams))
    del modules
    pop.set_loss(settings.loss, settings.loss_takes_hparams)
    generator = torch.Generator(device=device)
    generator.manual_seed(run_seed(cfg.seed, "data"))
    x, y = (t.to(device) for t in settings.data)
    eval_data = None
    if settings.eval_data is not None:
        eval_data = (settings.eval_data[0].to(device), settings.eval_data[1].to(device))
    sample = torch.randint(
        len(x), (min(size, 2), settings.batch_size), generator=torch.Generator(device=x.device).manual_seed(0),
        device=x.device,
    )
    with vmap_errors():
        plan = plan_chunks(pop, x[sample], y[sample], chunk_size=settings.chunk_size)
    state = RunState(
        settings=settings, store=store, checkpoints=checkpoints, population=pop, generator=generator, data=(x, y),
        eval_data=eval_data,
        versions={i: r.version for i, r in records.items()}, plan=plan,
        scores=[records[i].score for i in range(size)], last_ready=[0] * size,
        recent=[list(records[i].recent) for i in range(size)], lineages=[records[i].lineage for i in range(size)],
    )
    path = settings.checkpoint_path
    if path is not None and os.path.exists(path):
        persistence.resume(state, path, records)
    else:
        trained = [i for i, r in records.items() if r.step > 0 or r.state.is_final]
        if trained:
            raise PBTuneError(
                f"run {cfg.name!r} in {cfg.storage} already has trained members ({len(trained)}) but no "
                f"population checkpoint{'' if path is None else ' at ' + path}"
                ": resume with the same checkpoint=, or start a run with a new name"
            )
        for member_id in range(size):
            pop.set_hparams(member_id, records[member_id].hparams)
        torch.manual_seed(run_seed(cfg.seed, "dropout"))
        if device.type == "cuda":
            torch.cuda.manual_seed(run_seed(cfg.seed, "dropout"))
    log.info("vectorized run %s: %s", cfg.name, plan.describe())
    return state


def cuda_devices(settings: Settings) -> list[int]:
    device = settings.device
    if device.type != "cuda":
        return []
    return [device.index if device.index is not None else torch.cuda.current_device()]


def train(state: RunState, stop: int) -> None:
    """Train to step ``stop``: batched steps, scores, ready rounds, store writes, checkpoints."""
    settings, pop = state.settings, state.population
    cfg = settings.config
    slices = chunk_slices(cfg.population, state.plan.chunk_size)
    x, y = state.data
    size, batch, device = cfg.population, settings.batch_size, settings.device
    interval = cfg.effective_checkpoint_interval
    pending: list[list[ScorePoint]] = [[] for _ in range(size)]
    last_flush = time.monotonic()
    bar = _Progress(cfg.name, cfg.budget, cfg.mode, state.step) if settings.progress else None
    tuner = state.threads
    overlap = settings.background_writes
    if overlap is None:  # the most threads the run may use, not the count it starts probing with
        most = max(tuner.candidates) if tuner is not None else torch.get_num_threads()
        overlap = device.type != "cpu" or most < (os.cpu_count() or 1)
    state.writer = BackgroundWriter(enabled=overlap)
    # Writing the checkpoint file mostly waits on the disk (fsync): it gets a thread of its
    # own unless every write must be inline. Store writes are then inline and done before a
    # save is queued, so the file on disk is still never newer than the store.
    own_thread = not overlap and settings.background_writes is not False
    state.files = BackgroundWriter(name="pbtune-vectorized-files") if own_thread else state.writer
    ok = False
    try:
        while state.step < stop:
            loss_sum = torch.zeros(size, device=device, dtype=pop.dtype)
            for _ in range(settings.batches_per_step):
                began = time.perf_counter()
                index = torch.randint(len(x), (size, batch), generator=state.generator, device=device)
                for rows in slices:
                    chunk_index = index[rows]
                    with vmap_errors():
                        loss_sum[rows] += pop.train_step(_gather(x, chunk_index), _gather(y, chunk_index), rows)
                if tuner is not None:  # CPU: ops are done when they return, so this times the step
                    took = time.perf_counter() - began
                    state.train_seconds += took
                    tuner.record(took)
            state.member_steps += size * settings.batches_per_step
            state.step += 1
            step = state.step
            train_loss = (loss_sum / settings.batches_per_step).tolist()
            if settings.metric is None or state.eval_data is None:
                scores = train_loss
            else:
                scores = evaluate(state, slices, state.eval_data, settings.metric)
            state.record_scores(scores)
            for i in range(size):
                pending[i].append(ScorePoint(step, float(scores[i]), {"loss": float(train_loss[i])}))
            final = step >= cfg.budget
            population = persistence.snapshot(state)
            ready = [] if final else ready_members(cfg, population)
            at_checkpoint = step % interval == 0 or final or step == stop
            if ready or at_checkpoint or time.monotonic() - last_flush >= settings.flush_seconds:
                persistence.flush(state, pending, final=final)
                pending = [[] for _ in range(size)]
                last_flush = time.monotonic()
            if ready:
                exploit_round(state, population, ready)
            if at_checkpoint:
                persistence.save(state)
            if bar is not None:
                bar.update(step, state.scores)
        ok = True
    finally:
        try:
            state.writer.close(raise_errors=ok)  # on an error in the loop, that error wins
        finally:
            state.files.close(raise_errors=ok)
        if bar is not None:
            bar.close()


def exploit_round(state: RunState, population: Sequence[MemberRecord], ready: Sequence[int]) -> None:
    """Plan the round (:func:`pbtune.round.plan_round`), copy rows, set explored hparams, write it."""
    pop, step = state.population, state.step
    plans = plan_round(state.settings.config, population, ready)
    for member_id in ready:
        state.last_ready[member_id] = step
    exploits = [p for p in plans.values() if isinstance(p, ExploitPlan)]
    for copy_hparams in (True, False):  # one strategy gives one kind; weights-only keeps own hparams
        group = [p for p in exploits if p.copy_hparams is copy_hparams]
        if group:
            pop.copy_members([p.donor_id for p in group], [p.member_id for p in group], copy_hparams=copy_hparams)
    for p in exploits:
        pop.set_hparams(p.member_id, p.explored)
        state.lineages[p.member_id] = p.donor_lineage
    persistence.write_round(state, plans)
    log.debug("step %d: %d exploits", step, len(exploits))


@torch.no_grad()
def evaluate(
    state: RunState, slices: Sequence[slice], eval_data: tuple[torch.Tensor, torch.Tensor], metric: MetricFn
) -> list[float]:
    """Every member's ``metric`` on ``eval_data``."""
    settings, pop = state.settings, state.population
    x, y = eval_data
    scores = torch.empty(pop.size, dtype=torch.float64)
    size = settings.eval_batch_size
    bounds = [(s, min(s + size, len(x))) for s in range(0, len(x), size)]
    for rows in slices:
        if settings.metric_name == "accuracy":
            correct = torch.zeros(rows.stop - rows.start, dtype=torch.long, device=x.device)
            for begin, end in bounds:
                correct += (pop.forward(x[begin:end], rows).argmax(dim=-1) == y[begin:end]).sum(dim=-1)
            scores[rows] = (correct.double() / len(x)).cpu()
        else:
            outputs = torch.cat([pop.forward(x[begin:end], rows) for begin, end in bounds], dim=1)
            values = torch.vmap(metric, in_dims=(0, None))(outputs, y)
            scores[rows] = values.double().cpu()
    return scores.tolist()


@contextlib.contextmanager
def vmap_errors() -> Iterator[None]:
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


class _Progress:
    """A rich progress bar over steps, with the best score so far."""

    def __init__(self, name: str, budget: int, mode: str, start_step: int) -> None:
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

        self._bar = Progress(
            TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
            TextColumn("best {task.fields[best]}"), TimeRemainingColumn(),
        )
        self._task = self._bar.add_task(name, total=budget, completed=start_step, best="-")
        self._mode = mode
        self._bar.start()

    def update(self, step: int, scores: Sequence[float | None]) -> None:
        from pbtune.ranking import fitness

        finite = [s for s in scores if s is not None and fitness(s, self._mode) > -float("inf")]
        best = (max(finite) if self._mode == "max" else min(finite)) if finite else None
        self._bar.update(self._task, completed=step, best="-" if best is None else f"{best:.5g}")

    def close(self) -> None:
        self._bar.stop()
