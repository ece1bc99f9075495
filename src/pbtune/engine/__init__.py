"""Engines that drive Trainables: the worker loop and the local process runner (no progress view:
:func:`pbtune.run` adds it)."""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

from pbtune.engine.trainable import Trainable

if TYPE_CHECKING:
    from pbtune.engine.local import run
    from pbtune.engine.worker import Worker, load_trainable
    from pbtune.results import RunResult

# The runner and the worker import the stores (SQLAlchemy, fsspec): loaded on first use.
_LAZY = {"run": "pbtune.engine.local", "Worker": "pbtune.engine.worker",
         "load_trainable": "pbtune.engine.worker", "RunResult": "pbtune.results"}


def __getattr__(name: str) -> object:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'pbtune.engine' has no attribute {name!r}")
    return getattr(importlib.import_module(module), name)


__all__ = ["RunResult", "Trainable", "Worker", "load_trainable", "run"]
