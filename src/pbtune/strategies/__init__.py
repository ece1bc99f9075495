"""Pure PBT strategies: ready, exploit and explore. They know nothing of storage or processes."""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any

from pbtune.errors import InvalidConfigError
from pbtune.strategies._decisions import Continue, Decision, Exploit
from pbtune.strategies.exploit import ExploitStrategy, NoExploit, Tournament, Truncation
from pbtune.strategies.explore import ExploreContext, Perturb, PerturbOrResample, Resample
from pbtune.strategies.pb2 import PB2
from pbtune.strategies.ready import Ready

__all__ = [
    "Continue",
    "Decision",
    "Exploit",
    "ExploitStrategy",
    "ExploreContext",
    "ExploreStrategy",
    "PB2",
    "NoExploit",
    "Perturb",
    "PerturbOrResample",
    "Ready",
    "Resample",
    "Tournament",
    "Truncation",
    "EXPLOIT_STRATEGIES",
    "EXPLORE_STRATEGIES",
    "exploit_from_config",
    "explore_from_config",
    "ready_from_config",
    "strategy_config",
]

# The one registry of strategy names (config files, the stored config, the CLI).
EXPLOIT_STRATEGIES: Mapping[str, type] = {"truncation": Truncation, "tournament": Tournament, "none": NoExploit}
EXPLORE_STRATEGIES: Mapping[str, type] = {
    "perturb": Perturb, "resample": Resample, "perturb_or_resample": PerturbOrResample, "pb2": PB2,
}
ExploreStrategy = PerturbOrResample | PB2


def _build(kind_table: Mapping[str, type], config: Any, field: str) -> Any:
    if isinstance(config, tuple(kind_table.values())):  # already a strategy
        return config
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
    return _build(EXPLOIT_STRATEGIES, config, "exploit")


def explore_from_config(config: Any) -> ExploreStrategy:
    """``"perturb"``, ``"resample"`` or ``{"name": "perturb_or_resample", "resample_probability": 0.25}``."""
    return _build(EXPLORE_STRATEGIES, config, "explore")


def ready_from_config(config: Any) -> Ready:
    """``{"interval": 10, "burn_in": 0}``, an integer interval, or a :class:`Ready`."""
    if isinstance(config, Ready):
        return config
    if isinstance(config, int) and not isinstance(config, bool):
        return Ready(interval=config)
    if not isinstance(config, Mapping):
        raise InvalidConfigError("ready", "config", "an integer interval or a mapping", config)
    unknown = set(config) - {"interval", "burn_in"}
    if unknown:
        key = sorted(unknown)[0]
        raise InvalidConfigError(key, "ready", "one of ['burn_in', 'interval']", config[key])
    return Ready(**config)


def strategy_config(strategy: Any) -> dict[str, Any]:
    """The config form of an exploit or explore strategy, e.g. ``{"name": "truncation", "quantile": 0.2}``.

    A subclass is stored under the name of its nearest registered base class.
    """
    for cls in type(strategy).__mro__:
        for table in (EXPLOIT_STRATEGIES, EXPLORE_STRATEGIES):
            names = [name for name, registered in table.items() if registered is cls]
            if names:
                out: dict[str, Any] = {"name": names[0]}
                for f in dataclasses.fields(strategy):
                    value = getattr(strategy, f.name)
                    if f.metadata.get("omit_default") and value == f.default:
                        continue  # a newer field at its default: older stored configs still compare equal
                    if dataclasses.is_dataclass(value):  # a nested strategy (PB2's fallback)
                        value = strategy_config(value)
                    out[f.name] = list(value) if isinstance(value, tuple) else value
                return out
    known = sorted({*EXPLOIT_STRATEGIES, *EXPLORE_STRATEGIES})
    raise InvalidConfigError("strategy", "config", f"one of {known} (or a subclass)", type(strategy).__name__)
