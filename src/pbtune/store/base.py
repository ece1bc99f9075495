"""The population store contract.

Rules every implementation follows:

* Process and thread safe: many workers on many machines share one store. Every write that
  another worker could race with is compare-and-set (on ``version`` or on a lease) inside one
  transaction, and returns ``None``/``False`` when the other worker won.
* Reads return frozen snapshots (:mod:`pbtune.types`); changing them changes nothing.
* Member states follow :data:`pbtune.types.LEGAL_TRANSITIONS`; changing a finished or failed
  member raises :class:`~pbtune.errors.MemberFinishedError`.
* Driver errors surface as :class:`~pbtune.errors.StoreError` after a bounded, jittered retry.
* Scores and lineage events are append-only.
"""

from __future__ import annotations

import abc
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, TypeVar

from pbtune.errors import MemberFinishedError, StoreError
from pbtune.types import EventRecord, MemberRecord, MemberState, RunRecord, ScoreRecord

if TYPE_CHECKING:
    from pbtune.strategies._view import PopulationView

__all__ = ["PopulationStore", "CheckpointRef", "ScorePoint", "ExploitWrite", "ReadyCheckWrite"]

T = TypeVar("T")


def already_applied(member: MemberRecord, write: ExploitWrite) -> bool:
    """True when ``member`` already holds ``write``'s fresh checkpoint copy: an earlier try of
    the same exploit committed and only its answer was lost."""
    return write.checkpoint is not None and member.checkpoint == write.checkpoint.key


@dataclass(frozen=True)
class ScorePoint:
    """A score reported earlier but written in a later batch (fewer transactions per step)."""

    step: int
    score: float
    metrics: Mapping[str, Any] | None = None


@dataclass(frozen=True)
class CheckpointRef:
    """A checkpoint already written to the checkpoint store."""

    key: str
    step: int
    sha256: str
    size: int


@dataclass(frozen=True)
class ExploitWrite:
    """One member's exploit (and the explore that followed it) for :meth:`PopulationStore.apply_exploits`."""

    member_id: int
    expected_version: int
    donor_id: int
    donor_step: int
    hparams: Mapping[str, Any]  # taken from the donor (or kept, for a weights-only exploit)
    summary: str
    explored: Mapping[str, Any] | None = None  # after explore; None: no explore event
    explore_summary: str = ""
    checkpoint: CheckpointRef | None = None  # the member's copy of the donor's checkpoint; None: copied in memory
    donor_checkpoint: str | None = None  # the donor's key that was copied (recorded in the event)
    donor_lineage: int | None = None  # the donor's lineage when planned (the member's new one); None: read it


@dataclass(frozen=True)
class ReadyCheckWrite:
    """A ready check that chose to continue: the member's ready interval restarts at ``step``."""

    member_id: int
    expected_version: int
    step: int


class PopulationStore(abc.ABC):
    """Members, scores, lineage events, leases and checkpoint bookkeeping of PBT runs."""

    @staticmethod
    def _check_not_final(member: MemberRecord) -> None:
        if member.state.is_final:
            raise MemberFinishedError(
                f"member {member.member_id} of run {member.run!r} is {member.state.value} and cannot change"
            )

    def batch(self, writes: Callable[[], T]) -> T:
        """Run ``writes`` (a function that calls this store) as one transaction: all or nothing.

        For a caller that writes many members at once (the vectorized engine writes a whole
        population every round): one commit instead of one per call. ``writes`` may be run
        again when the transaction is retried, so it must only compute from what the store
        returns. This default runs it as it is (each call its own transaction).
        """
        return writes()

    # -- runs ---------------------------------------------------------------------------------
    @abc.abstractmethod
    def create_run(self, name: str, config: Mapping[str, Any]) -> RunRecord:
        """Create a run, or return it if it exists (its stored config wins).

        Raises:
            StoreError: the database failed.
        """

    @abc.abstractmethod
    def get_run(self, name: str) -> RunRecord:
        """Raises:
        NotFoundError: no run of that name.
        """

    @abc.abstractmethod
    def list_runs(self) -> tuple[RunRecord, ...]:
        """All runs, oldest first."""

    # -- members ------------------------------------------------------------------------------
    @abc.abstractmethod
    def add_member(self, run: str, member_id: int, hparams: Mapping[str, Any]) -> MemberRecord:
        """Add a PENDING member and its ``init`` event; if it exists, return it unchanged.

        Raises:
            NotFoundError: the run does not exist.
        """

    def add_members(self, run: str, hparams: Sequence[Mapping[str, Any]]) -> tuple[MemberRecord, ...]:
        """:meth:`add_member` for members ``0 .. len(hparams) - 1``, in one transaction."""
        return self.batch(lambda: tuple(self.add_member(run, i, h) for i, h in enumerate(hparams)))

    @abc.abstractmethod
    def get_member(self, run: str, member_id: int) -> MemberRecord:
        """Raises:
        NotFoundError: no such member.
        """

    @abc.abstractmethod
    def list_members(self, run: str) -> tuple[MemberRecord, ...]:
        """All members of a run ordered by id (a consistent snapshot)."""

    def population_view(self, run: str, mode: str, known: Sequence[MemberRecord] = ()) -> PopulationView:
        """The non-failed members as a strategy's ranked view; ``known`` records are current. This
        default reads every member; a SQL store answers in SQL, in the caller's :meth:`batch`."""
        from pbtune.strategies._view import ListView

        fresh = {m.member_id: m for m in known}
        members = [fresh.get(m.member_id, m) for m in self.list_members(run)]
        return ListView([m for m in members if m.state is not MemberState.FAILED], mode)

    @abc.abstractmethod
    def report(
        self,
        run: str,
        member_id: int,
        step: int,
        score: float,
        *,
        metrics: Mapping[str, Any] | None = None,
        checkpoint: CheckpointRef | None = None,
        worker: str | None = None,
        earlier: Sequence[ScorePoint] = (),
    ) -> MemberRecord:
        """Append a score (and optionally a new checkpoint) and move the member to ``step``.

        ``earlier`` scores (of steps before ``step``) are appended first, in one transaction.

        Raises:
            MemberFinishedError: the member is finished or failed.
            LeaseLostError: ``worker`` is given and no longer holds the member's lease.
            NotFoundError: no such member.
        """

    def report_many(
        self, run: str, scores: Mapping[int, Sequence[ScorePoint]], *, finish: bool = False
    ) -> dict[int, MemberRecord]:
        """:meth:`report` for many members at once, in one transaction: ``{member_id: points}``.

        Each member moves to the step of its last point; its earlier points are appended before
        it. No checkpoints, no leases (for an engine that holds the whole population in one
        process). Members with no points are left alone. With ``finish=True`` the reported
        members also become ``FINISHED`` (as :meth:`set_state` would make them) in the same
        transaction. Returns the updated records.

        Raises:
            MemberFinishedError: one of the members is finished or failed (nothing is written).
            NotFoundError: no such member (nothing is written).
        """

        def writes() -> dict[int, MemberRecord]:
            updated = {
                member_id: self.report(run, member_id, points[-1].step, points[-1].score,
                                       metrics=points[-1].metrics, earlier=points[:-1])
                for member_id, points in scores.items() if points
            }
            if finish:
                updated = {m: self.set_state(run, m, MemberState.FINISHED) for m in updated}
            return updated

        return self.batch(writes)

    @abc.abstractmethod
    def mark_ready_checked(self, run: str, member_id: int, step: int, expected_version: int) -> bool:
        """Record that the member was checked for exploit at ``step``. False if ``version`` moved."""

    def ready_checked(self, run: str, record: MemberRecord, step: int) -> MemberRecord | None:
        """:meth:`mark_ready_checked` for a caller that holds the member's current ``record``:
        the record after it, or None when the member changed meanwhile (or is final)."""
        if not self.mark_ready_checked(run, record.member_id, step, record.version):
            return None
        return self.get_member(run, record.member_id)

    @abc.abstractmethod
    def apply_exploit(
        self,
        run: str,
        member_id: int,
        *,
        expected_version: int,
        donor_id: int,
        donor_step: int,
        hparams: Mapping[str, Any],
        checkpoint: CheckpointRef | None,
        summary: str,
        donor_checkpoint: str | None = None,
        donor_lineage: int | None = None,
    ) -> MemberRecord | None:
        """Take the donor's hyperparameters, lineage and the copy of its checkpoint; append an ``exploit`` event.

        ``donor_checkpoint`` (the donor's key that was copied) is recorded in the event, so the
        lineage knows which of a donor's checkpoints of the same step was taken. The member's
        ``lineage`` becomes ``donor_lineage`` (None: the donor's lineage as stored now).

        ``checkpoint`` is None when the weights were copied without the checkpoint store (the
        vectorized engine copies them in memory); the member's checkpoint fields stay as they are.

        Returns None (and changes nothing) if the member changed since ``expected_version``.

        Raises:
            MemberFinishedError: the member is finished or failed.
        """

    def apply_exploits(
        self, run: str, exploits: Sequence[ExploitWrite], ready_checks: Sequence[ReadyCheckWrite] = ()
    ) -> dict[int, MemberRecord] | None:
        """A round of a PBT engine in one transaction: exploits (each with its explore) and the
        ready checks of the members that continue.

        Each exploit is :meth:`apply_exploit` (with its ``checkpoint``, if any) followed, when
        ``explored`` is given, by :meth:`set_hparams` with ``kind="explore"``; each ready check
        is :meth:`mark_ready_checked`: the same events, versions and hyperparameters. An exploit
        whose ``checkpoint`` the member already holds was applied by an earlier try whose answer
        was lost: it counts as done. Returns the updated records, or ``None`` (and writes
        nothing) if one of the members changed since its ``expected_version``.

        Raises:
            MemberFinishedError: one of the members is finished or failed (nothing is written).
            NotFoundError: no such member (nothing is written).
            ValueError: a member appears more than once.
        """
        ids = [e.member_id for e in exploits] + [c.member_id for c in ready_checks]
        if len(set(ids)) != len(ids):
            raise ValueError(f"apply_exploits: a member appears more than once in {ids}")

        def writes() -> dict[int, MemberRecord] | None:
            current = {member_id: self.get_member(run, member_id) for member_id in ids}
            for member in current.values():  # checked first, as a store with one statement would
                self._check_not_final(member)
            done = {e.member_id for e in exploits if already_applied(current[e.member_id], e)}
            expected = [(e.member_id, e.expected_version) for e in exploits if e.member_id not in done]
            expected += [(c.member_id, c.expected_version) for c in ready_checks]
            if any(current[member_id].version != version for member_id, version in expected):
                return None
            updated: dict[int, MemberRecord] = {member_id: current[member_id] for member_id in done}
            for e in exploits:
                if e.member_id in done:
                    continue
                record = self.apply_exploit(
                    run, e.member_id, expected_version=e.expected_version, donor_id=e.donor_id,
                    donor_step=e.donor_step, hparams=e.hparams, checkpoint=e.checkpoint, summary=e.summary,
                    donor_checkpoint=e.donor_checkpoint, donor_lineage=e.donor_lineage,
                )
                if record is not None and e.explored is not None:
                    record = self.set_hparams(
                        run, e.member_id, e.explored, expected_version=record.version, kind="explore",
                        summary=e.explore_summary,
                    )
                if record is None:  # raced after the check: roll the batch back
                    raise StoreError(f"member {e.member_id} of run {run!r} changed during apply_exploits")
                updated[e.member_id] = record
            for c in ready_checks:
                if not self.mark_ready_checked(run, c.member_id, c.step, c.expected_version):
                    raise StoreError(f"member {c.member_id} of run {run!r} changed during apply_exploits")
                updated[c.member_id] = self.get_member(run, c.member_id)
            return updated

        return self.batch(writes)

    @abc.abstractmethod
    def set_hparams(
        self,
        run: str,
        member_id: int,
        hparams: Mapping[str, Any],
        *,
        expected_version: int,
        kind: str = "explore",
        summary: str = "",
    ) -> MemberRecord | None:
        """Replace the hyperparameters; append an event of ``kind``. None if the member changed.

        Raises:
            MemberFinishedError: the member is finished or failed.
        """

    @abc.abstractmethod
    def reopen_members(
        self, run: str, states: Sequence[MemberState], *, summary: str, config: Mapping[str, Any] | None = None
    ) -> list[int]:
        """Move every member in one of ``states`` back to ``PAUSED``, in one transaction; return their ids.

        The only way out of a final state, for two explicit user requests: training a finished
        run further (with ``config``, the run's new stored config, e.g. a larger budget) and
        retrying failed members. A failed member resumes from its last checkpoint (its step goes
        back to the checkpoint's; none: to 0); a finished one from where it stopped. Each gets a
        ``reopen`` lineage event with ``summary``; its lease and error are cleared.

        Raises:
            NotFoundError: no such run.
        """

    @abc.abstractmethod
    def set_state(
        self,
        run: str,
        member_id: int,
        state: MemberState,
        *,
        worker: str | None = None,
        error: str | None = None,
    ) -> MemberRecord:
        """Move the member to ``state`` (releasing any lease unless it is RUNNING).

        Raises:
            IllegalTransitionError: not allowed from the current state.
            MemberFinishedError: the member is finished or failed.
            LeaseLostError: ``worker`` is given and does not hold the lease.
        """

    # -- leases ------------------------------------------------------------------------------
    @abc.abstractmethod
    def claim(
        self, run: str, worker: str, lease_seconds: float, budget: int, *, member_id: int | None = None
    ) -> MemberRecord | None:
        """Lease the least advanced runnable member below ``budget`` steps, or return None.

        Ties at one step go to the member whose last ready check is oldest (one that still has
        to decide at this step: generational PBT), then to the lowest id.

        Runnable: PENDING, PAUSED, or RUNNING whose lease expired (its worker died). A member
        taken over from a dead worker is rolled back to its last checkpoint and gets a
        ``resume`` event. With ``member_id``, only that member is leased (if runnable, at any
        step): a client rejoining a dead client's member takes it over under its own name.
        """

    @abc.abstractmethod
    def heartbeat(self, run: str, worker: str, lease_seconds: float) -> set[int]:
        """Extend every lease ``worker`` holds; return the ids it still holds."""

    # -- history -----------------------------------------------------------------------------
    @abc.abstractmethod
    def scores(self, run: str, member_id: int | None = None) -> tuple[ScoreRecord, ...]:
        """Every reported score, in report order."""

    @abc.abstractmethod
    def events(self, run: str, member_id: int | None = None) -> tuple[EventRecord, ...]:
        """Lineage events in the order they happened."""

    # -- checkpoint bookkeeping --------------------------------------------------------------
    @abc.abstractmethod
    def pin_checkpoint(self, run: str, key: str, holder: str, ttl_seconds: float) -> bool:
        """Protect ``key`` from garbage collection while ``holder`` copies it.

        False if the checkpoint was already collected (the caller decides again).
        """

    @abc.abstractmethod
    def unpin_checkpoint(self, run: str, key: str, holder: str) -> None:
        """Drop the pin taken by ``holder``."""

    @abc.abstractmethod
    def collect_checkpoints(self, run: str, member_id: int, keep: int) -> list[str]:
        """Forget and return the keys of the member's checkpoints that nobody needs any more.

        Kept: the member's current checkpoint, its ``keep`` newest, and every pinned one.
        The caller deletes the returned keys from the checkpoint store.
        """

    def close(self) -> None:  # noqa: B027 - optional hook
        """Release connections."""
