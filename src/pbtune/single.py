"""Train one model with fixed hyperparameters: the baseline next to a population.

A single-model config has ``hparams`` where a population config has ``space`` (and no
population or strategies); the earlier MNIST-PBT project's ``fc.json``/``conv.json`` convert to
one (:func:`pbtune.legacy.convert_legacy_vanilla_config`)::

    name: fc-baseline
    trainable: mnist_pbt.py:MNISTTrainable
    trainable_args: {model: fc}
    hparams: {lr: 0.01, keep_prob: 0.8}
    budget: 30                 # steps

``pbtune run FILE`` trains it in the command's process, on the device share that
``gpus_per_worker``/``devices`` give it (as worker 0 of a run would get), and writes
``<checkpoints>/<name>/single-model.ckpt`` and ``single-model.json`` (score per step, last
metrics); ``pbtune run FILE --mode test`` rebuilds it from there and prints ``evaluate()``.
Training again replaces both files (each written atomically).
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, fields
from typing import Any

from pbtune.config import DEFAULT_DIR, _check_name, _resolve_file_target, read_config_file
from pbtune.engine.devices import check_devices, check_gpus_per_worker, worker_envs
from pbtune.engine.trainable import member_seed
from pbtune.errors import InvalidConfigError, NotFoundError
from pbtune.evaluate import evaluate_checkpoint, use_device_share
from pbtune.ranking import check_mode
from pbtune.validation import check_int, is_number

__all__ = ["SingleModelConfig", "SingleResult", "is_single_model_config", "load_single_config", "train_single",
           "evaluate_single", "read_single_result"]

WHERE = "single-model config"


@dataclass
class SingleModelConfig:
    """One model, fixed ``hparams``, ``budget`` steps (fields as in :class:`pbtune.RunConfig`)."""

    name: str
    trainable: str
    hparams: dict[str, Any]
    budget: int = 1
    trainable_args: dict[str, Any] = field(default_factory=dict)
    mode: str = "max"
    metric: str = "score"
    seed: int = 0
    checkpoints: str = f"{DEFAULT_DIR}/checkpoints"
    gpus_per_worker: float | None = None
    devices: list[int | str] | None = None

    def __post_init__(self) -> None:
        _check_name(self.name)
        if not isinstance(self.trainable, str) or ":" not in self.trainable:
            raise InvalidConfigError("trainable", WHERE, "'module:Class' or 'file.py:Class'", self.trainable)
        if not isinstance(self.hparams, Mapping):
            raise InvalidConfigError("hparams", WHERE, "a mapping of name -> value", self.hparams)
        if not isinstance(self.trainable_args, Mapping):
            raise InvalidConfigError("trainable_args", WHERE, "a mapping", self.trainable_args)
        self.budget = check_int(self.budget, "budget", WHERE, minimum=1)
        self.seed = check_int(self.seed, "seed", WHERE, minimum=0)
        check_mode(self.mode, WHERE)
        if not isinstance(self.metric, str) or not self.metric:
            raise InvalidConfigError("metric", WHERE, "a non-empty string", self.metric)
        if not isinstance(self.checkpoints, str) or not self.checkpoints or "://" in self.checkpoints:
            raise InvalidConfigError("checkpoints", WHERE, "a local folder", self.checkpoints)
        self.gpus_per_worker = check_gpus_per_worker(self.gpus_per_worker)
        self.devices = check_devices(self.devices)
        if self.devices is not None:
            worker_envs(1, self.gpus_per_worker, self.devices)  # one process: check it fits

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], *, base_dir: str | None = None) -> SingleModelConfig:
        """Build from a parsed file; unknown keys are errors naming the allowed ones."""
        if not isinstance(data, Mapping):
            raise InvalidConfigError("config", WHERE, "a mapping of settings", data)
        known = {f.name for f in fields(cls)}
        for key in data:
            if key not in known:
                raise InvalidConfigError(key, WHERE, f"one of {sorted(known)}", data[key])
        for required in ("name", "trainable", "hparams"):
            if required not in data:
                raise InvalidConfigError(required, WHERE, "set", None)
        values = dict(data)
        if base_dir and isinstance(values.get("trainable"), str):
            values["trainable"] = _resolve_file_target(values["trainable"], base_dir)
        return cls(**values)

    @property
    def folder(self) -> str:
        return os.path.join(self.checkpoints, self.name)

    @property
    def checkpoint_path(self) -> str:
        return os.path.join(self.folder, "single-model.ckpt")

    @property
    def record_path(self) -> str:
        return os.path.join(self.folder, "single-model.json")


@dataclass(frozen=True)
class SingleResult:
    """What :func:`train_single` wrote: the last score, every score, the last metrics, the checkpoint."""

    name: str
    score: float
    scores: list[float]
    metrics: dict[str, float]
    hparams: dict[str, Any]
    checkpoint_path: str


def is_single_model_config(data: Any) -> bool:
    """A file that trains one model: ``hparams`` and no ``space``, or a legacy ``fc.json``/``conv.json``."""
    from pbtune.legacy import is_legacy_vanilla_config

    return isinstance(data, Mapping) and (("hparams" in data and "space" not in data)
                                          or is_legacy_vanilla_config(data))


def load_single_config(path: str, **overrides: Any) -> SingleModelConfig:
    """Read a single-model file (native or legacy vanilla); ``None`` overrides are skipped."""
    from pbtune.legacy import convert_legacy_vanilla_config, is_legacy_vanilla_config

    data = read_config_file(path)
    if is_legacy_vanilla_config(data):
        stem = os.path.splitext(os.path.basename(path))[0]
        data = convert_legacy_vanilla_config(data, trainable=data.get("trainable"), name=data.get("name", stem))
    if not isinstance(data, Mapping):
        raise InvalidConfigError("config", path, "a mapping of settings", data)
    data = {**data, **{k: v for k, v in overrides.items() if v is not None}}
    return SingleModelConfig.from_dict(data, base_dir=os.path.dirname(os.path.abspath(path)))


def _atomic_json(path: str, value: Any) -> None:
    tmp = f"{path}.tmp-{os.getpid()}"
    with open(tmp, "w", encoding="utf-8") as handle:
        json.dump(value, handle, indent=1)
    os.replace(tmp, path)


def _share(config: SingleModelConfig) -> dict[str, str] | None:
    envs = worker_envs(1, config.gpus_per_worker, config.devices)
    return envs[0] if envs else None


def train_single(config: SingleModelConfig, *, echo: Callable[[str], None] | None = None) -> SingleResult:
    """Train the model for ``budget`` steps in this process, then save it (see the module docstring).

    Raises:
        InvalidConfigError: the trainable cannot be imported, or a step's result lacks ``metric``.
    """
    from pbtune.engine.worker import load_trainable

    use_device_share(_share(config))
    cls = load_trainable(config.trainable)
    trainable = cls(**config.trainable_args)
    trainable.member_id, trainable.seed = 0, member_seed(config.seed, 0, 0)
    trainable.setup(config.hparams)
    scores: list[float] = []
    metrics: dict[str, float] = {}
    for step in range(1, config.budget + 1):
        reported = trainable.step()
        value = reported.get(config.metric) if isinstance(reported, Mapping) else None
        if not is_number(value):
            raise InvalidConfigError("metric", WHERE, f"a number in every step result (got {reported!r})",
                                     config.metric)
        scores.append(float(value))  # type: ignore[arg-type]
        metrics = {str(k): float(v) for k, v in reported.items() if is_number(v)}
        if echo is not None:
            echo(f"step {step}/{config.budget}  " + "  ".join(f"{k} {v:.6g}" for k, v in metrics.items()))
    os.makedirs(config.folder, exist_ok=True)
    tmp = f"{config.checkpoint_path}.tmp-{os.getpid()}"
    trainable.save(tmp)
    os.replace(tmp, config.checkpoint_path)
    result = SingleResult(config.name, scores[-1], scores, metrics, dict(config.hparams), config.checkpoint_path)
    _atomic_json(config.record_path, {"name": config.name, "trainable": config.trainable, "hparams": result.hparams,
                                      "budget": config.budget, "scores": scores, "metrics": metrics})
    return result


def read_single_result(config: SingleModelConfig) -> SingleResult:
    """What the last :func:`train_single` of this config wrote.

    Raises:
        NotFoundError: it was not trained yet (in ``config.checkpoints``).
    """
    try:
        with open(config.record_path, encoding="utf-8") as handle:
            record = json.load(handle)
    except FileNotFoundError:
        raise NotFoundError(f"no trained model {config.name!r} in {config.checkpoints}: train it first "
                            f"(pbtune run CONFIG)") from None
    if not os.path.exists(config.checkpoint_path):
        raise NotFoundError(f"the checkpoint {config.checkpoint_path} of model {config.name!r} is missing")
    scores = [float(s) for s in record.get("scores", [])]
    return SingleResult(config.name, scores[-1] if scores else math.nan, scores, dict(record.get("metrics", {})),
                        dict(record.get("hparams", {})), config.checkpoint_path)


def evaluate_single(config: SingleModelConfig) -> tuple[SingleResult, dict[str, float]]:
    """The saved model and its ``evaluate()`` metrics (rebuilt with the hparams it was trained with)."""
    from pbtune.engine.worker import load_trainable

    saved = read_single_result(config)
    use_device_share(_share(config))
    cls = load_trainable(config.trainable)
    metrics = evaluate_checkpoint(cls, config.trainable_args, saved.hparams, saved.checkpoint_path,
                                  member_id=0, seed=member_seed(config.seed, 0, 0))
    return saved, metrics
