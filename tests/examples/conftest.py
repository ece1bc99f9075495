"""Helpers for the example tests: run an example's small config end to end, in this process.

The worker loop runs here instead of in spawned processes so that torch is imported once per
test session (a spawned worker pays ~3 s of imports on this machine); `pbtune run` itself is
covered by one CLI test per path it adds (legacy configs) and by the engine's own tests.
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import pytest

import pbtune
from pbtune.engine.worker import load_trainable

EXAMPLES = os.path.join(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))), "examples")


@dataclass
class Outcome:
    config: pbtune.RunConfig
    store: pbtune.PopulationStore
    initial: dict[int, float]  # each member's first reported score
    final: dict[int, float]  # each member's last score

    def better(self, a: float, b: float) -> bool:
        return a > b if self.config.mode == "max" else a < b

    @property
    def best_initial(self) -> float:
        return (max if self.config.mode == "max" else min)(self.initial.values())

    @property
    def best_final(self) -> float:
        return (max if self.config.mode == "max" else min)(self.final.values())

    def events(self, kind: str) -> list[pbtune.EventRecord]:
        return [e for e in self.store.events(self.config.name) if e.kind == kind]


def example_path(*parts: str) -> str:
    return os.path.join(EXAMPLES, *parts)


def run_config(config: pbtune.RunConfig, initial: Sequence[Mapping[str, Any]] = ()) -> Outcome:
    """Create the population (members starting from ``initial`` if given) and drive it with one
    in-process worker until every member finishes."""
    if config.storage.startswith("sqlite:///"):  # pbtune.run makes this folder; Population does not
        os.makedirs(os.path.dirname(config.storage[len("sqlite:///"):]) or ".", exist_ok=True)
    population = pbtune.Population(config, initial=initial)
    pbtune.Worker(config, load_trainable(str(config.trainable))).run()
    store = population.store
    members = store.list_members(config.name)
    assert all(m.state is pbtune.MemberState.FINISHED for m in members), [(m.member_id, m.error) for m in members]
    initial: dict[int, float] = {}
    for record in store.scores(config.name):
        initial.setdefault(record.member_id, record.score)
    final = {m.member_id: float(m.score) for m in members if m.score is not None and math.isfinite(m.score)}
    return Outcome(config, store, initial, final)


@pytest.fixture
def run_small(tmp_path: Any) -> Callable[..., Outcome]:
    """``run_small("gbt", "gbt_small.yaml", budget=4)``: load, isolate in tmp_path, run."""

    def run(*parts: str, **overrides: Any) -> Outcome:
        overrides.setdefault("storage", f"sqlite:///{tmp_path}/pbtune.db")
        overrides.setdefault("checkpoints", str(tmp_path / "checkpoints"))
        return run_config(pbtune.load_config(example_path(*parts), **overrides))

    return run
