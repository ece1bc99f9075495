"""The first hyperparameters of a population: sampled from the space (``init: random``) or
spread over it on a grid (``init: grid``).

Example:
    >>> from pbtune.space import Float, Space
    >>> [round(h["lr"], 4) for h in grid(Space({"lr": Float(0.001, 0.1, log=True)}), 3)]
    [0.001, 0.01, 0.1]
"""

from __future__ import annotations

import itertools
import math
import random
from typing import Any

from pbtune.errors import InvalidConfigError
from pbtune.space import Choice, Int, Space

__all__ = ["INITS", "first_hparams", "grid"]

INITS = ("random", "grid")


def first_hparams(space: Space, population: int, seed: int, init: str) -> list[dict[str, Any]]:
    """Every member's first hyperparameters (deterministic given the seed)."""
    if init == "grid":
        return grid(space, population)
    if init != "random":
        raise InvalidConfigError("init", "config", f"one of {list(INITS)}", init)
    rng = random.Random(f"{seed}:init")
    return [space.sample(rng) for _ in range(population)]


def grid(space: Space, count: int) -> list[dict[str, Any]]:
    """``count`` points spread over a grid of the space.

    Each hyperparameter gets ``ceil(count ** (1 / d))`` levels, evenly spaced (in log space for
    log domains; ints rounded, choices picked evenly from the list); when the full grid has more
    points than ``count``, points are taken at even intervals through it, and when it has fewer
    (few distinct values), it repeats.
    """
    names = list(space)
    if not names:
        return [{} for _ in range(count)]
    levels = max(1, math.ceil(count ** (1.0 / len(names)) - 1e-9))
    axes = [_levels(space[name], levels) for name in names]
    points = list(itertools.product(*axes))
    if len(points) >= count:
        picked = [points[round(i * (len(points) - 1) / max(count - 1, 1))] for i in range(count)]
    else:
        picked = [points[i % len(points)] for i in range(count)]
    return [dict(zip(names, point, strict=True)) for point in picked]


def _levels(domain: Any, count: int) -> list[Any]:
    if isinstance(domain, Choice):
        values = list(domain.values)
        if count >= len(values):
            return values
        return [values[round(i * (len(values) - 1) / max(count - 1, 1))] for i in range(count)]
    low, high = float(domain.low), float(domain.high)
    fractions = [0.5] if count == 1 else [i / (count - 1) for i in range(count)]
    if domain.log:
        points = [math.exp(math.log(low) + f * (math.log(high) - math.log(low))) for f in fractions]
    else:
        points = [low + f * (high - low) for f in fractions]
    if isinstance(domain, Int):
        return sorted({min(int(domain.high), max(int(domain.low), round(v))) for v in points})
    return [min(high, max(low, v)) for v in points]
