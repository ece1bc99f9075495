"""Shared validators: one message shape for every setting.

Each raises :class:`~pbtune.errors.InvalidConfigError` ("`<field>` of `<where>` must be
<constraint>; got <value>") and returns the value in its normal form. Booleans are never
accepted as numbers, and numbers must be finite unless the constraint says otherwise.

Example:
    >>> check_number(0.5, "quantile", "exploit", low=0, high=0.5, low_open=True)
    0.5
    >>> check_int(True, "interval", "ready", minimum=1)
    Traceback (most recent call last):
    ...
    pbtune.errors.InvalidConfigError: `interval` of `ready` must be an integer >= 1; got True
"""

from __future__ import annotations

import math
from typing import Any

from pbtune.errors import InvalidConfigError

__all__ = ["check_bool", "check_int", "check_number", "is_number"]


def is_number(value: Any) -> bool:
    """An int or float that is not a bool."""
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def check_int(value: Any, field: str, where: str, *, minimum: int | None = None) -> int:
    """An integer (not a bool), at least ``minimum`` when given."""
    if isinstance(value, bool) or not isinstance(value, int) or (minimum is not None and value < minimum):
        raise InvalidConfigError(field, where, "an integer" + (f" >= {minimum}" if minimum is not None else ""), value)
    return value


def check_number(
    value: Any,
    field: str,
    where: str,
    *,
    low: float | None = None,
    high: float | None = None,
    low_open: bool = False,
    high_open: bool = False,
) -> float:
    """A finite number within ``[low, high]`` (an end is excluded when ``*_open``); returns a float."""
    ok = is_number(value) and math.isfinite(value)
    if ok and low is not None:
        ok = value > low if low_open else value >= low
    if ok and high is not None:
        ok = value < high if high_open else value <= high
    if not ok:
        raise InvalidConfigError(field, where, _describe(low, high, low_open, high_open), value)
    return float(value)


def check_bool(value: Any, field: str, where: str) -> bool:
    if not isinstance(value, bool):
        raise InvalidConfigError(field, where, "true or false", value)
    return value


def _describe(low: float | None, high: float | None, low_open: bool, high_open: bool) -> str:
    if low is not None and high is not None:
        return f"a number in {'(' if low_open else '['}{low:g}, {high:g}{')' if high_open else ']'}"
    if low is not None:
        return f"a finite number {'>' if low_open else '>='} {low:g}"
    if high is not None:
        return f"a finite number {'<' if high_open else '<='} {high:g}"
    return "a finite number"
