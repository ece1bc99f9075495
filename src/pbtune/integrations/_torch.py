"""PyTorch pieces shared by the Lightning and Transformers callbacks.

* one checkpoint format (model, optimizers, schedulers) loadable with ``weights_only=True``,
  so a donor's file from a server is never unpickled as code;
* applying hyperparameters to optimizer param groups, keeping LR schedules' progress;
* setting module attributes by dotted path (``"encoder.dropout.p"``).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from pbtune.errors import InvalidConfigError, PBTuneError

__all__ = ["OPTIMIZER_KEYS", "apply_module_attributes", "apply_optimizer_hparams", "check_keys", "load_state",
           "save_state", "unwrap_scheduler"]

FORMAT = "pbtune.torch/1"

# hyperparameter name -> param-group key ("betas[0]": first item of the betas tuple)
OPTIMIZER_KEYS: dict[str, str] = {
    "lr": "lr", "learning_rate": "lr",
    "momentum": "momentum",
    "weight_decay": "weight_decay",
    "beta1": "betas[0]", "beta_1": "betas[0]", "adam_beta1": "betas[0]",
    "beta2": "betas[1]", "beta_2": "betas[1]", "adam_beta2": "betas[1]",
    "eps": "eps", "adam_epsilon": "eps",
}


def check_keys(optimizer_keys: Mapping[str, str | None] | None, attributes: Mapping[str, str] | None,
               where: str) -> tuple[dict[str, str], dict[str, str]]:
    """Validated ``(hparam -> group key, hparam -> attribute path)``; None values drop a default."""
    keys: dict[str, str] = dict(OPTIMIZER_KEYS)
    for name, key in dict(optimizer_keys or {}).items():
        if key is None:
            keys.pop(name, None)
        elif not isinstance(key, str) or not key:
            raise InvalidConfigError(f"optimizer_keys[{name!r}]", where, "a param-group key such as 'lr' or None", key)
        else:
            keys[name] = key
    attrs = dict(attributes or {})
    for name, path in attrs.items():
        if not isinstance(path, str) or not path or path.startswith(".") or path.endswith("."):
            raise InvalidConfigError(f"attributes[{name!r}]", where, "a dotted attribute path such as 'drop.p'", path)
    return keys, attrs


def unwrap_scheduler(scheduler: Any) -> Any:
    """The torch scheduler inside Accelerate's wrapper (or the scheduler itself)."""
    return getattr(scheduler, "scheduler", scheduler)


def _set(group: dict[str, Any], key: str, value: Any) -> None:
    if key.endswith("]") and "[" in key:
        name, index = key[:-1].split("[", 1)
        items = list(group[name])
        items[int(index)] = value
        group[name] = tuple(items)
        return
    fill = getattr(group.get(key), "fill_", None)
    if callable(fill):  # a tensor lr (capturable optimizers): keep the tensor
        fill(value)
    else:
        group[key] = value


def _has(group: Mapping[str, Any], key: str) -> bool:
    name = key.split("[", 1)[0]
    return name in group


def _decay_groups(groups: Sequence[dict[str, Any]]) -> list[int]:
    # Groups holding only 1-D parameters (biases, norm weights) are no-decay groups by convention
    # (Transformers builds them that way): weight decay goes to the others.
    chosen = [i for i, g in enumerate(groups) if any(getattr(p, "dim", lambda: 2)() >= 2 for p in g["params"])]
    return chosen or list(range(len(groups)))


def apply_optimizer_hparams(
    optimizer: Any,
    hparams: Mapping[str, Any],
    keys: Mapping[str, str],
    *,
    scheduler: Any = None,
    where: str,
) -> dict[str, Any]:
    """Write the hyperparameters named in ``keys`` into every param group; return what was set.

    With an LR scheduler, ``lr`` is the schedule's base: the scheduler's ``base_lrs`` become
    ``lr`` and the current lr keeps the schedule's factor (``current / old base``), so warmup or
    decay goes on from where it was.

    Raises:
        PBTuneError: a hyperparameter maps to a key that no param group has (e.g. ``momentum``
            with Adam): silently dropping it would train with another value than recorded.
    """
    groups = optimizer.param_groups
    inner = unwrap_scheduler(scheduler) if scheduler is not None else None
    applied: dict[str, Any] = {}
    for name, value in hparams.items():
        key = keys.get(name)
        if key is None:
            continue
        if not any(_has(g, key) for g in groups):
            raise PBTuneError(
                f"{where}: hyperparameter {name!r} maps to the optimizer's {key!r}, which "
                f"{type(optimizer).__name__}'s param groups lack; pass optimizer_keys={{{name!r}: None}} "
                "and apply it yourself, or map it to another key"
            )
        targets = _decay_groups(groups) if key == "weight_decay" else range(len(groups))
        for index in targets:
            group = groups[index]
            if key == "lr" and inner is not None and index < len(getattr(inner, "base_lrs", [])):
                _set_scheduled_lr(inner, index, group, float(value))
            else:
                _set(group, key, value)
        applied[name] = value
    return applied


def _set_scheduled_lr(scheduler: Any, index: int, group: dict[str, Any], value: float) -> None:
    old_base = float(scheduler.base_lrs[index])
    current = float(group["lr"])
    factor = current / old_base if old_base > 0 and math.isfinite(current / old_base) else 1.0
    scheduler.base_lrs[index] = value
    group["initial_lr"] = value
    _set(group, "lr", value * factor)
    last = getattr(scheduler, "_last_lr", None)
    if isinstance(last, list) and index < len(last):
        last[index] = value * factor


def apply_module_attributes(module: Any, hparams: Mapping[str, Any], attributes: Mapping[str, str],
                            *, where: str) -> dict[str, Any]:
    """Set ``module.<path>`` for every hyperparameter named in ``attributes``; return what was set."""
    applied: dict[str, Any] = {}
    for name, path in attributes.items():
        if name not in hparams:
            continue
        *parents, last = path.split(".")
        target = module
        try:
            for part in parents:
                target = getattr(target, part)
            getattr(target, last)  # the attribute must exist: a typo must not create a new one
        except AttributeError as exc:
            raise PBTuneError(f"{where}: attributes[{name!r}] = {path!r}: {type(module).__name__} has no such"
                              " attribute") from exc
        setattr(target, last, hparams[name])
        applied[name] = hparams[name]
    return applied


def save_state(path: str, model: Any, optimizers: Iterable[Any] = (), schedulers: Iterable[Any] = (),
               extra: Mapping[str, Any] | None = None) -> None:
    """One file with the model's state dict and every optimizer's and scheduler's state."""
    import torch

    data = {
        "format": FORMAT,
        "state_dict": model.state_dict(),
        "optimizer_states": [o.state_dict() for o in optimizers],
        "lr_schedulers": [s.state_dict() for s in schedulers],
        **dict(extra or {}),
    }
    torch.save(data, path)


def load_state(path: str, model: Any, optimizers: Sequence[Any] = (), schedulers: Sequence[Any] = (),
               *, where: str) -> dict[str, Any]:
    """Restore a file written by :func:`save_state` in place; return its contents.

    Raises:
        PBTuneError: the file is not in this format, or has another number of optimizers or
            schedulers than the training being restored.
    """
    import torch

    data = torch.load(path, map_location="cpu", weights_only=True)
    if not isinstance(data, dict) or data.get("format") != FORMAT:
        raise PBTuneError(f"{where}: {path} is not a pbtune torch checkpoint (format {FORMAT})")
    for kind, saved, live in (("optimizers", data["optimizer_states"], optimizers),
                              ("LR schedulers", data["lr_schedulers"], schedulers)):
        if len(saved) != len(live):
            raise PBTuneError(f"{where}: the checkpoint has {len(saved)} {kind}, this training has {len(live)}")
    model.load_state_dict(data["state_dict"])
    for optimizer, state in zip(optimizers, data["optimizer_states"], strict=True):
        optimizer.load_state_dict(state)
    for scheduler, state in zip(schedulers, data["lr_schedulers"], strict=True):
        scheduler.load_state_dict(state)
    return dict(data)
