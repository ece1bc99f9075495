"""Run a population on local worker processes: ``pbtune.run(...)``."""

from __future__ import annotations

import dataclasses
import importlib.util
import json
import logging
import multiprocessing as mp
import os
import signal
import sys
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any, Protocol

from pbtune.config import RunConfig
from pbtune.engine import _zygote
from pbtune.engine.devices import worker_envs
from pbtune.engine.trainable import Trainable
from pbtune.engine.worker import Worker, load_trainable
from pbtune.errors import InvalidConfigError, PBTuneError
from pbtune.member import Population
from pbtune.results import RunResult, summarize
from pbtune.store.base import PopulationStore

__all__ = ["Monitor", "run", "RunResult", "summarize", "worker_main"]

log = logging.getLogger(__name__)


def worker_main(config_dict: Mapping[str, Any], trainable: type[Trainable] | str, worker_id: str,
                env: Mapping[str, str] | None = None) -> None:
    """Entry point of a local worker process; ``env`` (its GPU share) is set before the trainable runs."""
    os.environ.update(env or {})  # forked workers had it applied by the zygote already; spawned ones now
    # One thread per worker: oversubscribed torch/BLAS threads make training ~10x slower. The
    # variables cover libraries imported later; torch itself is only touched if the trainable uses it.
    for variable in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
        os.environ.setdefault(variable, "1")
    config = RunConfig.from_dict(config_dict)
    cls = load_trainable(trainable) if isinstance(trainable, str) else trainable
    if "torch" in sys.modules:
        sys.modules["torch"].set_num_threads(1)
    stats = Worker(config, cls, worker_id=worker_id).run()
    stats_dir = os.environ.get("PBTUNE_WORKER_STATS_DIR")  # diagnostics hook used by benchmarks/
    if stats_dir:
        with open(os.path.join(stats_dir, f"{worker_id}.json"), "w") as handle:
            json.dump({**dataclasses.asdict(stats), "pid": os.getpid(),
                       "CUDA_VISIBLE_DEVICES": os.environ.get("CUDA_VISIBLE_DEVICES")}, handle)


def run(
    trainable: type[Trainable] | str | None = None,
    config: RunConfig | None = None,
    *,
    display: Monitor | None = None,
    max_restarts: int | None = None,
    monitors: Sequence[Monitor] = (),
    initial: Sequence[Mapping[str, Any]] = (),
    extend_budget: bool = False,
    retry_failed: bool = False,
    **settings: Any,
) -> RunResult:
    """Train a population with PBT on ``workers`` local processes (see :func:`pbtune.run`).

    Args:
        display: the progress view, updated like a monitor; the caller picks it (:func:`pbtune.run`
            and the CLI hand in :class:`pbtune.report.live.LiveDisplay`). None: none.
    """
    if config is None:
        config = RunConfig(**settings)
    elif settings:
        raise PBTuneError("pass either config= or the config fields as keywords, not both")
    target: type[Trainable] | str | None = trainable if trainable is not None else config.trainable
    if target is None:
        raise PBTuneError("no trainable: pass one to run() or set `trainable` in the config")
    if isinstance(target, str):
        _check_reference(target)  # a typo fails here; importing it is the workers' job
    reference = target if isinstance(target, str) else _zygote.trainable_reference(target)
    # Workers fork from a warm zygote that imported the trainable by name; it starts now, while
    # this process opens the store. Spawn is the fallback (no fork, or a class without a name).
    held = [_zygote.zygote_for(reference)] if reference is not None and hasattr(os, "fork") else []
    try:
        return _run(config, target, reference, held, display, max_restarts, monitors, initial,
                    extend_budget=extend_budget, retry_failed=retry_failed)
    finally:
        for zygote in held:
            _zygote.release(zygote)


def _run(
    config: RunConfig,
    target: type[Trainable] | str,
    reference: str | None,
    held: list[_zygote.Zygote],
    display: Monitor | None,
    max_restarts: int | None,
    monitors: Sequence[Monitor],
    initial: Sequence[Mapping[str, Any]],
    *,
    extend_budget: bool,
    retry_failed: bool,
) -> RunResult:
    population = Population(config, initial=initial, extend_budget=extend_budget, retry_failed=retry_failed)
    if all(m.state.is_final for m in population.members()):  # resumed a finished run
        return summarize(config, population.store, population.checkpoints)
    if held and (error := held[0].wait_ready()) is not None:
        _zygote_failed(target, error)
        _zygote.release(held.pop())
    if held and held[0].cuda_initialized:
        log.warning("importing %r initialised CUDA in the zygote, so forked workers could not use CUDA nor their "
                    "device share: spawning them instead (create CUDA tensors in setup(), not at import)", reference)
        _zygote.release(held.pop())
    restarts_left = 3 * config.workers if max_restarts is None else max_restarts
    launch = _launcher(held, reference, target, config.to_dict())
    # each worker's GPU share (a replacement gets its predecessor's); None: the driver's environment
    envs = worker_envs(config.workers, config.gpus_per_worker, config.devices)

    started: list[str] = []  # every worker id, replacements included: their leases go back on Ctrl-C

    def start(index: int) -> Any:
        worker_id = f"{config.name}-w{index}-{os.getpid()}-{time.time_ns() % 10**8}"
        started.append(worker_id)
        return launch(worker_id, envs[index] if envs is not None else None)

    procs = [start(i) for i in range(config.workers)]
    watchers: list[Monitor] = ([display] if display is not None else []) + list(monitors)
    previous_sigterm = _sigterm_as_interrupt()
    try:
        while True:
            for watcher in watchers:
                watcher.update(population.store, config)
            members = population.store.list_members(config.name)
            if all(m.state.is_final for m in members):
                break
            for index, proc in enumerate(procs):
                if proc.is_alive():
                    continue
                proc.join()
                if restarts_left <= 0:
                    if not any(p.is_alive() for p in procs):
                        raise PBTuneError(
                            f"all workers of run {config.name!r} exited (last exit code {proc.exitcode}) "
                            "before the population finished; see the worker output above"
                        )
                    continue
                if proc.exitcode != 0 or not all(m.state.is_final for m in members):
                    restarts_left -= 1
                    log.warning("worker %d exited with %s; starting a replacement", index, proc.exitcode)
                    procs[index] = start(index)
            _zygote.worker_exited.wait(0.2)  # a worker's exit (often: the run is done) ends the wait early
            _zygote.worker_exited.clear()
        for proc in procs:
            proc.join(timeout=30)
    except KeyboardInterrupt:  # Ctrl-C or SIGTERM: stop the workers, then hand their members back now
        _stop(procs)
        _give_back_leases(population.store, config.name, started)
        raise
    finally:
        if previous_sigterm is not None:
            signal.signal(signal.SIGTERM, previous_sigterm)
        for proc in procs:
            if proc.is_alive():
                proc.terminate()
        for watcher in watchers:
            watcher.update(population.store, config)
            watcher.close()
    return summarize(config, population.store, population.checkpoints)


def _check_reference(target: str) -> None:
    """Fail early on a trainable that cannot be found, without importing it (seconds for torch)."""
    path, sep, attr = target.rpartition(":")
    try:
        found = os.path.isfile(path) if path.endswith(".py") else importlib.util.find_spec(path) is not None
    except (ImportError, ValueError):
        found = False
    if not sep or not path or not attr or not found:
        load_trainable(target)  # raises the precise InvalidConfigError


def _zygote_failed(target: type[Trainable] | str, error: str) -> None:
    """The zygote could not import the trainable: raise that here, or fall back to spawn for a class."""
    if isinstance(target, str):
        load_trainable(target)  # raises the precise error in this process
        raise InvalidConfigError("trainable", "config", f"importable by the workers ({error.strip()})", target)
    log.warning("workers cannot import %r by name; spawning them instead:\n%s", target, error)


def _launcher(
    held: list[_zygote.Zygote], reference: str | None, target: type[Trainable] | str, config: Mapping[str, Any]
) -> Callable[[str, Mapping[str, str] | None], Any]:
    """Start one worker by id and extra environment: forked by the run's zygote (``held``), else spawned."""
    if held and reference is not None:
        ref = reference

        def fork(worker_id: str, env: Mapping[str, str] | None) -> Any:
            if not held[0].alive():  # it died: hold a new one
                old, held[0] = held[0], _zygote.zygote_for(ref)
                _zygote.release(old)
            if (error := held[0].wait_ready()) is not None:
                raise PBTuneError(f"workers can no longer import {ref!r}: {error}")
            return held[0].start((config, ref, worker_id), env=env)

        return fork
    context = mp.get_context("spawn")  # fork is unsafe with threads, SQLite and torch
    # a spawned worker imports a class target (and maybe torch) before worker_main sets its env:
    # pass it by name when it has one, so CUDA_VISIBLE_DEVICES is set before that import
    by_name: type[Trainable] | str = reference if reference is not None else target

    def spawn(worker_id: str, env: Mapping[str, str] | None) -> Any:
        proc = context.Process(target=worker_main, args=(config, by_name if env else target, worker_id, env),
                               daemon=True)
        proc.start()
        return proc

    return spawn


def _sigterm_as_interrupt() -> Any:
    """SIGTERM stops the run as Ctrl-C does (so the leases go back); returns the old handler."""
    if threading.current_thread() is not threading.main_thread():
        return None

    def interrupt(_signum: int, _frame: Any) -> None:
        raise KeyboardInterrupt("SIGTERM")

    return signal.signal(signal.SIGTERM, interrupt)


def _stop(procs: Sequence[Any]) -> None:  # spawned processes or zygote-forked WorkerProcess
    for proc in procs:
        if proc.is_alive():
            proc.terminate()
    for proc in procs:
        proc.join(timeout=10)
        if proc.is_alive():
            proc.kill()
            proc.join(timeout=5)


def _give_back_leases(store: PopulationStore, run_name: str, worker_ids: Sequence[str]) -> None:
    """Expire the (now dead) workers' leases, so a resumed run takes their members at once
    instead of after ``lease_seconds``; each member resumes from its last checkpoint."""
    for worker_id in worker_ids:
        try:
            store.heartbeat(run_name, worker_id, 0.0)
        except Exception as exc:  # noqa: BLE001 - leaving anyway; the leases then expire on their own
            log.warning("could not give back the leases of %s: %s", worker_id, exc)
            return


class Monitor(Protocol):
    """Watches a running population from the driver process (reads the store only)."""

    def update(self, store: PopulationStore, config: RunConfig) -> None: ...

    def close(self) -> None: ...
