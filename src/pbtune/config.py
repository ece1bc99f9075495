"""Run configuration: one validated object built from Python keywords or a JSON/YAML file.

Example:
    >>> cfg = RunConfig(name="demo", space={"lr": {"type": "float", "low": 1e-3, "high": 1.0, "log": True}},
    ...                 population=4, budget=20, ready={"interval": 5})
    >>> cfg.exploit
    Truncation(quantile=0.2, copy_hparams=True, max_copies=None, rounding='floor', max_lineage_share=None)
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from typing import Any

from pbtune._storage_url import check_storage_url
from pbtune.engine.devices import check_devices, check_gpus_per_worker, worker_shares
from pbtune.errors import InvalidConfigError
from pbtune.initial import INITS
from pbtune.ranking import Ranking, check_mode, ranking_from_config
from pbtune.space import Space
from pbtune.strategies import (
    ExploitStrategy,
    ExploreStrategy,
    PerturbOrResample,
    Ready,
    Truncation,
    exploit_from_config,
    explore_from_config,
    ready_from_config,
    strategy_config,
)
from pbtune.validation import check_bool, check_int, check_number, is_number

__all__ = ["RunConfig", "load_config", "read_config_file", "DEFAULT_DIR", "UNBOUNDED_BUDGET", "is_unbounded",
           "budget_text"]

DEFAULT_DIR = "pbtune-runs"
# the budget of a server run whose clients decide when to stop (stored as an int: the store and
# the planner compare steps with it); displays say "no budget" instead of showing it
UNBOUNDED_BUDGET = 1_000_000_000


def is_unbounded(budget: Any) -> bool:
    """True for the budget of a run whose clients decide when to stop (or none at all)."""
    return not isinstance(budget, int) or budget >= UNBOUNDED_BUDGET


def budget_text(budget: Any) -> str:
    """How displays name a run's budget.

    Example:
        >>> budget_text(50), budget_text(UNBOUNDED_BUDGET)
        ('budget 50 steps each', 'no budget (clients decide when to stop)')
    """
    return "no budget (clients decide when to stop)" if is_unbounded(budget) else f"budget {budget} steps each"


def _int(value: Any, field_name: str, minimum: int) -> int:
    return check_int(value, field_name, "config", minimum=minimum)


def _finite_positive(value: Any, field_name: str) -> float:
    # inf passes `> 0` and then breaks every timer built on it (the heartbeat thread died on it)
    return check_number(value, field_name, "config", low=0, low_open=True)


# The store's run-name columns hold 200 characters, and the checkpoint store uses the name as a
# folder name (255 bytes on most file systems): leave room in both.
MAX_NAME_CHARS = 100
MAX_NAME_BYTES = 200


def _check_name(name: Any) -> None:
    if not isinstance(name, str) or not name or "/" in name or ".." in name:
        raise InvalidConfigError("name", "config", "a non-empty string without '/' or '..'", name)
    if len(name) > MAX_NAME_CHARS or len(name.encode("utf-8", "surrogatepass")) > MAX_NAME_BYTES:
        raise InvalidConfigError("name", "config", f"at most {MAX_NAME_CHARS} characters ({MAX_NAME_BYTES} bytes"
                                 " in UTF-8)", f"{name[:40]}... ({len(name)} characters)")
    if not name.isprintable():  # control characters, lone surrogates: no file or column takes them
        raise InvalidConfigError("name", "config", "printable characters only", name)


@dataclass
class RunConfig:
    """Everything a PBT run needs. Strategies and the space accept their config forms.

    Attributes:
        name: the run's name in the store.
        space: hyperparameter domains (a :class:`Space` or its config mapping).
        population: number of members (>= 2).
        budget: training steps per member.
        workers: local worker processes (``pbtune.run``); members time-share them.
        mode: ``"max"`` or ``"min"``: the direction of ``metric``.
        metric: the key of the trainable's step result that is the score.
        ready / exploit / explore: strategies (objects or config forms).
        ranking: how members are compared (:class:`~pbtune.ranking.Ranking`; ``{"window": k}``
            ranks by the mean of the last k scores).
        init: first hyperparameters: ``"random"`` (sampled with ``seed``) or ``"grid"`` (spread
            over a grid of the space; with ``exploit: none`` that is grid search).
        max_failures: failed members replaced per run (restarted from the best member's
            checkpoint with explored hyperparameters) before failures are final; 0: none.
        sync: generational PBT: a member at a ready point waits until every member that has not
            failed reached that step, and members are ranked at the same step.
        seed: seeds initial sampling and every decision.
        storage: SQLAlchemy URL of the population store.
        checkpoints: folder or fsspec URL of the checkpoint store.
        keep_checkpoints: newest checkpoints kept per member (>= 1); see docs on disk bounds.
        checkpoint_interval: steps between checkpoints; defaults to the ready interval.
        lease_seconds: a worker that stops heartbeating for this long loses its member.
        trainable: ``"module:Class"`` or ``"path/to/file.py:Class"`` (for ``pbtune run``).
        trainable_args: keyword arguments for the trainable's constructor.
        resources_per_worker: what each Ray actor reserves (``--launcher ray``), e.g. ``{"cpu": 1, "gpu": 0.5}``.
        gpus_per_worker: GPUs each local worker process sees through ``CUDA_VISIBLE_DEVICES``: a
            fraction in (0, 1) packs ``floor(1/g)`` workers on a device, a whole number gives each
            worker its own devices, 0 hides the GPUs (:mod:`pbtune.engine.devices`). None: inherit.
        devices: device ids (or UUIDs) to place the workers on; default: the driver's
            ``CUDA_VISIBLE_DEVICES``, else what ``nvidia-smi -L`` lists.
    """

    name: str
    space: Any
    population: int = 8
    budget: int = 100
    workers: int = 1
    mode: str = "max"
    metric: str = "score"
    # Config forms ("truncation", {"interval": 10}, ...) are accepted too and converted on construction.
    ready: Ready = field(default_factory=lambda: Ready(interval=10))
    exploit: ExploitStrategy = field(default_factory=Truncation)
    explore: ExploreStrategy = field(default_factory=PerturbOrResample)
    ranking: Ranking = field(default_factory=Ranking)
    init: str = "random"
    max_failures: int = 0
    sync: bool = False
    seed: int = 0
    storage: str = f"sqlite:///{DEFAULT_DIR}/pbtune.db"
    checkpoints: str = f"{DEFAULT_DIR}/checkpoints"
    keep_checkpoints: int = 2
    checkpoint_interval: int | None = None
    lease_seconds: float = 60.0
    trainable: str | None = None
    trainable_args: dict[str, Any] = field(default_factory=dict)
    resources_per_worker: dict[str, float] | None = None
    gpus_per_worker: float | None = None
    devices: list[int | str] | None = None

    def __post_init__(self) -> None:
        _check_name(self.name)
        if not isinstance(self.space, Space):
            self.space = Space(self.space)
        self.population = _int(self.population, "population", 2)
        self.budget = _int(self.budget, "budget", 1)
        self.workers = _int(self.workers, "workers", 1)
        self.seed = _int(self.seed, "seed", 0)
        self.keep_checkpoints = _int(self.keep_checkpoints, "keep_checkpoints", 1)
        check_mode(self.mode, "config")
        if not isinstance(self.metric, str) or not self.metric:
            raise InvalidConfigError("metric", "config", "a non-empty string", self.metric)
        self.ready = ready_from_config(self.ready)
        self.exploit = exploit_from_config(self.exploit)
        self.explore = explore_from_config(self.explore)
        self.ranking = ranking_from_config(self.ranking)
        self.max_failures = _int(self.max_failures, "max_failures", 0)
        self.sync = check_bool(self.sync, "sync", "config")
        if self.init not in INITS:
            raise InvalidConfigError("init", "config", f"one of {list(INITS)}", self.init)
        if self.checkpoint_interval is not None:
            self.checkpoint_interval = _int(self.checkpoint_interval, "checkpoint_interval", 1)
        self.lease_seconds = _finite_positive(self.lease_seconds, "lease_seconds")
        check_storage_url(self.storage)
        if not isinstance(self.checkpoints, str) or not self.checkpoints:
            raise InvalidConfigError("checkpoints", "config", "a folder or fsspec URL", self.checkpoints)
        if self.trainable is not None and (not isinstance(self.trainable, str) or ":" not in self.trainable):
            raise InvalidConfigError("trainable", "config", "'module:Class' or 'file.py:Class'", self.trainable)
        if not isinstance(self.trainable_args, Mapping):
            raise InvalidConfigError("trainable_args", "config", "a mapping", self.trainable_args)
        if self.resources_per_worker is not None and not (
            isinstance(self.resources_per_worker, Mapping)
            and all(is_number(v) and v >= 0 for v in self.resources_per_worker.values())
        ):
            raise InvalidConfigError("resources_per_worker", "config", 'a mapping like {"cpu": 1, "gpu": 0.5}',
                                     self.resources_per_worker)
        self.gpus_per_worker = check_gpus_per_worker(self.gpus_per_worker)
        self.devices = check_devices(self.devices)
        if self.devices is not None:  # listed devices: check now that the workers fit on them
            worker_shares(self.workers, self.gpus_per_worker, self.devices)

    @property
    def effective_checkpoint_interval(self) -> int:
        return self.checkpoint_interval or self.ready.interval

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], *, base_dir: str | None = None) -> RunConfig:
        """Build from a mapping (e.g. a parsed JSON/YAML file); unknown keys are errors."""
        if not isinstance(data, Mapping):
            raise InvalidConfigError("config", "file", "a mapping of settings", data)
        known = {f.name for f in fields(cls)}
        for key in data:
            if key not in known:
                raise InvalidConfigError(key, "config", f"one of {sorted(known)}", data[key])
        for required in ("name", "space"):
            if required not in data:
                raise InvalidConfigError(required, "config", "set", None)
        values = dict(data)
        if base_dir and isinstance(values.get("trainable"), str):
            values["trainable"] = _resolve_file_target(values["trainable"], base_dir)
        return cls(**values)

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready form (stored with the run, so any process can rebuild it)."""
        return {
            "name": self.name,
            "space": self.space.to_config(),
            "population": self.population,
            "budget": self.budget,
            "workers": self.workers,
            "mode": self.mode,
            "metric": self.metric,
            "ready": {"interval": self.ready.interval, "burn_in": self.ready.burn_in},
            "exploit": strategy_config(self.exploit),
            "explore": strategy_config(self.explore),
            "ranking": self.ranking.to_config(),
            "init": self.init,
            "max_failures": self.max_failures,
            "sync": self.sync,
            "seed": self.seed,
            "storage": self.storage,
            "checkpoints": self.checkpoints,
            "keep_checkpoints": self.keep_checkpoints,
            "checkpoint_interval": self.checkpoint_interval,
            "lease_seconds": self.lease_seconds,
            "trainable": self.trainable,
            "trainable_args": dict(self.trainable_args),
            "resources_per_worker": dict(self.resources_per_worker) if self.resources_per_worker else None,
            "gpus_per_worker": self.gpus_per_worker,
            "devices": list(self.devices) if self.devices is not None else None,
        }


def _resolve_file_target(target: str, base_dir: str) -> str:
    path, _, attr = target.rpartition(":")
    if path.endswith(".py") and not os.path.isabs(path):
        return f"{os.path.normpath(os.path.join(base_dir, path))}:{attr}"
    return target


def read_config_file(path: str) -> Any:
    """The parsed JSON or YAML of a config file (errors name the file and what is wrong)."""
    try:
        with open(path, encoding="utf-8") as handle:
            text = handle.read()
    except OSError as exc:
        raise InvalidConfigError("path", "config file", "a readable file", path) from exc
    if path.endswith((".yaml", ".yml")):
        import yaml

        try:
            return yaml.safe_load(text)
        except yaml.YAMLError as exc:
            where = getattr(exc, "problem_mark", None)
            at = f" at line {where.line + 1}, column {where.column + 1}" if where is not None else ""
            problem = getattr(exc, "problem", None) or type(exc).__name__
            raise InvalidConfigError("yaml", path, f"valid YAML ({problem}{at})", text[:80]) from None
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise InvalidConfigError("json", path, f"valid JSON ({exc})", text[:80]) from None


def load_config(path: str, **overrides: Any) -> RunConfig:
    """Read a JSON or YAML run config; relative ``.py`` trainable paths resolve against its folder."""
    data = read_config_file(path)
    from pbtune.legacy import convert_legacy_config, is_legacy_config, is_legacy_vanilla_config

    if is_legacy_config(data):  # the JSON style of the earlier MNIST-PBT project
        stem = os.path.splitext(os.path.basename(path))[0]
        data = convert_legacy_config(data, trainable=data.get("trainable"), name=data.get("name", stem))
    elif is_legacy_vanilla_config(data) or (isinstance(data, Mapping) and "hparams" in data and "space" not in data):
        raise InvalidConfigError("space", path, "set for a population run; this file trains one model (fixed "
                                 "hparams, no PBT_ keys): run it with `pbtune run FILE` or pbtune.single", None)
    if isinstance(data, dict):
        data.update({k: v for k, v in overrides.items() if v is not None})
    return RunConfig.from_dict(data, base_dir=os.path.dirname(os.path.abspath(path)))
