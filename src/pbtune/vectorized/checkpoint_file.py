"""The population checkpoint file: written atomically, read with ``weights_only=True``, and a
member's ``state_dict`` extracted without any model code."""

from __future__ import annotations

import os
import tempfile
from collections import OrderedDict
from collections.abc import Mapping
from typing import Any

import torch

from pbtune.errors import CheckpointError

__all__ = ["CHECKPOINT_FORMAT", "atomic_save", "extract_member", "load_checkpoint"]

CHECKPOINT_FORMAT = "pbtune.vectorized/1"


def atomic_save(obj: Any, path: str) -> None:
    """``torch.save`` to ``path`` atomically: a temporary file in the same folder, fsync, rename."""
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=".pbtune-", suffix=".tmp", dir=folder)
    try:
        with os.fdopen(fd, "wb") as handle:
            torch.save(obj, handle)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise


def load_checkpoint(path: str, *, map_location: Any = "cpu") -> dict[str, Any]:
    """Read a population checkpoint with ``weights_only=True`` (tensors and plain values only)."""
    try:
        data = torch.load(path, map_location=map_location, weights_only=True)
    except FileNotFoundError:
        raise
    except Exception as exc:  # unpickling errors, truncated files
        raise CheckpointError(f"cannot read population checkpoint {path}: {exc}") from exc
    if not isinstance(data, dict) or data.get("format") != CHECKPOINT_FORMAT:
        raise CheckpointError(f"{path} is not a pbtune population checkpoint ({CHECKPOINT_FORMAT})")
    return data


def extract_member(population_state: Mapping[str, Any], index: int) -> OrderedDict[str, torch.Tensor]:
    """Member ``index``'s ``state_dict`` from a saved population (``load_checkpoint(path)["population"]``).

    Needs no model code: the checkpoint records which slice of the stacked tensors each
    state_dict key is.

    Example::

        data = load_checkpoint("pbtune-runs/checkpoints/digits-vec/population.pt")
        torch.save(extract_member(data["population"], 7), "member7.pt")
    """
    size = int(population_state["size"])
    if not 0 <= index < size:
        raise IndexError(f"member index must be in [0, {size}); got {index}")
    offsets, shapes = {}, {}
    start = 0
    for name, shape in zip(population_state["param_names"], population_state["param_shapes"], strict=True):
        count = 1
        for dim in shape:
            count *= int(dim)
        offsets[name], shapes[name] = (start, start + count), tuple(int(d) for d in shape)
        start += count
    out: OrderedDict[str, torch.Tensor] = OrderedDict()
    for key, kind, name in population_state["state_keys"]:
        if kind == "param":
            lo, hi = offsets[name]
            out[key] = population_state["params"][index, lo:hi].reshape(shapes[name]).clone()
        else:
            out[key] = population_state["constants"][name][index].clone()
    return out
