"""Engines that drive Trainables: the worker loop and the local process runner."""

from __future__ import annotations

from pbtune.engine.local import RunResult, best_member, run
from pbtune.engine.trainable import Trainable
from pbtune.engine.worker import Worker, load_trainable

__all__ = ["RunResult", "Trainable", "Worker", "best_member", "load_trainable", "run"]
