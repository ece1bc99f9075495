"""Run a population as Ray actors: ``pbtune run CONFIG --launcher ray [--address auto]``.

One actor per worker slot (``config.workers``), each running the ordinary pbtune worker loop
against the population store; Ray only places the processes (respecting
``resources_per_worker``) and the stores coordinate them, exactly as with local processes or
``pbtune worker``. An actor that dies (node lost, OOM kill) is replaced; its member is resumed
from its last checkpoint once its lease expires.

The stores must be reachable from every node: PostgreSQL and s3:// (or a shared file system)
on a multi-node cluster; SQLite and local folders only on a single machine.
"""

from __future__ import annotations

import json
import logging
import os
import time
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import asdict
from typing import Any

from pbtune.checkpoints import CheckpointStore
from pbtune.config import RunConfig
from pbtune.engine.local import Monitor
from pbtune.engine.trainable import Trainable
from pbtune.engine.worker import load_trainable
from pbtune.errors import InvalidConfigError, PBTuneError
from pbtune.member import Population
from pbtune.results import RunResult, summarize
from pbtune.validation import check_number

__all__ = ["launch_ray", "parse_resources", "ray_options"]

log = logging.getLogger(__name__)

_WHERE = "resources_per_worker"


def _import_ray() -> Any:
    try:
        import ray
    except ImportError as exc:
        raise PBTuneError(
            "the Ray launcher needs Ray: pip install 'pbtune[ray]' (or use --launcher local)"
        ) from exc
    return ray


def ray_options(resources_per_worker: Mapping[str, float] | None) -> dict[str, Any]:
    """Translate ``{"cpu": 1, "gpu": 0.5, "memory": 2e9, "custom": 1}`` into Ray actor options.

    Raises:
        InvalidConfigError: a value is not a finite number >= 0.

    Example:
        >>> ray_options({"cpu": 2, "gpu": 0.5, "accelerator_type:A100": 1})
        {'num_cpus': 2.0, 'num_gpus': 0.5, 'resources': {'accelerator_type:A100': 1.0}}
    """
    given = {"cpu": 1} if resources_per_worker is None else resources_per_worker
    if not isinstance(given, Mapping):
        raise InvalidConfigError(_WHERE, "ray launcher", 'a mapping such as {"cpu": 1, "gpu": 0.5}', given)
    options: dict[str, Any] = {}
    custom: dict[str, float] = {}
    for key, value in given.items():
        check_number(value, f"{_WHERE}.{key}", "ray launcher", low=0)
        name = str(key)
        builtin = {"cpu": "num_cpus", "gpu": "num_gpus", "memory": "memory"}.get(name.lower())
        if builtin is not None:
            options[builtin] = int(value) if builtin == "memory" else float(value)
        else:
            custom[name] = float(value)
    options.setdefault("num_cpus", 1.0)  # Ray's actor default is 0 CPUs: unbounded packing
    if custom:
        options["resources"] = custom
    return options


def parse_resources(text: str | None) -> dict[str, float] | None:
    """``--resources-per-worker '{"cpu": 1, "gpu": 0.5}'`` -> a mapping (None stays None).

    Raises:
        InvalidConfigError: not a JSON object of numbers.

    Example:
        >>> parse_resources('{"cpu": 2, "gpu": 0.5}')
        {'cpu': 2, 'gpu': 0.5}
    """
    if text is None:
        return None
    try:
        value = json.loads(text)
    except json.JSONDecodeError:
        value = None
    if not isinstance(value, dict):
        raise InvalidConfigError("--resources-per-worker", "pbtune run", 'a JSON object such as {"cpu": 1, "gpu": 0.5}',
                                 text)
    ray_options(value)  # validates every value
    return value


def _portable(config: RunConfig) -> RunConfig:
    """Make local paths absolute: Ray workers need not share the driver's working directory."""
    data = config.to_dict()
    prefix = "sqlite:///"
    if data["storage"].startswith(prefix) and not data["storage"].startswith(prefix + "/"):
        path = data["storage"][len(prefix):]
        if path and path != ":memory:":
            data["storage"] = prefix + os.path.abspath(path)
    if "://" not in data["checkpoints"]:
        data["checkpoints"] = os.path.abspath(data["checkpoints"])
    if data["storage"] in ("sqlite://", prefix, prefix + ":memory:"):
        raise InvalidConfigError("storage", "config", "a store that Ray workers can reach (not in-memory SQLite)",
                                 data["storage"])
    return RunConfig.from_dict(data)


class _RayWorker:
    """Body of one Ray actor: the ordinary worker loop in the actor's process."""

    def __init__(self, config: dict[str, Any], trainable: type[Trainable] | str, worker_id: str,
                 storage_options: dict[str, Any]) -> None:
        from pbtune.scaleout.worker import limit_threads

        limit_threads()
        self._config, self._trainable, self._worker_id = config, trainable, worker_id
        self._storage_options = storage_options

    def run(self) -> dict[str, Any]:
        from pbtune.engine.worker import Worker

        config = RunConfig.from_dict(self._config)
        cls = load_trainable(self._trainable) if isinstance(self._trainable, str) else self._trainable
        checkpoints = CheckpointStore(config.checkpoints, **self._storage_options)
        stats = Worker(config, cls, worker_id=self._worker_id, checkpoints=checkpoints).run()
        return {"worker": self._worker_id, **asdict(stats)}


def launch_ray(
    config: RunConfig,
    trainable: type[Trainable] | str | None = None,
    address: str | None = None,
    resources_per_worker: Mapping[str, float] | None = None,
    progress: bool | str = True,
    *,
    storage_options: Mapping[str, Any] | None = None,
    max_restarts: int | None = None,
    monitors: Sequence[Monitor] = (),
    init_kwargs: Mapping[str, Any] | None = None,
    extend_budget: bool = False,
    retry_failed: bool = False,
) -> RunResult:
    """Train the population on ``config.workers`` Ray actors and return the best member.

    Args:
        config: the run (created in the store if new, resumed otherwise).
        trainable: a Trainable subclass or ``"module:Class"``; defaults to ``config.trainable``.
        address: Ray cluster address (``"auto"`` joins a running cluster); None starts a local
            Ray instance unless one is already initialised in this process.
        resources_per_worker: what each actor reserves, e.g. ``{"cpu": 1, "gpu": 0.5}``
            (default one CPU); other keys are Ray custom resources.
        progress: ``True``: a live table and progress bar; ``"quiet"``: a plain progress line
            every 10 s (CI logs); ``False``: nothing (as in ``pbtune.run``).
        storage_options: fsspec options of the checkpoint store (e.g. ``endpoint_url``).
        max_restarts: actors replaced after they die (default ``3 * workers``).
        monitors: objects with ``update(store, config)`` and ``close()`` (as in ``pbtune.run``).
        init_kwargs: extra ``ray.init`` arguments when this call starts Ray.
        extend_budget / retry_failed: as in :func:`pbtune.run`.

    Raises:
        PBTuneError: Ray is not installed, or an actor died after all restarts were used.
        InvalidConfigError: bad ``resources_per_worker`` or an unreachable store.

    Example::

        result = launch_ray(load_config("exp.yaml"), address="auto", resources_per_worker={"cpu": 2, "gpu": 1})
        print(result.best.score, result.checkpoint_path)
    """
    ray = _import_ray()
    options = ray_options(resources_per_worker if resources_per_worker is not None else config.resources_per_worker)
    config = _portable(config)
    target = trainable if trainable is not None else config.trainable
    if target is None:
        raise PBTuneError("no trainable: pass one to launch_ray() or set `trainable` in the config")
    if isinstance(target, str):
        load_trainable(target)  # fail here, not in every actor
    opts = dict(storage_options or {})
    _ensure_sqlite_folder(config.storage)
    population = Population(config, checkpoints=CheckpointStore(config.checkpoints, **opts),
                            extend_budget=extend_budget, retry_failed=retry_failed)
    if all(m.state.is_final for m in population.members()):  # resumed a finished run
        return summarize(config, population.store, population.checkpoints)
    started_here = not ray.is_initialized()
    if started_here:
        ray.init(address=address, **dict(init_kwargs or {}))
    actor_class = ray.remote(_RayWorker).options(max_restarts=0, **options)
    config_dict = config.to_dict()
    restarts_left = 3 * config.workers if max_restarts is None else max_restarts
    watchers: list[Monitor] = list(monitors)
    if progress:
        from pbtune.report.live import LiveDisplay

        watchers.insert(0, LiveDisplay(quiet=progress == "quiet"))

    def start(index: int) -> tuple[Any, Any]:
        worker_id = f"{config.name}-ray{index}-{uuid.uuid4().hex[:8]}"
        actor = actor_class.remote(config_dict, target, worker_id, opts)
        return actor, actor.run.remote()

    slots = [start(i) for i in range(config.workers)]
    pending = {ref: index for index, (_, ref) in enumerate(slots)}  # calls still running
    try:
        while True:
            for watcher in watchers:
                watcher.update(population.store, config)
            if all(m.state.is_final for m in population.store.list_members(config.name)):
                break
            if not pending:  # every actor saw the population done; re-read the store
                time.sleep(0.2)
                continue
            finished, _ = ray.wait(list(pending), num_returns=len(pending), timeout=0.2)
            for ref in finished:
                index = pending.pop(ref)
                try:
                    log.info("ray worker finished: %s", ray.get(ref))
                except ray.exceptions.RayError as exc:
                    if restarts_left <= 0:
                        raise PBTuneError(
                            f"a Ray worker of run {config.name!r} died and no restarts are left: {exc}"
                        ) from exc
                    restarts_left -= 1
                    log.warning("ray worker %d died (%s); starting a replacement", index, type(exc).__name__)
                    ray.kill(slots[index][0])
                    slots[index] = start(index)
                    pending[slots[index][1]] = index
    finally:
        for actor, _ in slots:
            ray.kill(actor)
        for watcher in watchers:
            watcher.update(population.store, config)
            watcher.close()
        if started_here:
            ray.shutdown()
    return summarize(config, population.store, population.checkpoints)


def _ensure_sqlite_folder(url: str) -> None:
    prefix = "sqlite:///"
    if url.startswith(prefix):
        folder = os.path.dirname(url[len(prefix):])
        if folder:
            os.makedirs(folder, exist_ok=True)
