"""Shared pieces of the report tests (imported as a plain module: tests/ has no packages)."""

from __future__ import annotations

import os
from dataclasses import dataclass

from pbtune.config import RunConfig
from pbtune.engine import RunResult
from pbtune.report.data import RunData
from pbtune.store.base import PopulationStore


@dataclass
class SmallRun:
    config: RunConfig
    result: RunResult
    store: PopulationStore
    data: RunData
    root: str
    tb_dir: str
    live_text: str


SPACE = {
    "lr": {"type": "float", "low": 0.001, "high": 0.2, "log": True},
    "batch": {"type": "int", "low": 8, "high": 64},  # Quadratic ignores these two; they exercise
    "act": {"type": "choice", "values": ["relu", "tanh", "gelu"]},  # int and choice plotting
}


def small_config(root: str, name: str = "toy", **overrides: object) -> RunConfig:
    settings: dict[str, object] = dict(
        name=name, space=SPACE, population=4, workers=1, budget=30, ready={"interval": 5},
        exploit={"name": "truncation", "quantile": 0.5}, seed=1,
        storage=f"sqlite:///{root}/pbt.db", checkpoints=os.path.join(root, "checkpoints"),
        trainable="pbtune.testing.trainables:Quadratic",
    )
    settings.update(overrides)
    return RunConfig(**settings)  # type: ignore[arg-type]
