"""Convert the JSON configs of the earlier MNIST-PBT project into pbtune configs.

That project (one JSON file with ``general``/``train``/``test``/``val`` sections) had two kinds
of file: ``fc.json``/``conv.json`` train one model (``num_epochs`` epochs at the file's ``lr``
and ``keep_prob``: :func:`convert_legacy_vanilla_config` makes a single-model config, see
:mod:`pbtune.single`), and ``fc_PBT.json``/``conv_PBT.json`` run PBT. A PBT file marks
tuned hyperparameters with a ``PBT_`` prefix: ``"PBT_lr": "0.1,0.0001"`` is a uniform float
between the two numbers (in either order), three or more values are a choice. ``mutation``
lists the perturbation factors, ``num_epochs`` is the number of epochs between exploits,
``num_epochs_tot`` the epochs each worker trains, ``num_worker_tot`` the population and
``num_workers_paral`` the workers that train at once. Flat files (the same keys at the top
level) are accepted too. The mapping is documented in ``docs/examples.md``.

Example:
    >>> data = {"train": {"PBT_lr": "0.1,0.0001", "PBT_keep_prob": "0.5,0.99", "mutation": "0.8,1.2",
    ...         "num_epochs": 1, "num_epochs_tot": 4, "num_worker_tot": 4, "num_workers_paral": 2}}
    >>> is_legacy_config(data)
    True
    >>> cfg = convert_legacy_config(data, trainable="mnist_pbt.py:MNISTTrainable", name="conv")
    >>> cfg["space"]["lr"], cfg["population"], cfg["budget"], cfg["ready"]
    ({'type': 'float', 'low': 0.0001, 'high': 0.1}, 4, 4, {'interval': 1})
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

from pbtune.errors import InvalidConfigError

__all__ = ["is_legacy_config", "is_legacy_vanilla_config", "convert_legacy_config", "convert_legacy_vanilla_config",
           "LEGACY_TRAINABLE_KEYS", "LEGACY_IGNORED_KEYS"]

WHERE = "legacy config"
SECTIONS = ("general", "train", "test", "val")
PREFIX = "PBT_"

# Keys that the MNIST example's trainable understands; passed on as ``trainable_args``.
LEGACY_TRAINABLE_KEYS = frozenset({
    "model", "batch_size", "n_hiddens", "n_filters", "batch_norm", "lr", "keep_prob", "dropout",
    "momentum", "weight_decay", "data_dir", "num_classes",
})
# Keys that only made sense to the old program (its paths and file layout, its test process,
# no-op values in its files: crop 1.0, no flip; its loss and initialisation; decreasing_lr_epochs,
# whose halving its trainer never reached): dropped. ``gpus`` maps to device placement.
LEGACY_IGNORED_KEYS = frozenset({
    "train_dir", "data_loader", "metric", "height", "width", "num_channels", "load_ckpt", "worker_num",
    "version", "num_iters_for_ckpt", "sleep_time_sec", "val", "debug", "load_ckpt_iter", "exp_time",
    "initialization", "loss", "decreasing_lr_epochs", "crop_min_h", "crop_min_w", "hflip",
})
# Structure and pbtune keys of a vanilla file (one model: no store, so no storage or leases).
VANILLA_KEYS = frozenset({"num_epochs", "seed", "gpus", "name", "trainable", "trainable_args", "checkpoints"})
# The fixed hyperparameters of a vanilla file: the one model trains with them (``hparams``).
VANILLA_HPARAMS = ("lr", "keep_prob", "dropout", "momentum", "weight_decay")
# pbtune settings a legacy file may carry at its top level (e.g. to name its trainable).
PASSTHROUGH_KEYS = frozenset({"name", "trainable", "storage", "checkpoints", "keep_checkpoints",
                              "lease_seconds", "trainable_args"})
STRUCTURE_KEYS = frozenset({"mutation", "num_epochs", "num_epochs_tot", "num_worker_tot", "num_workers_paral",
                            "seed", "gpus"})


def is_legacy_config(data: Any) -> bool:
    """True when ``data`` looks like a legacy MNIST-PBT config (``PBT_*`` keys, no ``space``).

    Example:
        >>> is_legacy_config({"PBT_lr": "0.01,0.1", "num_worker_tot": 4})
        True
        >>> is_legacy_config({"name": "x", "space": {}})
        False
    """
    if not isinstance(data, Mapping) or "space" in data:
        return False
    scopes = [data] + [data[s] for s in SECTIONS if isinstance(data.get(s), Mapping)]
    return any(isinstance(k, str) and k.startswith(PREFIX) for scope in scopes for k in scope)


def is_legacy_vanilla_config(data: Any) -> bool:
    """True for the old project's one-model files (``fc.json``, ``conv.json``): ``general`` and
    ``train`` sections, no ``PBT_*`` key, no ``space``/``hparams``.

    Example:
        >>> is_legacy_vanilla_config({"general": {"model": "fc"}, "train": {"lr": 0.01, "num_epochs": 30}})
        True
        >>> is_legacy_vanilla_config({"train": {"lr": 0.1}})
        False
    """
    return (isinstance(data, Mapping) and "space" not in data and "hparams" not in data
            and all(isinstance(data.get(s), Mapping) for s in ("general", "train")) and not is_legacy_config(data))


def _merged(data: Mapping[str, Any]) -> dict[str, Any]:
    """One flat dict: ``train`` then ``general`` (the old program let ``general`` win) then top-level keys."""
    flat: dict[str, Any] = {}
    for section in ("train", "general"):
        value = data.get(section)
        if value is None:
            continue
        if not isinstance(value, Mapping):
            raise InvalidConfigError(section, WHERE, "a mapping of settings", value)
        flat.update(value)
    for key, value in data.items():
        if key not in SECTIONS:
            flat[key] = value
    return flat


def _number(text: str) -> int | float | str:
    for cast in (int, float):
        try:
            return cast(text)
        except ValueError:
            continue
    return text


def _domain(key: str, value: Any) -> dict[str, Any]:
    """``"low,high"`` -> uniform float; ``"a,b,c"`` -> choice (numbers parsed, else strings)."""
    if isinstance(value, (list, tuple)):
        parts = [str(v).strip() for v in value]
    elif isinstance(value, str):
        parts = [p.strip() for p in value.split(",")]
    else:
        raise InvalidConfigError(key, WHERE, "a string 'low,high' (uniform) or 'a,b,c,...' (choice)", value)
    if len(parts) < 2 or any(not p for p in parts):
        raise InvalidConfigError(key, WHERE, "two numbers 'low,high' (uniform) or three or more choices 'a,b,c'",
                                 value)
    values = [_number(p) for p in parts]
    numeric = all(isinstance(v, (int, float)) for v in values)
    if len(values) == 2 and numeric:
        low, high = sorted(float(v) for v in values)
        if not (math.isfinite(low) and math.isfinite(high)) or low == high:
            raise InvalidConfigError(key, WHERE, "two different finite numbers 'low,high'", value)
        return {"type": "float", "low": low, "high": high}
    if len(values) == 2:
        raise InvalidConfigError(key, WHERE, "two numbers 'low,high', or three or more choices 'a,b,c'", value)
    if len(set(map(repr, values))) != len(values):
        raise InvalidConfigError(key, WHERE, "a list of choices without duplicates", value)
    return {"type": "choice", "values": values}


def _count(flat: Mapping[str, Any], key: str, minimum: int) -> int:
    if key not in flat:
        raise InvalidConfigError(key, WHERE, f"set (an integer >= {minimum})", None)
    value = flat[key]
    try:
        number = int(value) if not isinstance(value, bool) and float(value) == int(float(value)) else None
    except (TypeError, ValueError):
        number = None
    if number is None or number < minimum:
        raise InvalidConfigError(key, WHERE, f"an integer >= {minimum}", value)
    return number


def _factors(value: Any) -> list[float]:
    parts = value.split(",") if isinstance(value, str) else value
    try:
        factors = [float(p) for p in parts]
    except (TypeError, ValueError):
        factors = []
    if not factors or any(not (math.isfinite(f) and f > 0) for f in factors):
        raise InvalidConfigError("mutation", WHERE, "positive factors such as '0.8,1.2'", value)
    return factors


def _gpus(flat: Mapping[str, Any]) -> list[int] | None:
    """``"0,1"`` -> ``[0, 1]``; ``""`` -> ``[]`` (the old program ran on CPU); absent -> None."""
    if "gpus" not in flat:
        return None
    value = flat["gpus"]
    text = str(value).strip() if isinstance(value, (str, int)) and not isinstance(value, bool) else None
    parts = [p.strip() for p in text.split(",")] if text else []
    if text is None or any(not p.isdigit() for p in parts):
        raise InvalidConfigError("gpus", WHERE, "device ids such as \"0,1\" (or \"\" for CPU)", value)
    return [int(p) for p in parts]


def _check_keys(flat: Mapping[str, Any], allowed: frozenset[str], *, pbt: bool) -> None:
    unknown = sorted(k for k in flat if k not in allowed and not (pbt and isinstance(k, str) and k.startswith(PREFIX)))
    if unknown:
        shown = ("'PBT_<name>' or " if pbt else "") + f"one of {sorted(allowed)}"
        raise InvalidConfigError(unknown[0], WHERE, shown, flat[unknown[0]])


def _trainable(data: Mapping[str, Any], trainable: str | None) -> str:
    target = data.get("trainable", trainable)
    if not isinstance(target, str) or ":" not in target:
        raise InvalidConfigError(
            "trainable", WHERE,
            "set: the legacy format names no model code; add \"trainable\": \"path/to/mnist_pbt.py:MNISTTrainable\" "
            "at the top level (see examples/mnist/legacy.json)", target)
    return target


def _extra_args(data: Mapping[str, Any]) -> Mapping[str, Any]:
    extra = data.get("trainable_args", {})
    if not isinstance(extra, Mapping):
        raise InvalidConfigError("trainable_args", WHERE, "a mapping", extra)
    return extra


def convert_legacy_config(
    data: Mapping[str, Any], *, trainable: str | None = None, name: str | None = None
) -> dict[str, Any]:
    """Translate a legacy MNIST-PBT config into a mapping for :meth:`pbtune.RunConfig.from_dict`.

    Args:
        data: the parsed JSON (sectioned or flat).
        trainable: ``"file.py:Class"`` used when the file has no top-level ``trainable``.
        name: run name used when the file has no top-level ``name`` (default ``"legacy"``).

    Returns:
        A run-config mapping: ``PBT_<x>`` -> ``space.<x>``, ``num_worker_tot`` -> ``population``,
        ``num_workers_paral`` -> ``workers``, ``num_epochs`` -> ``ready.interval`` (one pbtune
        step = one epoch), ``num_epochs_tot`` -> ``budget`` (rounded up to whole exploit
        intervals, as the old program did), ``mutation`` -> ``explore: perturb`` factors,
        truncation selection of ``ceil(n / 5)`` members (``rounding: ceil``), ``gpus`` ->
        ``devices`` (``""``: ``gpus_per_worker: 0``); model settings go to ``trainable_args``
        with ``optimizer: adam`` (the old trainer's) and, under ``baseline``, the file's fixed
        values of tuned keys (``lr: 0.01`` next to ``PBT_lr``: what a vanilla run trains with).

    Raises:
        InvalidConfigError: naming the offending key, e.g. when ``num_workers_paral`` exceeds
            ``num_worker_tot`` or a ``PBT_`` value is neither a range nor a list of choices.

    Example:
        >>> convert_legacy_config({"PBT_lr": "0.001,0.1", "num_epochs": 2, "num_epochs_tot": 5,
        ...                        "num_worker_tot": 4, "num_workers_paral": 4},
        ...                       trainable="m.py:T")["budget"]
        6
    """
    if not isinstance(data, Mapping):
        raise InvalidConfigError("config", WHERE, "a mapping of settings", data)
    flat = _merged(data)
    space = {key[len(PREFIX):]: _domain(key, value) for key, value in flat.items()
             if isinstance(key, str) and key.startswith(PREFIX)}
    if not space or any(not n for n in space):
        raise InvalidConfigError("PBT_<name>", WHERE, "at least one tuned hyperparameter such as \"PBT_lr\"", None)
    population = _count(flat, "num_worker_tot", 2)
    workers = _count(flat, "num_workers_paral", 1) if "num_workers_paral" in flat else population
    if workers > population:
        raise InvalidConfigError("num_workers_paral", WHERE, f"<= num_worker_tot ({population})", workers)
    interval = _count(flat, "num_epochs", 1)
    total = _count(flat, "num_epochs_tot", 1)
    budget = math.ceil(total / interval) * interval
    factors = _factors(flat.get("mutation", "0.8,1.2"))

    _check_keys(flat, LEGACY_TRAINABLE_KEYS | LEGACY_IGNORED_KEYS | PASSTHROUGH_KEYS | STRUCTURE_KEYS, pbt=True)
    gpus = _gpus(flat)

    target = _trainable(data, trainable)
    args: dict[str, Any] = {k: v for k, v in flat.items() if k in LEGACY_TRAINABLE_KEYS and k not in space}
    args["optimizer"] = "adam"
    baseline = {k: flat[k] for k in space if k in flat}
    if baseline:
        args["baseline"] = baseline
    args.update(_extra_args(data))
    out: dict[str, Any] = {
        "name": data.get("name", name or "legacy"),
        "trainable": target,
        "trainable_args": args,
        "space": space,
        "population": population,
        "workers": workers,
        "budget": budget,
        "ready": {"interval": interval},
        "exploit": {"name": "truncation", "quantile": 0.2, "rounding": "ceil"},  # the old ceil(n / 5)
        "explore": {"name": "perturb", "factors": factors},
        "mode": "max",  # the old program ranked workers by accuracy
        "metric": "score",
    }
    if "seed" in flat:
        out["seed"] = _count(flat, "seed", 0)
        args.setdefault("seed", out["seed"])
    if gpus is not None:  # each worker on one of them, as evenly as whole workers allow
        out.update({"devices": gpus} if gpus else {"gpus_per_worker": 0})
    for key in ("storage", "checkpoints", "keep_checkpoints", "lease_seconds"):
        if key in data:
            out[key] = data[key]
    return out


def convert_legacy_vanilla_config(
    data: Mapping[str, Any], *, trainable: str | None = None, name: str | None = None
) -> dict[str, Any]:
    """Translate a one-model legacy file (``fc.json``, ``conv.json``) into a single-model config
    for :class:`pbtune.single.SingleModelConfig`.

    ``num_epochs`` -> ``budget`` (one step = one epoch); ``lr``, ``keep_prob``, ``dropout``,
    ``momentum``, ``weight_decay`` -> ``hparams`` (the model trains with the file's values);
    ``gpus`` -> ``devices``, all of them for the one process (as the old ``main.py`` did);
    model settings -> ``trainable_args`` (with ``optimizer: adam``); the same keys are ignored
    as in PBT files.

    Raises:
        InvalidConfigError: naming an unknown key, a ``PBT_`` key, or a missing ``num_epochs``.

    Example:
        >>> out = convert_legacy_vanilla_config({"general": {"model": "fc", "seed": 117}, "train": {
        ...     "lr": 0.01, "keep_prob": 0.8, "num_epochs": 30, "gpus": "0"}}, trainable="m.py:T", name="fc")
        >>> out["hparams"], out["budget"], out["devices"], out["gpus_per_worker"]
        ({'lr': 0.01, 'keep_prob': 0.8}, 30, [0], 1)
    """
    if not isinstance(data, Mapping):
        raise InvalidConfigError("config", WHERE, "a mapping of settings", data)
    flat = _merged(data)
    _check_keys(flat, LEGACY_TRAINABLE_KEYS | LEGACY_IGNORED_KEYS | VANILLA_KEYS, pbt=False)
    hparams: dict[str, Any] = {}
    for key in VANILLA_HPARAMS:
        if key in flat:
            value = flat[key]
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
                raise InvalidConfigError(key, WHERE, "a finite number", value)
            hparams[key] = value
    args: dict[str, Any] = {k: v for k, v in flat.items() if k in LEGACY_TRAINABLE_KEYS and k not in hparams}
    args["optimizer"] = "adam"
    args.update(_extra_args(data))
    out: dict[str, Any] = {
        "name": data.get("name", name or "legacy"),
        "trainable": _trainable(data, trainable),
        "trainable_args": args,
        "hparams": hparams,
        "budget": _count(flat, "num_epochs", 1),
        "mode": "max",
        "metric": "score",
    }
    if "seed" in flat:
        out["seed"] = _count(flat, "seed", 0)
        args.setdefault("seed", out["seed"])
    gpus = _gpus(flat)
    if gpus is not None:
        out.update({"devices": gpus, "gpus_per_worker": len(gpus)} if gpus else {"gpus_per_worker": 0})
    if "checkpoints" in data:
        out["checkpoints"] = data["checkpoints"]
    return out
