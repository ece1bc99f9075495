"""Hyperparameter domains: sample, perturb (always inside the domain) and resample.

Example:
    >>> import random
    >>> space = Space({"lr": Float(1e-4, 1e-1, log=True), "layers": Int(1, 4), "act": Choice(["relu", "tanh"])})
    >>> hp = space.sample(random.Random(0))
    >>> sorted(hp)
    ['act', 'layers', 'lr']
"""

from __future__ import annotations

import math
import random
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from pbtune.errors import InvalidConfigError

__all__ = ["Float", "Int", "Choice", "Domain", "Space", "Change"]

Value = float | int | str | bool | None


@dataclass(frozen=True)
class Change:
    """How one hyperparameter moved during explore, for lineage summaries."""

    name: str
    old: Any
    new: Any
    how: str  # "x0.8", "resample", "neighbour"

    def summary(self) -> str:
        """Readable form, e.g. ``lr: 0.01 --(x0.8)--> 0.008``."""
        return f"{self.name}: {_fmt(self.old)} --({self.how})--> {_fmt(self.new)}"


def _fmt(value: Any) -> str:
    return f"{value:.4g}" if isinstance(value, float) else repr(value) if isinstance(value, str) else str(value)


def _check_bounds(kind: str, low: float, high: float, log: bool) -> None:
    where = f"{kind}({low!r}, {high!r})"
    for field, value in (("low", low), ("high", high)):
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
            raise InvalidConfigError(field, where, "a finite number", value)
    if low >= high:
        raise InvalidConfigError("low", where, f"smaller than high ({high!r})", low)
    if log and low <= 0:
        raise InvalidConfigError("low", where, "> 0 when log=True", low)


@dataclass(frozen=True)
class Float:
    """A real interval ``[low, high]``; ``log=True`` samples and perturbs in log space."""

    low: float
    high: float
    log: bool = False

    def __post_init__(self) -> None:
        _check_bounds("Float", self.low, self.high, self.log)

    def sample(self, rng: random.Random) -> float:
        if self.log:
            return self.clip(math.exp(rng.uniform(math.log(self.low), math.log(self.high))))  # exp may round past
        if math.isfinite(self.high - self.low):
            return rng.uniform(self.low, self.high)
        # rng.uniform's low + (high - low) * u would be inf for bounds near +-1.8e308
        u = rng.random()
        return self.clip(self.low * (1.0 - u) + self.high * u)

    def perturb(self, value: Any, factor: float, rng: random.Random) -> tuple[float, str]:
        del rng  # deterministic given the factor
        value = float(value)
        if value == 0.0 and not self.log:
            # Multiplying 0 never moves it: shift by the same fraction of the range instead.
            span = self.high - self.low
            if math.isfinite(span):
                moved = (factor - 1.0) * span
            else:  # bounds near +-1.8e308: high - low overflows
                moved = (factor - 1.0) * self.high - (factor - 1.0) * self.low
        else:
            moved = value * factor  # for log domains: a shift of log(factor) in log space
        return self.clip(moved), f"x{factor:g}"

    def clip(self, value: float) -> float:
        return min(max(float(value), self.low), self.high)

    def contains(self, value: Any) -> bool:
        return isinstance(value, (int, float)) and self.low <= value <= self.high

    def to_config(self) -> dict[str, Any]:
        return {"type": "float", "low": self.low, "high": self.high, "log": self.log}


@dataclass(frozen=True)
class Int:
    """An integer interval ``[low, high]`` (both included); perturbed values stay ints."""

    low: int
    high: int
    log: bool = False

    def __post_init__(self) -> None:
        _check_bounds("Int", self.low, self.high, self.log)
        for field in ("low", "high"):
            value = getattr(self, field)
            if int(value) != value:
                raise InvalidConfigError(field, f"Int({self.low!r}, {self.high!r})", "an integer", value)

    def sample(self, rng: random.Random) -> int:
        if self.log:
            raw = math.exp(rng.uniform(math.log(self.low), math.log(self.high + 1)))
            return self.clip(math.floor(raw))
        return rng.randint(int(self.low), int(self.high))

    def perturb(self, value: Any, factor: float, rng: random.Random) -> tuple[int, str]:
        del rng
        current = int(value)
        moved = int(round(current * factor)) if current != 0 else round((factor - 1.0) * (self.high - self.low))
        if moved == current:  # rounding swallowed the step: move by one in the factor's direction
            moved = current + (1 if factor > 1.0 else -1)
        return self.clip(moved), f"x{factor:g}"

    def clip(self, value: float) -> int:
        return int(min(max(int(round(value)), int(self.low)), int(self.high)))

    def contains(self, value: Any) -> bool:
        return isinstance(value, int) and not isinstance(value, bool) and self.low <= value <= self.high

    def to_config(self) -> dict[str, Any]:
        return {"type": "int", "low": int(self.low), "high": int(self.high), "log": self.log}


@dataclass(frozen=True)
class Choice:
    """One of a list of values. Perturbing moves to a neighbouring value in the list."""

    values: tuple[Value, ...]

    def __init__(self, values: Sequence[Value]) -> None:
        if isinstance(values, (str, bytes)) or not isinstance(values, Sequence):
            raise InvalidConfigError("values", "Choice", "a list of values", values)
        if len(values) < 1:
            raise InvalidConfigError("values", "Choice", "a non-empty list", list(values))
        if len(set(map(repr, values))) != len(values):
            raise InvalidConfigError("values", "Choice", "a list without duplicates", list(values))
        object.__setattr__(self, "values", tuple(values))

    def sample(self, rng: random.Random) -> Value:
        return self.values[rng.randrange(len(self.values))]

    def perturb(self, value: Any, factor: float, rng: random.Random) -> tuple[Value, str]:
        del factor
        if len(self.values) == 1:
            return self.values[0], "neighbour"
        try:
            index = self.values.index(value)
        except ValueError:
            return self.sample(rng), "resample"
        if index == 0:
            step = 1
        elif index == len(self.values) - 1:
            step = -1
        else:
            step = rng.choice((-1, 1))
        return self.values[index + step], "neighbour"

    def contains(self, value: Any) -> bool:
        return value in self.values

    def to_config(self) -> dict[str, Any]:
        return {"type": "choice", "values": list(self.values)}


Domain = Float | Int | Choice

_DOMAIN_TYPES = {"float": Float, "int": Int, "choice": Choice}


def domain_from_config(name: str, config: Any) -> Domain:
    """Build one domain from its config form, e.g. ``{"type": "float", "low": 0, "high": 1}``.

    A bare list is shorthand for a choice.
    """
    where = f"space.{name}"
    if isinstance(config, (Float, Int, Choice)):
        return config
    if isinstance(config, list):
        return Choice(config)
    if not isinstance(config, Mapping):
        raise InvalidConfigError(name, "space", "a mapping with a `type` or a list of choices", config)
    kind = config.get("type")
    if kind not in _DOMAIN_TYPES:
        raise InvalidConfigError("type", where, f"one of {sorted(_DOMAIN_TYPES)}", kind)
    allowed = {"float": {"type", "low", "high", "log"}, "int": {"type", "low", "high", "log"},
               "choice": {"type", "values"}}[kind]
    unknown = sorted(set(config) - allowed)
    if unknown:
        raise InvalidConfigError(unknown[0], where, f"one of {sorted(allowed)}", config[unknown[0]])
    if kind == "choice":
        if "values" not in config:
            raise InvalidConfigError("values", where, "a non-empty list", None)
        return Choice(config["values"])
    for field in ("low", "high"):
        if field not in config:
            raise InvalidConfigError(field, where, "a number", None)
    log = config.get("log", False)
    if not isinstance(log, bool):
        raise InvalidConfigError("log", where, "true or false", log)
    try:
        return _DOMAIN_TYPES[kind](config["low"], config["high"], log=log)
    except InvalidConfigError as exc:  # re-anchor the message on the config's field path
        raise InvalidConfigError(exc.field, where, exc.constraint, exc.value) from None


class Space(Mapping[str, Domain]):
    """A named set of domains: the hyperparameters one member carries.

    Example:
        >>> import random
        >>> space = Space({"lr": Float(1e-3, 1.0, log=True)})
        >>> rng = random.Random(1)
        >>> hp = space.sample(rng)
        >>> new, changes = space.perturb(hp, rng)
        >>> 1e-3 <= new["lr"] <= 1.0
        True
    """

    def __init__(self, domains: Mapping[str, Any]) -> None:
        if not isinstance(domains, Mapping) or not domains:
            raise InvalidConfigError("space", "config", "a non-empty mapping of name -> domain", domains)
        self._domains: dict[str, Domain] = {}
        for name, domain in domains.items():
            if not isinstance(name, str) or not name:
                raise InvalidConfigError("name", "space", "a non-empty string", name)
            self._domains[name] = domain_from_config(name, domain)

    @classmethod
    def from_config(cls, config: Mapping[str, Any]) -> Space:
        return cls(config)

    def to_config(self) -> dict[str, dict[str, Any]]:
        return {name: domain.to_config() for name, domain in self._domains.items()}

    def __getitem__(self, name: str) -> Domain:
        return self._domains[name]

    def __iter__(self) -> Iterator[str]:
        return iter(self._domains)

    def __len__(self) -> int:
        return len(self._domains)

    def __repr__(self) -> str:
        return f"Space({self._domains!r})"

    def sample(self, rng: random.Random) -> dict[str, Any]:
        """Draw every hyperparameter from its prior."""
        return {name: domain.sample(rng) for name, domain in self._domains.items()}

    def perturb(
        self,
        hparams: Mapping[str, Any],
        rng: random.Random,
        *,
        factors: Sequence[float] = (0.8, 1.2),
        resample_probability: float = 0.0,
    ) -> tuple[dict[str, Any], list[Change]]:
        """Perturb each hyperparameter by a random factor, or resample it with a probability.

        Values stay inside their domains: ints stay ints, floats are clipped, categoricals move
        to a neighbour. Hyperparameters the space does not declare are kept unchanged.
        """
        new = dict(hparams)
        changes: list[Change] = []
        for name, domain in self._domains.items():
            old = hparams.get(name)
            if old is None or rng.random() < resample_probability:
                value, how = domain.sample(rng), "resample"
            else:
                value, how = domain.perturb(old, rng.choice(list(factors)), rng)
            new[name] = value
            changes.append(Change(name, old, value, how))
        return new, changes

    def resample(self, hparams: Mapping[str, Any], rng: random.Random) -> tuple[dict[str, Any], list[Change]]:
        """Draw every hyperparameter anew from its prior."""
        return self.perturb(hparams, rng, resample_probability=1.0)

    def validate(self, hparams: Mapping[str, Any], where: str = "hparams") -> None:
        """Raise :class:`InvalidConfigError` if a declared hyperparameter is missing or outside its domain."""
        for name, domain in self._domains.items():
            if name not in hparams:
                raise InvalidConfigError(name, where, f"set ({domain.to_config()})", None)
            if not domain.contains(hparams[name]):
                raise InvalidConfigError(name, where, f"inside {domain.to_config()}", hparams[name])
