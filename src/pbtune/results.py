"""What a run found: :class:`RunResult`, shared by every engine, the CLI and the reports.

The best member is chosen by :func:`pbtune.ranking.best_member` (finite scores only, failed
members excluded, ties by member id).
"""

from __future__ import annotations

from dataclasses import dataclass

from pbtune.checkpoints import CheckpointStore
from pbtune.config import RunConfig
from pbtune.diversity import Diversity, diversity
from pbtune.errors import PBTuneError
from pbtune.lineage import ScheduleEntry, schedule
from pbtune.ranking import Ranking, best_member
from pbtune.store.base import PopulationStore
from pbtune.types import MemberRecord, MemberState

__all__ = ["RunResult", "summarize", "require_best"]


@dataclass(frozen=True)
class RunResult:
    """What a finished run found.

    Attributes:
        run: the run's name.
        best: the best member (see :func:`pbtune.ranking.best_member`).
        checkpoint_path: a local copy of the best member's last checkpoint (None without one).
        schedule: the hyperparameter schedule that produced the best member.
        members: every member as the store holds it at the end.
        storage / checkpoints: where the run lives.
    """

    run: str
    best: MemberRecord
    checkpoint_path: str | None
    schedule: list[ScheduleEntry]
    members: tuple[MemberRecord, ...]
    storage: str
    checkpoints: str
    ranking: Ranking = Ranking()
    diversity: Diversity | None = None  # lineages alive and hyperparameter spread at the end

    @property
    def best_score(self) -> float | None:
        """The best member's last reported score (raw)."""
        return self.best.score

    @property
    def best_smoothed_score(self) -> float | None:
        """The best member's ranking score (the mean of its last ``ranking.window`` scores)."""
        return self.ranking.score(self.best)


def require_best(members: tuple[MemberRecord, ...], config: RunConfig) -> MemberRecord:
    """The best member, or a :class:`PBTuneError` that says why there is none."""
    best = best_member(members, config.mode, config.ranking)
    if best is not None:
        return best
    failed = [m for m in members if m.state is MemberState.FAILED]
    if members and len(failed) == len(members):
        last_line = (failed[0].error or "").strip().splitlines()[-1:] or ["no traceback"]
        raise PBTuneError(
            f"every member of run {config.name!r} failed; member {failed[0].member_id}: {last_line[0]} "
            f"(full tracebacks: pbtune status {config.name} --json)"
        )
    raise PBTuneError(f"no member of run {config.name!r} has a finite score (failed members are never best)")


def summarize(config: RunConfig, store: PopulationStore, checkpoints: CheckpointStore) -> RunResult:
    """The :class:`RunResult` of ``config``'s run as the stores hold it now."""
    members = store.list_members(config.name)
    best = require_best(members, config)
    path = checkpoints.fetch(best.checkpoint, best.checkpoint_sha256 or "") if best.checkpoint else None
    events = store.events(config.name)
    return RunResult(
        run=config.name, best=best, checkpoint_path=path, schedule=schedule(events, best.member_id), members=members,
        storage=config.storage, checkpoints=config.checkpoints, ranking=config.ranking,
        diversity=diversity(members, events, config.space),
    )
