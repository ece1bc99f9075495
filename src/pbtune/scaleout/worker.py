"""A plain worker process for any scheduler (SLURM ``srun``, a Kubernetes Job, ``ssh``).

It joins a run that exists in the population store, trains members until every member is
finished or failed, and exits. Workers may join and leave at any time: a worker that is
killed loses its lease after ``lease_seconds`` and another one resumes its member from the
last checkpoint; a worker stopped with SIGTERM/SIGINT gives its lease up at once.
"""

from __future__ import annotations

import logging
import os
import signal
import threading
import time
from collections.abc import Mapping
from types import FrameType
from typing import Any

from pbtune.checkpoints import CheckpointStore
from pbtune.config import RunConfig
from pbtune.engine.worker import Worker, WorkerStats, load_trainable
from pbtune.errors import InvalidConfigError, NotFoundError
from pbtune.member import Population
from pbtune.store import open_store
from pbtune.store.base import PopulationStore

__all__ = ["Stopped", "join_config", "limit_threads", "run_worker"]

log = logging.getLogger(__name__)


class Stopped(BaseException):
    """Raised in the worker's main thread by SIGTERM/SIGINT (a BaseException, so the worker
    loop does not record it as the member's failure)."""

    def __init__(self, signum: int) -> None:
        super().__init__(f"stopped by signal {signum}")
        self.signum = signum


def limit_threads() -> None:
    """One compute thread per worker process: many workers oversubscribing cores is ~10x slower."""
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    try:
        import torch
    except ImportError:
        return
    torch.set_num_threads(1)


def join_config(
    store: PopulationStore,
    run: str,
    *,
    storage: str,
    checkpoints: str | None = None,
    wait_seconds: float = 0.0,
) -> RunConfig:
    """The run's stored config, with the store and checkpoint URLs as this worker sees them.

    Waits up to ``wait_seconds`` for the run to appear (workers may start before the driver).

    Raises:
        NotFoundError: the run does not exist (after waiting).
    """
    deadline = time.monotonic() + wait_seconds
    while True:
        try:
            record = store.get_run(run)
            break
        except NotFoundError:
            if time.monotonic() >= deadline:
                raise
            time.sleep(min(1.0, max(0.0, deadline - time.monotonic())))
    data = dict(record.config)
    data["storage"] = storage
    if checkpoints is not None:
        data["checkpoints"] = checkpoints
    return RunConfig.from_dict(data)


def run_worker(
    run: str,
    storage: str,
    *,
    checkpoints: str | None = None,
    trainable: str | None = None,
    worker_id: str | None = None,
    storage_options: Mapping[str, Any] | None = None,
    wait_seconds: float = 0.0,
    poll_seconds: float = 0.5,
    create_from: RunConfig | None = None,
) -> WorkerStats:
    """Train members of ``run`` until the whole population is done; return what this worker did.

    Args:
        run: name of a run that exists in the store (created by ``pbtune run`` or ``Population``).
        storage: SQLAlchemy URL of the population store.
        checkpoints: checkpoint URL as seen from this machine (default: the run's).
        trainable: ``"module:Class"`` or ``"file.py:Class"`` (default: the run's ``trainable``).
        worker_id: unique name (default host-pid-random).
        storage_options: fsspec options for the checkpoint store (e.g. ``endpoint_url``).
        wait_seconds: how long to wait for the run to be created.
        poll_seconds: pause between claims while every runnable member is held by others.
        create_from: create the run from this config if the store lacks it (every worker of a
            SLURM job may pass the same config; the first one creates, the stored config wins).

    Raises:
        Stopped: SIGTERM or SIGINT arrived; this worker's leases were given up first.

    Example::

        stats = run_worker("exp1", "postgresql+psycopg://pbt@db/pbt", checkpoints="s3://bucket/exp1")
    """
    limit_threads()
    store = open_store(storage)
    try:
        options = dict(storage_options or {})
        if create_from is not None:
            Population(create_from, store=store,
                       checkpoints=CheckpointStore(checkpoints or create_from.checkpoints, **options))
        config = join_config(store, run, storage=storage, checkpoints=checkpoints, wait_seconds=wait_seconds)
        target = trainable or config.trainable
        if target is None:
            raise InvalidConfigError("trainable", f"run {run!r}", "set (pass --trainable module:Class)", None)
        cls = load_trainable(target)
        ckpts = CheckpointStore(config.checkpoints, **options)
        # The number of workers is unknown and changes: release members at every checkpoint.
        worker = Worker(config, cls, worker_id=worker_id, time_share=True, store=store,
                        checkpoints=ckpts, poll_seconds=poll_seconds)
        with _stop_on_signals():
            try:
                return worker.run()
            except Stopped:
                _give_up_leases(store, config, worker.worker_id)
                raise
    finally:
        store.close()


class _stop_on_signals:
    """Turn SIGTERM/SIGINT into :class:`Stopped` in the main thread, restoring handlers after."""

    _SIGNALS = (signal.SIGTERM, signal.SIGINT)

    def __enter__(self) -> None:
        self._previous: dict[int, Any] = {}
        if threading.current_thread() is not threading.main_thread():
            return  # signals are only delivered to the main thread
        for signum in self._SIGNALS:
            self._previous[signum] = signal.signal(signum, self._raise)

    @staticmethod
    def _raise(signum: int, _frame: FrameType | None) -> None:
        raise Stopped(signum)

    def __exit__(self, *_exc: object) -> None:
        for signum, handler in self._previous.items():
            signal.signal(signum, handler)


def _give_up_leases(store: PopulationStore, config: RunConfig, worker_id: str) -> None:
    """Let other workers take this worker's members now instead of after ``lease_seconds``.

    Expiring the lease (rather than pausing the member) makes the next claimer roll the member
    back to its last checkpoint and record a ``resume`` event, exactly as after a crash.
    """
    beat = f"pbtune-heartbeat-{worker_id}"
    for thread in threading.enumerate():
        if thread.name == beat:
            thread.join(timeout=config.lease_seconds)  # a beat in flight would extend the lease again
    try:
        held = store.heartbeat(config.name, worker_id, 0.0)
    except Exception as exc:  # noqa: BLE001 - leaving anyway; the lease then expires on its own
        log.warning("could not give up the leases of %s: %s", worker_id, exc)
        return
    if held:
        log.info("worker %s left; members %s are free for other workers", worker_id, sorted(held))
