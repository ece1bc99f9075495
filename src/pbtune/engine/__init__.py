"""Engines that drive Trainables: the worker loop and the local process runner (no progress view:
:func:`pbtune.run` adds it)."""

from __future__ import annotations

from pbtune.engine.local import run
from pbtune.engine.trainable import Trainable
from pbtune.engine.worker import Worker, load_trainable
from pbtune.results import RunResult

__all__ = ["RunResult", "Trainable", "Worker", "load_trainable", "run"]
