"""Hyperparameter space files: the legacy CSV ``name,min,max,scale`` format and JSON/YAML.

A CSV file has one hyperparameter per row; ``scale`` is ``log`` or ``linear``; blank lines and
lines starting with ``#`` are skipped. A header row is optional: ``name,min,max,scale``, or the
older project's ``hyperparameter,min_value,max_value,search_scale`` (the two spellings may be
mixed; with a header, the columns may come in any order)::

    hyperparameter,min_value,max_value,search_scale
    lr,1e-4,1e-1,log
    momentum,0.5,0.99,linear

A JSON or YAML file holds either a space mapping (``{"lr": {"type": "float", ...}}``) or a
whole run config, of which only ``space`` is used.

Example:
    >>> import pathlib, tempfile
    >>> path = pathlib.Path(tempfile.mkdtemp(), "space.csv")
    >>> _ = path.write_text("name,min,max,scale\\nlr,0.001,0.1,log\\n")
    >>> load_space_file(str(path)).to_config()
    {'lr': {'type': 'float', 'low': 0.001, 'high': 0.1, 'log': True}}
"""

from __future__ import annotations

import csv
import io
import json
import math
import os
from collections.abc import Mapping
from typing import Any

from pbtune.errors import InvalidConfigError
from pbtune.space import Float, Space

__all__ = ["load_space_file", "parse_space_csv", "SCALES"]

SCALES = ("linear", "log")
_HEADER = ["name", "min", "max", "scale"]
_ALIASES = {"name": "name", "hyperparameter": "name", "min": "min", "min_value": "min", "max": "max",
            "max_value": "max", "scale": "scale", "search_scale": "scale"}


def _header(cells: list[str]) -> list[int] | None:
    """For a header row, where each of name, min, max, scale is; None for a data row."""
    roles = [_ALIASES.get(cell.lower()) for cell in cells]
    if None in roles or sorted(map(str, roles)) != sorted(_HEADER):
        return None
    return [roles.index(column) for column in _HEADER]


def parse_space_csv(text: str, where: str = "space.csv") -> Space:
    """Parse the legacy ``name,min,max,scale`` CSV into a :class:`~pbtune.space.Space`.

    Example:
        >>> parse_space_csv("lr,0.01,1,log\\nwd,0,0.1,linear")["wd"]
        Float(low=0.0, high=0.1, log=False)
    """
    domains: dict[str, Float] = {}
    rows = csv.reader(io.StringIO(text))
    order = [0, 1, 2, 3]  # where name, min, max, scale are (a header may reorder them)
    seen_data = False
    for line_no, row in enumerate(rows, start=1):
        cells = [cell.strip() for cell in row]
        if not cells or all(not c for c in cells) or cells[0].startswith("#"):
            continue
        header = None if seen_data else _header(cells)
        if header is not None:
            order = header
            continue
        seen_data = True
        at = f"{where} line {line_no}"
        if len(cells) != 4:
            raise InvalidConfigError("row", at, "4 columns: name,min,max,scale", ",".join(row))
        name, low_text, high_text, scale = (cells[i] for i in order)
        if not name:
            raise InvalidConfigError("name", at, "a non-empty hyperparameter name", name)
        if name in domains:
            raise InvalidConfigError("name", at, "unique (each hyperparameter once)", name)
        low = _number(low_text, "min", at)
        high = _number(high_text, "max", at)
        if scale.lower() not in SCALES:
            raise InvalidConfigError("scale", at, f"one of {list(SCALES)}", scale)
        try:
            domains[name] = Float(low, high, log=scale.lower() == "log")
        except InvalidConfigError as exc:  # re-anchor on the CSV's column names
            column = {"low": "min", "high": "max"}.get(exc.field, exc.field)
            raise InvalidConfigError(column, at, exc.constraint, exc.value) from None
    if not domains:
        raise InvalidConfigError("rows", where, "at least one `name,min,max,scale` row", text[:80])
    return Space(domains)


def _number(text: str, column: str, where: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise InvalidConfigError(column, where, "a number", text) from None
    if not math.isfinite(value):
        raise InvalidConfigError(column, where, "a finite number", text)
    return value


def load_space_file(path: str) -> Space:
    """Read a space from a ``.csv``, ``.json``, ``.yaml`` or ``.yml`` file.

    Raises:
        InvalidConfigError: unreadable file, unknown extension, or an invalid space.
    """
    extension = os.path.splitext(path)[1].lower()
    if extension not in (".csv", ".json", ".yaml", ".yml"):
        raise InvalidConfigError("config_path", "PBTClient", "a .csv, .json, .yaml or .yml file", path)
    try:
        with open(path, encoding="utf-8") as handle:
            text = handle.read()
    except OSError as exc:
        raise InvalidConfigError("config_path", "PBTClient", f"a readable file ({exc.strerror})", path) from None
    if extension == ".csv":
        return parse_space_csv(text, where=os.path.basename(path))
    data: Any
    if extension == ".json":
        try:
            data = json.loads(text)
        except json.JSONDecodeError as exc:
            raise InvalidConfigError("json", path, f"valid JSON ({exc})", text[:80]) from None
    else:
        import yaml

        try:
            data = yaml.safe_load(text)
        except yaml.YAMLError as exc:
            raise InvalidConfigError("yaml", path, f"valid YAML ({exc})", text[:80]) from None
    if isinstance(data, Mapping) and isinstance(data.get("space"), Mapping):
        data = data["space"]  # a whole run config: its space
    if not isinstance(data, Mapping):
        raise InvalidConfigError("space", path, "a mapping of name -> domain (or a run config)", data)
    return Space(data)
