"""The per-run state of a vectorized run: everything ``run()`` creates, in one object."""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from pbtune.checkpoints import CheckpointStore
from pbtune.store.base import PopulationStore
from pbtune.types import RECENT_SCORES
from pbtune.vectorized._writer import BackgroundWriter
from pbtune.vectorized.chunking import ChunkPlan
from pbtune.vectorized.population import StackedPopulation
from pbtune.vectorized.settings import Settings
from pbtune.vectorized.threads import ThreadTuner

__all__ = ["RunState"]


@dataclass
class RunState:
    """One run in progress. ``writer`` runs store writes (inline when disabled); ``files`` the
    population checkpoint file (it may be the same writer)."""

    settings: Settings
    store: PopulationStore
    checkpoints: CheckpointStore
    population: StackedPopulation
    generator: torch.Generator  # draws every member's minibatches
    data: tuple[torch.Tensor, torch.Tensor]  # on the run's device
    eval_data: tuple[torch.Tensor, torch.Tensor] | None
    versions: dict[int, int]  # each member's store version, as of the last write
    plan: ChunkPlan
    writer: BackgroundWriter = field(default_factory=lambda: BackgroundWriter(enabled=False))
    files: BackgroundWriter = field(default_factory=lambda: BackgroundWriter(enabled=False))
    step: int = 0
    scores: list[float | None] = field(default_factory=list)
    last_ready: list[int] = field(default_factory=list)
    recent: list[list[tuple[int, float]]] = field(default_factory=list)  # per member, as MemberRecord.recent
    lineages: list[int] = field(default_factory=list)  # per member, as MemberRecord.lineage
    member_steps: int = 0
    threads: ThreadTuner | None = None  # the torch thread count of the training steps (CPU)
    train_seconds: float = 0.0  # in the batched training steps (CPU only: timed as they run)

    def record_scores(self, scores: list[float]) -> None:
        """This step's scores: the current ones, and the last few of each member (for ranking)."""
        for i, score in enumerate(scores):
            self.scores[i] = score
            self.recent[i] = [*self.recent[i], (self.step, float(score))][-RECENT_SCORES:]
