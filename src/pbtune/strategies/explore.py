"""Explore strategies: new hyperparameters from the current ones, inside the space."""

from __future__ import annotations

import math
import random
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from pbtune.errors import InvalidConfigError
from pbtune.space import Change, Space
from pbtune.types import MemberRecord
from pbtune.validation import check_number, is_number

__all__ = ["ExploreContext", "Perturb", "Resample", "PerturbOrResample"]


@dataclass(frozen=True)
class ExploreContext:
    """What a model-based explore may look at besides the hyperparameters (PB2): the population
    snapshot of the round, the exploring member and step, the run's direction and ready interval."""

    population: Sequence[MemberRecord]
    member_id: int
    step: int
    mode: str
    interval: int


def _check_factors(factors: Sequence[float], where: str) -> tuple[float, ...]:
    if isinstance(factors, (str, bytes)) or not isinstance(factors, Sequence) or not factors:
        raise InvalidConfigError("factors", where, "a non-empty list of finite positive numbers", factors)
    for f in factors:
        if not is_number(f) or not math.isfinite(f) or f <= 0:
            raise InvalidConfigError("factors", where, "a non-empty list of finite positive numbers", list(factors))
    return tuple(float(f) for f in factors)


@dataclass(frozen=True)
class PerturbOrResample:
    """Each hyperparameter is resampled from its prior with ``resample_probability``, else
    multiplied by a factor drawn from ``factors`` (categoricals move to a neighbour)."""

    resample_probability: float = 0.25
    factors: tuple[float, ...] = (0.8, 1.2)

    def __post_init__(self) -> None:
        check_number(self.resample_probability, "resample_probability", "explore", low=0, high=1)
        object.__setattr__(self, "factors", _check_factors(self.factors, "explore"))

    def explore(
        self, hparams: Mapping[str, Any], space: Space, rng: random.Random, context: ExploreContext | None = None
    ) -> tuple[dict[str, Any], list[Change]]:
        return space.perturb(hparams, rng, factors=self.factors, resample_probability=self.resample_probability)


@dataclass(frozen=True)
class Perturb(PerturbOrResample):
    """Multiply each hyperparameter by 0.8 or 1.2 (the paper's perturb)."""

    resample_probability: float = 0.0


@dataclass(frozen=True)
class Resample(PerturbOrResample):
    """Draw every hyperparameter anew from its prior (the paper's resample)."""

    resample_probability: float = 1.0



