"""TensorBoard logging of a population, live during training (tensorboardX).

Layout: ``<logdir>/<run>/member-000/``, ``member-001/``, ... — one TensorBoard "run" per
member, so every chart overlays the whole population. Tags: the config's metric (``score``),
``metrics/<name>`` for the trainable's other numeric metrics, ``hparams/<name>`` for the
hyperparameters that trained each step (choices as their index), and a ``lineage`` text entry
per exploit or explore. Wall times are the store's report times.

Example::

    monitor = TensorBoardMonitor("pbtune-runs/tensorboard")
    pbtune.run(MyTrainable, config=cfg, monitors=[monitor])
    # tensorboard --logdir pbtune-runs/tensorboard
"""

from __future__ import annotations

import os
from typing import Any

from pbtune.config import DEFAULT_DIR, RunConfig
from pbtune.report._throttle import Throttle
from pbtune.report.data import RunData, load_run, scalar_points
from pbtune.store.base import PopulationStore

__all__ = ["TensorBoardMonitor", "write_tensorboard"]

DEFAULT_LOGDIR = os.path.join(DEFAULT_DIR, "tensorboard")
_NOTABLE = ("exploit", "explore", "resume", "fail")


def _summary_writer() -> Any:
    try:
        from tensorboardX import SummaryWriter
    except ImportError as exc:  # pragma: no cover - depends on the environment
        raise ImportError("TensorBoard logging needs tensorboardX: pip install 'pbtune[report]'") from exc
    return SummaryWriter


class _Writer:
    """Writes the not-yet-written part of a run; remembers how far each member got."""

    def __init__(self, logdir: str, flush_secs: int) -> None:
        self.logdir = logdir
        self._flush_secs = flush_secs
        self._writers: dict[int, Any] = {}
        self._last_step: dict[int, int] = {}
        self._seen_events: set[int] = set()  # ids, not a high-water mark: ids may commit out of order

    def writer(self, run: str, member_id: int) -> Any:
        if member_id not in self._writers:
            folder = os.path.join(self.logdir, run, f"member-{member_id:03d}")
            # purge_step=0: a later monitor rewrites the whole history from the store, and
            # TensorBoard hides what earlier event files in this folder said
            self._writers[member_id] = _summary_writer()(folder, flush_secs=self._flush_secs, purge_step=0)
        return self._writers[member_id]

    def sync(self, data: RunData) -> int:
        """Write new scores, metrics, hyperparameters and lineage text; return the number of points."""
        points = scalar_points(data, self._last_step)
        for point in points:
            writer = self.writer(data.run, point.member_id)
            for tag, value in point.values.items():
                writer.add_scalar(tag, value, point.step, walltime=point.time)
            self._last_step[point.member_id] = point.step
        for event in data.events:
            if event.id not in self._seen_events and event.kind in _NOTABLE:
                self._seen_events.add(event.id)
                self.writer(data.run, event.member_id).add_text(
                    "lineage", f"step {event.step} {event.kind}: {event.summary}", event.step, walltime=event.time
                )
        return len(points)

    def flush(self) -> None:
        for writer in self._writers.values():
            writer.flush()

    def close(self) -> None:
        for writer in self._writers.values():
            writer.close()
        self._writers.clear()


class TensorBoardMonitor:
    """A :func:`pbtune.run` monitor that mirrors the population into TensorBoard as it trains.

    Args:
        logdir: root folder; the run's data goes to ``<logdir>/<run>/member-NNN``.
        min_interval: seconds between two reads of the store (the runner calls ``update``
            about five times a second; every read loads the run's scores, so reads are also
            spaced to take at most a tenth of the time).
        flush_secs: how often tensorboardX flushes its queue to disk.

    Example::

        pbtune.run(MyTrainable, config=cfg, monitors=[TensorBoardMonitor("tb")])
    """

    def __init__(self, logdir: str = DEFAULT_LOGDIR, *, min_interval: float = 1.0, flush_secs: int = 2) -> None:
        self.logdir = logdir
        self.min_interval = min_interval
        self._writer = _Writer(logdir, flush_secs)
        self._throttle = Throttle(min_interval)
        self._source: tuple[PopulationStore, str] | None = None

    def update(self, store: PopulationStore, config: RunConfig) -> None:
        self._source = (store, config.name)
        if self._throttle.due():
            self._throttle.run(lambda: self._writer.sync(load_run(store, config.name)))

    def close(self) -> None:
        """Write what the last throttled ``update`` skipped, then close the event files."""
        if self._source is not None:
            store, run = self._source
            self._writer.sync(load_run(store, run))
        self._writer.close()


def write_tensorboard(data: RunData, logdir: str = DEFAULT_LOGDIR) -> str:
    """Write a run (finished or not) to TensorBoard event files once; return the run's folder.

    Example::

        write_tensorboard(load_run(open_store(url), "exp"), "tb")   # tensorboard --logdir tb
    """
    writer = _Writer(logdir, flush_secs=5)
    try:
        writer.sync(data)
    finally:
        writer.close()
    return os.path.join(logdir, data.run)
