"""Pure PBT strategies: ready, exploit and explore. They know nothing of storage or processes."""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any

from pbtune.errors import InvalidConfigError
from pbtune.strategies._decisions import Continue, Decision, Exploit
from pbtune.strategies.exploit import ExploitStrategy, Tournament, Truncation
from pbtune.strategies.explore import ExploreStrategy, Perturb, PerturbOrResample, Resample
from pbtune.strategies.ready import Ready

__all__ = [
    "Continue",
    "Decision",
    "Exploit",
    "ExploitStrategy",
    "ExploreStrategy",
    "Perturb",
    "PerturbOrResample",
    "Ready",
    "Resample",
    "Tournament",
    "Truncation",
    "exploit_from_config",
    "explore_from_config",
    "ready_from_config",
]

_EXPLOIT = {"truncation": Truncation, "tournament": Tournament}
_EXPLORE = {"perturb": Perturb, "resample": Resample, "perturb_or_resample": PerturbOrResample}


def _build(kind_table: Mapping[str, type], config: Any, field: str) -> Any:
    if isinstance(config, str):
        config = {"name": config}
    if not isinstance(config, Mapping):
        raise InvalidConfigError(field, "config", f"a strategy name ({sorted(kind_table)}) or a mapping", config)
    params = dict(config)
    name = params.pop("name", None)
    if name not in kind_table:
        raise InvalidConfigError("name", field, f"one of {sorted(kind_table)}", name)
    cls = kind_table[name]
    allowed = {f.name for f in dataclasses.fields(cls)}
    for key in params:
        if key not in allowed:
            raise InvalidConfigError(key, f"{field} ({name})", f"one of {sorted(allowed)}", params[key])
    if "factors" in params and isinstance(params["factors"], list):
        params["factors"] = tuple(params["factors"])
    return cls(**params)


def exploit_from_config(config: Any) -> ExploitStrategy:
    """``"truncation"``, ``{"name": "truncation", "quantile": 0.25}`` or ``"tournament"``."""
    return _build(_EXPLOIT, config, "exploit")


def explore_from_config(config: Any) -> ExploreStrategy:
    """``"perturb"``, ``"resample"`` or ``{"name": "perturb_or_resample", "resample_probability": 0.25}``."""
    return _build(_EXPLORE, config, "explore")


def ready_from_config(config: Any) -> Ready:
    """``{"interval": 10, "burn_in": 0}`` or an integer interval."""
    if isinstance(config, int) and not isinstance(config, bool):
        return Ready(interval=config)
    if not isinstance(config, Mapping):
        raise InvalidConfigError("ready", "config", "an integer interval or a mapping", config)
    unknown = set(config) - {"interval", "burn_in"}
    if unknown:
        key = sorted(unknown)[0]
        raise InvalidConfigError(key, "ready", "one of ['burn_in', 'interval']", config[key])
    return Ready(**config)
