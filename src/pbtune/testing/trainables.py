"""Small deterministic trainables for tests, benchmarks and the quick demo."""

from __future__ import annotations

import json
import math
import os
import time
from collections.abc import Mapping
from typing import Any

from pbtune.engine.trainable import Trainable

__all__ = ["Counter", "Quadratic", "Flaky"]


class Counter(Trainable):
    """Zero-cost trainable: each step adds ``hparams["x"]`` to a counter (the overhead benchmark)."""

    def setup(self, hparams: Mapping[str, Any]) -> None:
        self.x = float(hparams["x"])
        self.total = 0.0

    def step(self) -> Mapping[str, float]:
        self.total += self.x
        return {"score": self.total}

    def save(self, path: str) -> None:
        with open(path, "w") as handle:
            json.dump({"total": self.total}, handle)

    def load(self, path: str) -> None:
        with open(path) as handle:
            self.total = json.load(handle)["total"]

    def set_hparams(self, hparams: Mapping[str, Any]) -> None:
        self.x = float(hparams["x"])


class Quadratic(Trainable):
    """Gradient ascent on ``-(theta - target)^2`` with learning rate ``lr``; score is the objective.

    ``step_seconds`` (constructor argument) makes each step sleep, to give tests time to kill
    workers mid-run.
    """

    def setup(self, hparams: Mapping[str, Any]) -> None:
        self.lr = float(hparams["lr"])
        self.theta = 0.0
        self.target = float(self.args.get("target", 3.0))

    def step(self) -> Mapping[str, float]:
        delay = float(self.args.get("step_seconds", 0.0))
        if delay:
            time.sleep(delay)
        self.theta += self.lr * 2 * (self.target - self.theta)
        return {"score": -((self.theta - self.target) ** 2), "theta": self.theta}

    def save(self, path: str) -> None:
        tmp = f"{path}.tmp"
        with open(tmp, "w") as handle:
            json.dump({"theta": self.theta}, handle)
        os.replace(tmp, path)

    def load(self, path: str) -> None:
        with open(path) as handle:
            self.theta = json.load(handle)["theta"]


class Flaky(Quadratic):
    """A Quadratic whose members listed in ``fail_members`` raise; ``nan_members`` score NaN."""

    def setup(self, hparams: Mapping[str, Any]) -> None:
        super().setup(hparams)
        self.tag = hparams.get("tag")

    def step(self) -> Mapping[str, float]:
        result = dict(super().step())
        if self.tag == "boom":
            raise RuntimeError("this member always fails")
        if self.tag == "nan":
            result["score"] = math.nan
        return result
