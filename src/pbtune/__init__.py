"""pbtune: Population Based Training (Jaderberg et al., 2017) as a library and a CLI."""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

from pbtune.config import RunConfig, load_config
from pbtune.engine.trainable import Trainable
from pbtune.errors import (
    CheckpointError,
    CorruptCheckpointError,
    InvalidConfigError,
    MemberFinishedError,
    PBTuneError,
    StoreError,
)
from pbtune.lineage import ScheduleEntry, schedule
from pbtune.space import Choice, Float, Int, Space
from pbtune.strategies import (
    Continue,
    Exploit,
    Perturb,
    PerturbOrResample,
    Ready,
    Resample,
    Tournament,
    Truncation,
)
from pbtune.types import EventRecord, MemberRecord, MemberState, ScoreRecord

if TYPE_CHECKING:
    from pbtune.checkpoints import CheckpointStore
    from pbtune.engine.worker import Worker
    from pbtune.launch import run
    from pbtune.member import Donor, Member, Population
    from pbtune.report.replay import replay
    from pbtune.results import RunResult
    from pbtune.server import PBTClient, PBTServer
    from pbtune.store import PopulationStore, open_store

__version__ = "0.1.0"

# Names whose modules import SQLAlchemy, fsspec (the stores) or the server extra: loaded on first
# use, so `import pbtune` stays cheap (issue 18: 0.76 s -> see benchmarks/startup.py).
_LAZY = {
    "CheckpointStore": "pbtune.checkpoints",
    "Worker": "pbtune.engine.worker",
    "run": "pbtune.launch",
    "Donor": "pbtune.member",
    "Member": "pbtune.member",
    "Population": "pbtune.member",
    "replay": "pbtune.report.replay",
    "RunResult": "pbtune.results",
    "PBTClient": "pbtune.server",
    "PBTServer": "pbtune.server",
    "PopulationStore": "pbtune.store",
    "open_store": "pbtune.store",
}


def __getattr__(name: str) -> object:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'pbtune' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value  # later lookups skip this function
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_LAZY))


__all__ = [
    "CheckpointError",
    "CheckpointStore",
    "Choice",
    "Continue",
    "CorruptCheckpointError",
    "Donor",
    "EventRecord",
    "Exploit",
    "Float",
    "Int",
    "InvalidConfigError",
    "Member",
    "PBTClient",
    "PBTServer",
    "MemberFinishedError",
    "MemberRecord",
    "MemberState",
    "PBTuneError",
    "Perturb",
    "PerturbOrResample",
    "Population",
    "PopulationStore",
    "Ready",
    "Resample",
    "RunConfig",
    "RunResult",
    "ScheduleEntry",
    "ScoreRecord",
    "Space",
    "StoreError",
    "Tournament",
    "Trainable",
    "Truncation",
    "Worker",
    "load_config",
    "open_store",
    "replay",
    "run",
    "schedule",
]
