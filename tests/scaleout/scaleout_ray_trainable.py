"""Trainables loaded by path inside Ray actors (see test_scaleout_ray.py)."""

from __future__ import annotations

import os
from collections.abc import Mapping

from pbtune.testing.trainables import Quadratic


class ResourceProbe(Quadratic):
    """Reports the Ray resources its actor was given next to the score."""

    def step(self) -> Mapping[str, float]:
        import ray

        assigned = ray.get_runtime_context().get_assigned_resources()
        return {**super().step(), "cpu": assigned.get("CPU", 0.0), "slot": assigned.get("slot", 0.0)}


class DiesOnce(Quadratic):
    """Kills its own process (like an OOM kill) the first time any trainable instance takes its 3rd step."""

    def step(self) -> Mapping[str, float]:
        result = super().step()
        self.steps = getattr(self, "steps", 0) + 1
        marker = self.args["marker"]
        if self.steps == 3 and not os.path.exists(marker):
            open(marker, "w").close()
            os._exit(1)
        return result
