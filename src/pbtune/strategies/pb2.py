"""PB2: model-based explore (Parker-Holder et al. 2020, "Provably Efficient Online Hyperparameter
Optimization with Population-Based Bandits").

When a member exploits, PB2 chooses its new hyperparameters instead of perturbing the donor's:
a Gaussian process models how fast each member's score improved over its last ready interval
as a function of (time, hyperparameters), and the new point maximises the upper confidence
bound (GP-UCB) at the current time. Time is an input with its own learned length scale, so old
observations count less as the run moves on (the paper's time-varying kernel, approximated by
an anisotropic squared-exponential kernel over time and hyperparameters, fitted by
scikit-learn). Categorical hyperparameters enter the model one-hot and candidates try every
category (instead of PB2-Mix's separate bandit), so mixed spaces work in one model.

Data: each member's latest (step, hyperparameters, score change per step over about one ready
interval), taken from the members' recent scores in the population snapshot. With too little
data (fewer than ``min_data`` members), constant or non-finite improvements, PB2 falls back to
:class:`~pbtune.strategies.explore.PerturbOrResample` and says so in the lineage
(``--(pb2 fallback: ...; x1.2)-->``).
"""

from __future__ import annotations

import math
import random
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar

from pbtune.errors import InvalidConfigError
from pbtune.space import Change, Choice, Space
from pbtune.strategies.explore import ExploreContext, PerturbOrResample
from pbtune.types import MemberRecord, MemberState
from pbtune.validation import check_int

__all__ = ["PB2"]


@dataclass(frozen=True)
class PB2:
    """GP-UCB explore over the population's recent (time, hyperparameters, improvement) data.

    Args:
        candidates: random points of the space (plus as many near the hyperparameters taken
            from the donor) scored by the acquisition.
        min_data: fewest members with usable data; below it, fall back to ``fallback``.
        fallback: the explore used without enough data.
    """

    uses_population: ClassVar[bool] = True  # the planner reads the whole population for it

    candidates: int = 256
    min_data: int = 3
    fallback: PerturbOrResample = field(default_factory=PerturbOrResample)

    def __post_init__(self) -> None:
        check_int(self.candidates, "candidates", "explore (pb2)", minimum=1)
        check_int(self.min_data, "min_data", "explore (pb2)", minimum=2)
        if not isinstance(self.fallback, PerturbOrResample):  # a config form, e.g. "perturb"
            from pbtune.strategies import explore_from_config

            fallback = explore_from_config(self.fallback)
            if not isinstance(fallback, PerturbOrResample):
                raise InvalidConfigError("fallback", "explore (pb2)", "perturb, resample or perturb_or_resample",
                                         self.fallback)
            object.__setattr__(self, "fallback", fallback)
        try:
            import sklearn  # noqa: F401
        except ImportError as exc:
            raise InvalidConfigError(
                "explore", "config", "installed scikit-learn for pb2 (pip install 'pbtune[pb2]')", "pb2"
            ) from exc

    def explore(
        self, hparams: Mapping[str, Any], space: Space, rng: random.Random, context: ExploreContext | None = None
    ) -> tuple[dict[str, Any], list[Change]]:
        data = [] if context is None else _observations(context)
        reason = _unusable(data, self.min_data)
        if reason is not None:
            return self._fall_back(hparams, space, rng, reason)
        assert context is not None  # noqa: S101 - data is empty without a context
        encoder = _Encoder(space)
        horizon = max(max(step for step, _, _ in data), context.step, 1)
        x = [[step / horizon, *encoder.encode(h)] for step, h, _ in data]
        y = [gain for _, _, gain in data]
        try:
            best = self._acquire(x, y, encoder, hparams, context.step / horizon, rng)
        except (ValueError, ArithmeticError, RuntimeError) as exc:  # a degenerate fit
            return self._fall_back(hparams, space, rng, f"GP fit failed: {exc}")
        new = encoder.decode(best)
        changes = [Change(name, hparams[name], new[name], "pb2") for name in space if new[name] != hparams.get(name)]
        return new, changes

    def _acquire(
        self, x: list[list[float]], y: list[float], encoder: _Encoder, hparams: Mapping[str, Any], now: float,
        rng: random.Random,
    ) -> list[float]:
        import numpy as np
        from sklearn.exceptions import ConvergenceWarning
        from sklearn.gaussian_process import GaussianProcessRegressor
        from sklearn.gaussian_process.kernels import RBF, ConstantKernel, WhiteKernel

        dims = len(x[0])
        kernel = ConstantKernel(1.0, (1e-3, 1e3)) * RBF([1.0] * dims, [(1e-2, 1e2)] * dims) + WhiteKernel(
            0.1, (1e-6, 1.0))
        model = GaussianProcessRegressor(kernel, normalize_y=True, random_state=rng.randrange(2**31))
        with warnings.catch_warnings():  # length scales at their bounds are expected with this little data
            warnings.simplefilter("ignore", ConvergenceWarning)
            model.fit(np.asarray(x), np.asarray(y))
        here = encoder.encode(hparams)
        pool = [encoder.sample(rng) for _ in range(self.candidates)]
        pool += [encoder.near(here, rng) for _ in range(self.candidates)]
        queries = np.asarray([[now, *point] for point in pool])
        mean, std = model.predict(queries, return_std=True)
        # GP-UCB's confidence weight (Srinivas et al. 2010), growing slowly with the data seen.
        beta = 2.0 * math.log(max(dims, 1) * len(y) ** 2 * math.pi**2 / (6 * 0.1))
        score = mean + math.sqrt(beta) * std
        return pool[int(np.argmax(score))]

    def _fall_back(
        self, hparams: Mapping[str, Any], space: Space, rng: random.Random, reason: str
    ) -> tuple[dict[str, Any], list[Change]]:
        new, changes = self.fallback.explore(hparams, space, rng)
        return new, [Change(c.name, c.old, c.new, f"pb2 fallback: {reason}; {c.how}") for c in changes]


def _observations(context: ExploreContext) -> list[tuple[int, Mapping[str, Any], float]]:
    """(step, hparams, score change per step, larger is better) of each member with usable data."""
    sign = 1.0 if context.mode == "max" else -1.0
    out = []
    for member in context.population:
        if member.state is MemberState.FAILED:
            continue
        gain = _gain(member, context.interval)
        if gain is not None:
            out.append((member.step, member.hparams, sign * gain))
    return out


def _gain(member: MemberRecord, interval: int) -> float | None:
    """Score change per step over about the last ``interval`` steps (None without two finite reports)."""
    reports = [(step, score) for step, score in member.recent if step <= member.step and math.isfinite(score)]
    if len(reports) < 2:
        return None
    end_step, end = reports[-1]
    earlier = [r for r in reports if r[0] <= end_step - interval] or reports[:1]
    start_step, start = earlier[-1]
    return (end - start) / (end_step - start_step) if end_step > start_step else None


def _unusable(data: Sequence[tuple[int, Mapping[str, Any], float]], min_data: int) -> str | None:
    if len(data) < min_data:
        return f"{len(data)} members with recent scores, need {min_data}"
    gains = [gain for _, _, gain in data]
    if not all(math.isfinite(g) for g in gains):
        return "non-finite score changes"
    if max(gains) - min(gains) <= 1e-12 * max(1.0, max(abs(g) for g in gains)):
        return "every member improved equally"
    return None


class _Encoder:
    """Hyperparameters <-> points of the unit cube (log domains in log space; choices one-hot)."""

    def __init__(self, space: Space) -> None:
        self.space = space

    def encode(self, hparams: Mapping[str, Any]) -> list[float]:
        point: list[float] = []
        for name in self.space:
            domain, value = self.space[name], hparams[name]
            if isinstance(domain, Choice):
                point += [1.0 if v == value else 0.0 for v in domain.values]
            else:
                point.append(self._unit(domain, float(value)))
        return point

    def decode(self, point: Sequence[float]) -> dict[str, Any]:
        out: dict[str, Any] = {}
        index = 0
        for name in self.space:
            domain = self.space[name]
            if isinstance(domain, Choice):
                width = len(domain.values)
                chunk = list(point[index:index + width])
                out[name] = domain.values[chunk.index(max(chunk))]
                index += width
                continue
            value = self._value(domain, point[index])
            out[name] = min(int(domain.high), max(int(domain.low), round(value))) if _is_int(domain) else value
            index += 1
        return out

    def sample(self, rng: random.Random) -> list[float]:
        point: list[float] = []
        for name in self.space:
            domain = self.space[name]
            if isinstance(domain, Choice):
                pick = rng.randrange(len(domain.values))
                point += [1.0 if i == pick else 0.0 for i in range(len(domain.values))]
            else:
                point.append(rng.random())
        return point

    def near(self, point: Sequence[float], rng: random.Random) -> list[float]:
        """A candidate close to ``point``: numbers moved by up to 0.1, a choice changed sometimes."""
        out: list[float] = []
        index = 0
        for name in self.space:
            domain = self.space[name]
            if isinstance(domain, Choice):
                width = len(domain.values)
                chunk = list(point[index:index + width])
                if rng.random() < 0.2:
                    pick = rng.randrange(width)
                    chunk = [1.0 if i == pick else 0.0 for i in range(width)]
                out += chunk
                index += width
            else:
                out.append(min(1.0, max(0.0, point[index] + rng.uniform(-0.1, 0.1))))
                index += 1
        return out

    @staticmethod
    def _unit(domain: Any, value: float) -> float:
        low, high = float(domain.low), float(domain.high)
        if domain.log:
            return (math.log(value) - math.log(low)) / (math.log(high) - math.log(low))
        return (value - low) / (high - low)

    @staticmethod
    def _value(domain: Any, unit: float) -> float:
        low, high = float(domain.low), float(domain.high)
        unit = min(1.0, max(0.0, unit))
        if domain.log:
            return min(high, max(low, math.exp(math.log(low) + unit * (math.log(high) - math.log(low)))))
        return min(high, max(low, low + unit * (high - low)))


def _is_int(domain: Any) -> bool:
    from pbtune.space import Int

    return isinstance(domain, Int)
