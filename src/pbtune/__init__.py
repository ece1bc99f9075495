"""pbtune: Population Based Training (Jaderberg et al., 2017) as a library and a CLI."""

from __future__ import annotations

from pbtune.checkpoints import CheckpointStore
from pbtune.config import RunConfig, load_config
from pbtune.engine import Trainable, Worker
from pbtune.errors import (
    CheckpointError,
    CorruptCheckpointError,
    InvalidConfigError,
    MemberFinishedError,
    PBTuneError,
    StoreError,
)
from pbtune.launch import run
from pbtune.lineage import ScheduleEntry, schedule
from pbtune.member import Donor, Member, Population
from pbtune.report.replay import replay
from pbtune.results import RunResult
from pbtune.space import Choice, Float, Int, Space
from pbtune.store import PopulationStore, open_store
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

__version__ = "0.1.0"


def __getattr__(name: str) -> object:
    # The server and client need the `server` extra: import them only when asked for.
    if name in ("PBTServer", "PBTClient"):
        import pbtune.server

        return getattr(pbtune.server, name)
    raise AttributeError(f"module 'pbtune' has no attribute {name!r}")

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
