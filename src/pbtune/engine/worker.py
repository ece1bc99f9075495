"""The worker loop: lease a member, train it to its next checkpoint, decide, repeat.

Any number of workers (local processes, Ray actors, `pbtune worker` under SLURM) run this loop
against the same stores; they coordinate only through leases in the population store.
"""

from __future__ import annotations

import importlib
import importlib.util
import logging
import os
import shutil
import sys
import tempfile
import threading
import time
import traceback
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from pbtune.checkpoints import CheckpointStore
from pbtune.config import RunConfig
from pbtune.engine.trainable import Trainable, member_seed
from pbtune.errors import CheckpointWriteError, InvalidConfigError, LeaseLostError, PBTuneError
from pbtune.member import Member
from pbtune.round import generation_deciding
from pbtune.store import open_store
from pbtune.store.base import PopulationStore, ScorePoint
from pbtune.types import MemberRecord

__all__ = ["load_trainable", "Worker", "WorkerStats"]

log = logging.getLogger(__name__)

TrainableFactory = Callable[[], Trainable]

HELD_CHECK_SECONDS = 1.0  # see Worker._held_member


def load_trainable(target: str) -> type[Trainable]:
    """Import ``"package.module:Class"`` or ``"path/to/file.py:Class"``."""
    path, sep, attr = target.rpartition(":")
    if not sep or not path or not attr:
        raise InvalidConfigError("trainable", "config", "'module:Class' or 'file.py:Class'", target)
    try:
        if path.endswith(".py"):
            module_name = f"pbtune_user_{abs(hash(os.path.abspath(path)))}"
            module = sys.modules.get(module_name)
            if module is None:
                spec = importlib.util.spec_from_file_location(module_name, path)
                if spec is None or spec.loader is None:
                    raise ImportError(f"cannot load {path}")
                module = importlib.util.module_from_spec(spec)
                sys.modules[module_name] = module
                spec.loader.exec_module(module)
        else:
            module = importlib.import_module(path)
        cls = getattr(module, attr)
    except (ImportError, AttributeError, FileNotFoundError) as exc:
        raise InvalidConfigError("trainable", "config", "an importable Trainable subclass", target) from exc
    if not (isinstance(cls, type) and issubclass(cls, Trainable)):
        raise InvalidConfigError("trainable", "config", "a subclass of pbtune.Trainable", target)
    return cls


@dataclass
class WorkerStats:
    segments: int = 0
    steps: int = 0
    failures: int = 0
    # seconds spent in report (+ checkpoint) and should_exploit at each checkpoint: PBT's overhead
    decision_seconds: list[float] = field(default_factory=list)


class _Heartbeat(threading.Thread):
    """Extends this worker's leases while a long step runs."""

    def __init__(self, store: PopulationStore, run: str, worker: str, lease_seconds: float) -> None:
        super().__init__(daemon=True, name=f"pbtune-heartbeat-{worker}")
        self._store, self._run, self._worker, self._lease = store, run, worker, lease_seconds
        self._stop_event = threading.Event()

    def run(self) -> None:
        while not self._stop_event.wait(self._lease / 3):
            try:
                self._store.heartbeat(self._run, self._worker, self._lease)
            except PBTuneError as exc:  # the next beat tries again; the lease has slack
                log.warning("heartbeat failed: %s", exc)

    def stop(self) -> None:
        self._stop_event.set()


class Worker:
    """Trains members of one run until every member is finished or failed.

    Args:
        config: the run (it must already exist in the store: see :class:`pbtune.Population`).
        trainable: a Trainable subclass or a zero-argument factory.
        worker_id: unique name of this worker (defaults to host-pid-random).
        time_share: release a member at each checkpoint so others can use this worker;
            needed when the population is larger than the number of workers.
    """

    def __init__(
        self,
        config: RunConfig,
        trainable: type[Trainable] | TrainableFactory,
        *,
        worker_id: str | None = None,
        time_share: bool | None = None,
        store: PopulationStore | None = None,
        checkpoints: CheckpointStore | None = None,
        poll_seconds: float = 0.1,
        flush_seconds: float = 1.0,
        storage_retry_seconds: float = 300.0,
    ) -> None:
        self.config = config
        self._factory: TrainableFactory = (
            (lambda: trainable(**config.trainable_args))  # type: ignore[misc,call-arg]
            if isinstance(trainable, type)
            else trainable
        )
        self.worker_id = worker_id or f"{os.uname().nodename}-{os.getpid()}-{uuid.uuid4().hex[:6]}"
        self.time_share = config.population > config.workers if time_share is None else time_share
        self.store = store if store is not None else open_store(config.storage)
        self.checkpoints = checkpoints if checkpoints is not None else CheckpointStore(config.checkpoints)
        self._poll = poll_seconds
        self.flush_seconds = flush_seconds  # scores between checkpoints are written at most this late
        self.storage_retry_seconds = storage_retry_seconds  # a checkpoint write is retried this long
        self._scratch = tempfile.mkdtemp(prefix="pbtune-worker-")
        self._cached: tuple[int, str | None, Trainable] | None = None  # (member, checkpoint key, trainable)
        self.stats = WorkerStats()

    def run(self) -> WorkerStats:
        heartbeat = _Heartbeat(self.store, self.config.name, self.worker_id, self.config.lease_seconds)
        heartbeat.start()
        checked = -float("inf")  # when this worker last looked for members it already leases
        try:
            while True:
                record = None
                if time.monotonic() - checked >= HELD_CHECK_SECONDS:
                    record, checked = self._held_member(), time.monotonic()
                record = record or self.store.claim(
                    self.config.name, self.worker_id, self.config.lease_seconds, self.config.budget
                )
                if record is None:
                    if self._all_done():
                        return self.stats
                    checked = -float("inf")  # nothing to claim: maybe because we hold it
                    time.sleep(self._poll)
                    continue
                self._train_segment(record)
        finally:
            heartbeat.stop()
            shutil.rmtree(self._scratch, ignore_errors=True)

    def _held_member(self) -> MemberRecord | None:
        """A member this worker already leases: one from before a restart under the same worker id
        (Ray actors), or a claim whose reply a dropped connection lost (the store's retry then
        claimed another). Looked for at the start, when nothing can be claimed, and at most every
        HELD_CHECK_SECONDS otherwise: not one more transaction per segment."""
        held = self.store.heartbeat(self.config.name, self.worker_id, self.config.lease_seconds)
        return self.store.get_member(self.config.name, min(held)) if held else None

    def _all_done(self) -> bool:
        return all(m.state.is_final for m in self.store.list_members(self.config.name))

    # -- one member, from its claim to its release ---------------------------------------------
    def _train_segment(self, record: MemberRecord) -> None:
        member = Member(self.store, self.checkpoints, self.config, record.member_id, worker=self.worker_id,
                        record=record)
        self.stats.segments += 1
        try:
            trainable = self._restore(member)
            self._train(member, trainable)
        except LeaseLostError as exc:
            log.warning("%s", exc)  # another worker resumed this member; drop our copy
            self._cached = None
        except Exception:  # the user's code failed: record it, keep the run going
            self.stats.failures += 1
            self._cached = None
            member.fail_or_replace(traceback.format_exc())  # restarts from a donor while max_failures allows

    def _restore(self, member: Member) -> Trainable:
        record = member.record
        if self._cached is not None and self._cached[:2] == (member.member_id, record.checkpoint):
            return self._cached[2]
        self._cached = None
        trainable = self._factory()
        self._bind(trainable, member)
        trainable.setup(member.hparams)
        path = member.parameters_path()
        if path is not None:
            trainable.load(path)
        return trainable

    def _train(self, member: Member, trainable: Trainable) -> None:
        config = self.config
        interval = config.effective_checkpoint_interval
        step = member.step
        pending: list[ScorePoint] = []  # scores not yet written: one transaction per flush, not per step
        last_flush = time.monotonic()
        if config.sync and step < config.budget:  # released while its generation waited
            decided = self._decide(member, trainable) if member.is_ready() else self._hold(member, trainable)
            if decided is None:
                return
            trainable = decided
        while step < config.budget:
            metrics = trainable.step()
            step += 1
            score = _score_of(metrics, config.metric)
            self.stats.steps += 1
            at_checkpoint = step % interval == 0 or step >= config.budget
            if not at_checkpoint and time.monotonic() - last_flush < self.flush_seconds:
                pending.append(ScorePoint(step, score, _plain(metrics)))
                continue
            checkpoint = None
            if at_checkpoint:
                checkpoint = os.path.join(self._scratch, f"m{member.member_id}-s{step}.ckpt")
                trainable.save(checkpoint)
            started = time.perf_counter()
            try:
                self._report(member, step, score, checkpoint=checkpoint, metrics=_plain(metrics), earlier=pending,
                             decide=checkpoint is not None and step < config.budget)  # one transaction
            finally:
                if checkpoint is not None:
                    _remove(checkpoint)
            pending, last_flush = [], time.monotonic()
            if checkpoint is None or step >= config.budget:
                continue
            decided = self._decide(member, trainable)
            self.stats.decision_seconds.append(time.perf_counter() - started)
            if decided is None:
                return
            trainable = decided
            if self.time_share:
                self._cached = (member.member_id, member.record.checkpoint, trainable)
                member.pause()
                return
        member.finish()
        self._cached = None

    def _decide(self, member: Member, trainable: Trainable) -> Trainable | None:
        """The member's ready point: exploit and explore if told to. In generational mode it first
        waits for its generation; a time-sharing worker releases it meanwhile (None) to train the
        members that are behind."""
        exploit = member.should_exploit()
        while member.waiting:
            if self.time_share:
                self._cached = (member.member_id, member.record.checkpoint, trainable)
                member.pause()
                time.sleep(self._poll)
                return None
            time.sleep(self._poll)
            exploit = member.should_exploit()
        if exploit and member.exploit() is not None:
            trainable = self._adopt(member, trainable)
        return self._hold(member, trainable) if self.config.sync else trainable

    def _hold(self, member: Member, trainable: Trainable) -> Trainable | None:
        """Generational mode: train on only once every member has decided at this step, so no donor
        has moved past the step its generation was ranked at; meanwhile a time-sharing worker
        releases the member (None)."""
        while generation_deciding(self.config, self.store.list_members(self.config.name), member.member_id):
            if self.time_share:
                self._cached = (member.member_id, member.refresh().checkpoint, trainable)
                member.pause()
                time.sleep(self._poll)
                return None
            time.sleep(self._poll)
        return trainable

    def _report(self, member: Member, step: int, score: float, **report: Any) -> None:
        """``member.report``, retried with backoff while the checkpoint store cannot be written
        (disk full, storage unreachable); the lease is kept by the heartbeat meanwhile. Past
        ``storage_retry_seconds`` the error fails the member (``pbtune run --retry-failed``
        resumes it from its last checkpoint)."""
        deadline = time.monotonic() + self.storage_retry_seconds
        delay = 0.5
        while True:
            try:
                member.report(step, score, **report)
                return
            except CheckpointWriteError as exc:
                if time.monotonic() + delay > deadline:
                    raise
                log.warning("member %d: %s; retrying in %.1f s", member.member_id, exc, delay)
                time.sleep(delay)
                delay = min(2 * delay, 30.0)

    def _adopt(self, member: Member, trainable: Trainable) -> Trainable:
        """Load the donor's weights and apply the explored hyperparameters."""
        new_hparams = member.explore()
        path = member.parameters_path()
        assert path is not None  # exploit() just copied a checkpoint
        if trainable.applies_hparams_in_place():
            self._bind(trainable, member)  # a new seed: the copy's data order leaves the donor's
            trainable.load(path)
            trainable.set_hparams(new_hparams)
            return trainable
        rebuilt = self._factory()
        self._bind(rebuilt, member)
        rebuilt.setup(new_hparams)
        rebuilt.load(path)
        return rebuilt

    def _bind(self, trainable: Trainable, member: Member) -> None:
        trainable.member_id = member.member_id
        trainable.seed = member_seed(self.config.seed, member.member_id, member.step)


def _score_of(metrics: Mapping[str, Any], metric: str) -> float:
    if not isinstance(metrics, Mapping) or metric not in metrics:
        keys = sorted(metrics) if isinstance(metrics, Mapping) else type(metrics).__name__
        raise PBTuneError(
            f"Trainable.step() must return a mapping with the key {metric!r} (config `metric`); got {keys}"
        )
    return float(metrics[metric])


def _plain(metrics: Mapping[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in metrics.items():
        if isinstance(value, (int, float, str, bool)) or value is None:
            out[str(key)] = value
        else:
            try:
                out[str(key)] = float(value)
            except (TypeError, ValueError):
                continue
    return out


def _remove(path: str) -> None:
    if os.path.isdir(path):
        shutil.rmtree(path, ignore_errors=True)
    elif os.path.exists(path):
        os.remove(path)
