"""What a resumed run may differ in: a run name stands for one experiment.

Resuming a run (``pbtune run`` again, ``pbtune.run`` with the same name, ``Population``) must
give the same run, so the config given now is compared with the one stored when the run was
created. Fields that only say *how* to run it (workers, where the stores are, leases, Ray
resources) may change; everything that defines *what* is trained may not. The one explicit
exception: ``extend_budget`` lets a larger budget train a run further.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from pbtune.config import RunConfig
from pbtune.errors import ConfigMismatchError

__all__ = ["RUN_DEFINING_FIELDS", "config_differences", "check_resumable"]

RUN_DEFINING_FIELDS = (
    "space", "population", "budget", "mode", "metric", "ready", "exploit", "explore", "ranking", "init",
    "max_failures", "sync", "seed", "keep_checkpoints", "checkpoint_interval", "trainable", "trainable_args",
)


def config_differences(stored: Mapping[str, Any], given: RunConfig) -> list[tuple[str, Any, Any]]:
    """``(field, stored, given)`` for every run-defining field that differs.

    A field missing from the stored config (written by an older pbtune) is not compared.
    """
    now = given.to_dict()
    return [(name, stored[name], now[name]) for name in RUN_DEFINING_FIELDS
            if name in stored and _normal(stored[name]) != _normal(now[name])]


def check_resumable(stored: Mapping[str, Any], given: RunConfig, storage: str, *, extend_budget: bool) -> bool:
    """Whether the stored run must be extended to ``given.budget``; raise if it is another run.

    Raises:
        ConfigMismatchError: a run-defining field differs (a larger budget is allowed with
            ``extend_budget``; a smaller one never is).
    """
    differences = config_differences(stored, given)
    extend = [d for d in differences if d[0] == "budget" and extend_budget and d[2] > d[1]]
    others = [d for d in differences if d not in extend]
    if others:
        listed = "; ".join(f"{name}: stored {old!r}, given {new!r}" for name, old, new in others)
        hint = "use a new run name (`name`), or give the stored values"
        if [name for name, _, _ in others] == ["budget"] and others[0][2] > others[0][1]:
            hint += "; to train the run further, extend its budget: `pbtune run CONFIG --extend-budget` " \
                    "or pbtune.run(..., extend_budget=True)"
        raise ConfigMismatchError(
            f"run {given.name!r} in {storage} was created with another config ({listed}): {hint}", others
        )
    return bool(extend)


def _normal(value: Any) -> Any:
    """Compare JSON round-tripped values: tuples are lists, ints equal floats of the same value."""
    if isinstance(value, Mapping):
        return {str(k): _normal(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_normal(v) for v in value]
    return value
