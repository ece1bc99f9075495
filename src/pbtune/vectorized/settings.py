"""Settings of a vectorized run: every argument of :class:`~pbtune.vectorized.VectorizedPBT`
validated once, at construction, into one frozen object."""

from __future__ import annotations

import hashlib
import os
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from pbtune.config import DEFAULT_DIR, RunConfig
from pbtune.errors import InvalidConfigError
from pbtune.ranking import ranking_from_config
from pbtune.space import Choice, Float, Int, Space
from pbtune.strategies import exploit_from_config, explore_from_config, ready_from_config
from pbtune.validation import check_int
from pbtune.vectorized._functional import LossFn, MetricFn, resolve_loss, resolve_metric
from pbtune.vectorized.optim import SGD, OptimizerSpec, optimizer_from_config
from pbtune.vectorized.threads import check_threads

__all__ = ["NOT_VECTORIZABLE", "Settings", "make_settings", "member_init_seed", "run_seed"]

WHERE = "vectorized.train"
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
    return run_seed(seed, str(member_id))


def run_seed(seed: int, purpose: str) -> int:
    """A torch seed for one purpose of a run (``"data"``, ``"dropout"``, a member id)."""
    digest = hashlib.sha256(f"pbtune.vectorized:{seed}:{purpose}".encode()).digest()
    return int.from_bytes(digest[:8], "little") & (2**63 - 1)


@dataclass(frozen=True)
class Settings:
    """What a vectorized run was asked to do, validated (see :class:`VectorizedPBT` for each)."""

    model_fn: Callable[[], nn.Module]
    config: RunConfig
    optimizer: OptimizerSpec
    data: tuple[torch.Tensor, torch.Tensor]
    eval_data: tuple[torch.Tensor, torch.Tensor] | None
    loss: LossFn
    loss_takes_hparams: bool
    metric: MetricFn | None  # None: the score is the step's mean training loss
    metric_name: str
    tensor_hparams: tuple[str, ...]
    batch_size: int
    batches_per_step: int
    eval_batch_size: int
    save_final: str
    device: torch.device
    checkpoint_path: str | None
    chunk_size: int | None
    progress: bool
    flush_seconds: float
    background_writes: bool | None
    threads: int | str | None = None

    @property
    def space(self) -> Space:
        return self.config.space


def make_settings(
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
    ranking: Any = None,
    init: str = "random",
    sync: bool = True,
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
    threads: int | str | None = None,
) -> Settings:
    """Validate the arguments of :class:`~pbtune.vectorized.VectorizedPBT` (same names and meaning).

    Raises:
        InvalidConfigError: naming the first argument that is wrong and what it must be.
    """
    if not callable(model_fn):
        raise InvalidConfigError("model_fn", WHERE, "a callable that returns an nn.Module", model_fn)
    space = space if isinstance(space, Space) else Space(space)
    optimizer_spec = optimizer_from_config(optimizer if optimizer is not None else SGD())
    for field_name, value in (("batch_size", batch_size), ("batches_per_step", batches_per_step),
                              ("eval_batch_size", eval_batch_size)):
        check_int(value, field_name, WHERE, minimum=1)
    if save_final not in ("best", "all", "none"):
        raise InvalidConfigError("save_final", WHERE, "one of ['all', 'best', 'none']", save_final)
    train_data = _check_data(data, "data")
    held_out = None if eval_data is None else _check_data(eval_data, "eval_data")
    loss_fn, loss_takes_hparams = resolve_loss(loss, label_smoothing="label_smoothing" in space)
    tensor_hparams = _check_space(space, optimizer_spec, loss_takes_hparams)
    metric_fn: MetricFn | None = None
    metric_mode = "min"
    if held_out is not None:
        metric_fn, metric_mode = resolve_metric(metric, loss_fn, loss_takes_hparams)
    if mode is None and not metric_mode:
        raise InvalidConfigError("mode", WHERE, "'max' or 'min' (required with a custom metric)", mode)
    config = RunConfig(
        name=name or time.strftime("vectorized-%Y%m%d-%H%M%S"), space=space, population=population, budget=steps,
        workers=1, mode=mode or metric_mode, ready=ready_from_config(ready if ready is not None else {"interval": 10}),
        exploit=exploit_from_config(exploit if exploit is not None else "truncation"),
        explore=explore_from_config(explore if explore is not None else "perturb_or_resample"), seed=seed,
        ranking=ranking_from_config(ranking), init=init, storage=storage,
        sync=_lockstep(sync),
        checkpoints=checkpoints, checkpoint_interval=checkpoint_interval,
    )
    if background_writes not in (None, True, False):
        raise InvalidConfigError("background_writes", WHERE, "True, False or None (automatic)", background_writes)
    return Settings(
        model_fn=model_fn, config=config, optimizer=optimizer_spec, data=train_data, eval_data=held_out,
        loss=loss_fn, loss_takes_hparams=loss_takes_hparams, metric=metric_fn,
        metric_name=metric if isinstance(metric, str) else getattr(metric, "__name__", "metric"),
        tensor_hparams=tuple(tensor_hparams), batch_size=batch_size, batches_per_step=batches_per_step,
        eval_batch_size=eval_batch_size, save_final=save_final, device=_check_device(device),
        checkpoint_path=_checkpoint_path(checkpoint, checkpoints, config.name), chunk_size=chunk_size,
        progress=progress, flush_seconds=float(flush_seconds), background_writes=background_writes,
        threads=check_threads(threads, WHERE),
    )


def _lockstep(sync: Any) -> bool:
    """The batched population steps in lockstep: it is generational PBT by construction."""
    if sync is not True:
        raise InvalidConfigError("sync", WHERE, "true (every member steps in lockstep: generational PBT)", sync)
    return True


def _checkpoint_path(checkpoint: Any, checkpoints: str, name: str) -> str | None:
    if checkpoint is True:
        path: str | None = os.path.join(checkpoints, name, "population.pt")
    elif checkpoint is False or checkpoint is None:
        path = None
    elif isinstance(checkpoint, str) and checkpoint:
        path = checkpoint
    else:
        raise InvalidConfigError("checkpoint", WHERE, "True, False or a file path", checkpoint)
    if path is not None and "://" in path:
        raise InvalidConfigError("checkpoint", WHERE, "a local file path (written atomically)", checkpoint)
    return path


def _check_space(space: Space, optimizer: OptimizerSpec, loss_takes_hparams: bool) -> list[str]:
    """The non-optimizer hyperparameters kept as tensors; reject what cannot be vectorized."""
    where = "space"
    tensor_hparams: list[str] = []
    for name, domain in space.items():
        if name in NOT_VECTORIZABLE:
            raise InvalidConfigError(name, where, f"absent: {NOT_VECTORIZABLE[name]}", domain.to_config())
        if name == "nesterov":
            if name in optimizer.hparam_names and not (
                isinstance(domain, Choice) and all(isinstance(v, bool) for v in domain.values)
            ):
                raise InvalidConfigError(name, where, "a choice of true/false", domain.to_config())
        elif not _numeric_domain(domain):
            raise InvalidConfigError(
                name, where,
                "a number (float, int or a choice of numbers): only numeric hyperparameters are vectorizable",
                domain.to_config(),
            )
        if name in optimizer.hparam_names:
            continue
        if name in _REGULARISERS or loss_takes_hparams:
            if name == "dropout" and _domain_max(domain) >= 1.0:
                raise InvalidConfigError(name, where, "a probability below 1", domain.to_config())
            if name == "label_smoothing" and not 0.0 <= _domain_max(domain) <= 1.0:
                raise InvalidConfigError(name, where, "within [0, 1]", domain.to_config())
            tensor_hparams.append(name)
            continue
        raise InvalidConfigError(
            name, where,
            f"a vectorizable hyperparameter: one of {list(optimizer.hparam_names)} "
            f"({type(optimizer).__name__}), {list(_REGULARISERS)}, or one the loss reads through "
            "an `hparams` argument",
            domain.to_config(),
        )
    return tensor_hparams


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
        raise InvalidConfigError("device", WHERE, "a torch device such as 'cpu' or 'cuda:0'", device) from exc
    if resolved.type == "cuda" and not torch.cuda.is_available():
        raise InvalidConfigError(
            "device", WHERE, "an available device (torch.cuda.is_available() is False on this machine)", device
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
            field_name, WHERE, "(inputs, targets) tensors or a TensorDataset", type(data).__name__
        )
    inputs, targets = tensors
    if len(inputs) != len(targets) or len(inputs) == 0:
        raise InvalidConfigError(
            field_name, WHERE, "inputs and targets of the same non-zero length", (len(inputs), len(targets))
        )
    return inputs, targets
