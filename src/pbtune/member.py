"""The Member handle: one member's side of PBT (Algorithm 1 of the paper).

Example (bring your own loop)::

    population = pbtune.Population(config)          # creates or reopens the run in the store
    member = population.member(0)                   # joins (or rejoins) as member 0
    for step in range(1, 101):
        train_one_step(model, member.hparams)
        if step % 10 == 0:
            torch.save(model.state_dict(), "ckpt.pt")
            member.save("ckpt.pt", evaluate(model))
            if member.should_exploit():
                member.exploit()
                model.load_state_dict(torch.load(member.parameters_path()))
                member.explore()
"""

from __future__ import annotations

import dataclasses
import logging
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol, runtime_checkable

from pbtune import ready_point
from pbtune.checkpoints import CheckpointStore
from pbtune.config import RunConfig
from pbtune.errors import CheckpointError, InvalidConfigError, PBTuneError
from pbtune.initial import first_hparams
from pbtune.resume import check_resumable
from pbtune.round import (
    ExploitPlan,
    Plan,
    decision_rng,
    explore_hparams,
    plan_replacement,
)
from pbtune.store.base import PopulationStore, ScorePoint
from pbtune.types import MemberRecord, MemberState

__all__ = ["Member", "MemberProtocol", "Donor", "Population", "decision_rng"]

_PIN_SECONDS = 600.0

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Donor:
    """The member whose weights and hyperparameters were copied."""

    member_id: int
    step: int
    score: float
    hparams: Mapping[str, Any]


@runtime_checkable
class MemberProtocol(Protocol):
    """What every member handle offers, in-process (:class:`Member`) or over HTTP (``PBTClient``)."""

    member_id: int

    @property
    def hparams(self) -> dict[str, Any]: ...

    @property
    def step(self) -> int: ...

    def save(self, ckpt_path: str, metric: float, *, step: int | None = None) -> None: ...

    def report(self, step: int, metric: float, *, checkpoint: str | None = None,
               metrics: Mapping[str, Any] | None = None) -> None: ...

    def should_exploit(self) -> bool: ...

    def exploit(self) -> Donor | None: ...

    def explore(self) -> dict[str, Any]: ...

    def parameters_path(self) -> str | None: ...

    def finish(self) -> None: ...


class Member:
    """One population member; talks to the population only through the stores."""

    def __init__(
        self,
        store: PopulationStore,
        checkpoints: CheckpointStore,
        config: RunConfig,
        member_id: int,
        *,
        worker: str | None = None,
        record: MemberRecord | None = None,
    ) -> None:
        self._store = store
        self._checkpoints = checkpoints
        self._config = config
        self.member_id = member_id
        self._worker = worker
        fresh = record is not None and record.run == config.name and record.member_id == member_id
        self._record = record if fresh and record is not None else store.get_member(config.name, member_id)
        self._pending: ExploitPlan | None = None
        self._planned: tuple[Plan, int] | None = None  # decided by the last report, at that record version
        self._explored: ExploitPlan | None = None  # the plan whose exploit was applied; explore() writes the rest
        self._loaded_path: str | None = None
        self.waiting = False  # generational mode: the last should_exploit() waits for the generation

    # -- state -------------------------------------------------------------------------------
    @property
    def run(self) -> str:
        return self._config.name

    @property
    def hparams(self) -> dict[str, Any]:
        """The hyperparameters to train with now."""
        return dict(self._record.hparams)

    @property
    def step(self) -> int:
        return self._record.step

    @property
    def record(self) -> MemberRecord:
        return self._record

    def refresh(self) -> MemberRecord:
        self._record = self._store.get_member(self.run, self.member_id)
        return self._record

    # -- Algorithm 1 -------------------------------------------------------------------------
    def save(self, ckpt_path: str, metric: float, *, step: int | None = None) -> None:
        """Report ``metric`` with the checkpoint at ``ckpt_path``; ``step`` defaults to last step + 1."""
        self.report(self._record.step + 1 if step is None else step, metric, checkpoint=ckpt_path)

    def report(
        self,
        step: int,
        metric: float,
        *,
        checkpoint: str | None = None,
        metrics: Mapping[str, Any] | None = None,
        earlier: Sequence[ScorePoint] = (),
        decide: bool = False,
    ) -> None:
        """Record the score at ``step`` and, if given, store the checkpoint file or folder.

        ``earlier`` carries scores of previous steps that were buffered to save transactions.
        ``decide=True`` (for a caller that calls :meth:`should_exploit` right away) also makes
        the ready point's decision in the report's transaction; ``should_exploit`` returns it.
        """
        ref = None
        if checkpoint is not None:
            ref = self._checkpoints.put(checkpoint, run=self.run, member_id=self.member_id, step=step)
        try:  # one transaction: the report and, at a ready point, the decision (pbtune.ready_point)
            reported = ready_point.report(
                self._store, self._config, self.member_id, step, float(metric), metrics=metrics, checkpoint=ref,
                worker=self._worker, earlier=earlier, decide=decide,
            )
        except BaseException:
            if ref is not None:
                self._checkpoints.delete(ref.key)
            raise
        self._record = reported.record
        self._planned = (reported.plan, reported.record.version) if reported.plan is not None else None
        self._loaded_path = None
        for key in reported.stale:
            self._checkpoints.delete(key)

    def is_ready(self) -> bool:
        return self._config.ready.is_ready(self._record)

    def should_exploit(self) -> bool:
        """True when the member is ready and the exploit strategy picked a donor.

        The decision is the round planner's (:func:`pbtune.round.plan_member`) on a fresh
        snapshot of the population. A ready check that decides to continue restarts the ready
        interval. In generational mode (``sync``) a member whose generation is not complete
        decides nothing yet: False, with :attr:`waiting` set (ask again later).
        """
        self._pending = None
        self.waiting = False
        planned, self._planned = self._planned, None
        plan: Plan | None
        if planned is not None and planned[1] == self._record.version:  # decided when reported
            plan = planned[0]
        else:
            decided = ready_point.decide(self._store, self._config, self._record)
            self._record, self.waiting, plan = decided.record, decided.waiting, decided.plan
        if isinstance(plan, ExploitPlan):
            self._pending = plan
            return True
        return False

    def exploit(self) -> Donor | None:
        """Copy the chosen donor's checkpoint and hyperparameters into this member.

        Returns the donor, or None when nothing was copied: the donor's checkpoint was
        collected, is missing or corrupt, the copy could not be written (storage full or
        unreachable), or this member changed concurrently. Train on; the next ready point
        decides again. Afterwards :meth:`parameters_path` is the copy to load.
        """
        if self._pending is None:
            raise PBTuneError("exploit() needs a donor: call should_exploit() first and check it returned True")
        plan, self._pending = self._pending, None
        holder = f"{self.run}/{self.member_id}/{uuid.uuid4().hex[:8]}"
        key = plan.donor_checkpoint
        if not self._store.pin_checkpoint(self.run, key, holder, _PIN_SECONDS):
            self._store.mark_ready_checked(self.run, self.member_id, plan.step, plan.expected_version)
            self.refresh()
            return None
        try:
            copy = self._checkpoints.copy(
                key, plan.donor_checkpoint_sha256 or "", run=self.run, member_id=self.member_id, step=plan.step
            )
        except CheckpointError as exc:  # a bad donor checkpoint must not fail the member that copies it
            self._store.unpin_checkpoint(self.run, key, holder)
            log.warning("member %d of run %r skips donor %d: %s", self.member_id, self.run, plan.donor_id, exc)
            self._store.mark_ready_checked(self.run, self.member_id, plan.step, plan.expected_version)
            self.refresh()
            return None

        def writes() -> tuple[dict[int, MemberRecord] | None, list[str]]:  # one transaction
            # The explore is written by explore(), after the user has loaded the copied weights.
            updated = self._store.apply_exploits(self.run, [plan.write(checkpoint=copy, explore=False)])
            self._store.unpin_checkpoint(self.run, key, holder)
            keep = self._config.keep_checkpoints
            return updated, [] if updated is None else self._store.collect_checkpoints(self.run, self.member_id, keep)

        try:
            updated, stale = self._store.batch(writes)
        except BaseException:
            self._store.unpin_checkpoint(self.run, key, holder)  # the failed transaction took its unpin along
            raise
        if updated is None:
            self._checkpoints.delete(copy.key)
            self.refresh()
            return None
        self._record = updated[self.member_id]
        self._explored = plan
        self._loaded_path = self._checkpoints.fetch(copy.key, copy.sha256)
        for old in stale:
            self._checkpoints.delete(old)
        return Donor(plan.donor_id, plan.donor_step, plan.donor_score, dict(plan.donor_hparams))

    def explore(self) -> dict[str, Any]:
        """Perturb or resample the hyperparameters (per the explore strategy); return the new ones.

        After :meth:`exploit` these are the ones its plan explored to (the same as the
        vectorized engine would choose); otherwise they are drawn for the current step.
        """
        me = self.refresh()
        plan, self._explored = self._explored, None
        if plan is not None and plan.step == me.step and dict(plan.taken) == dict(me.hparams):
            new, summary = dict(plan.explored), plan.explore_summary
        else:
            new, summary = explore_hparams(self._config, self.member_id, me.step, me.hparams)
        updated = self._store.set_hparams(
            self.run, self.member_id, new, expected_version=me.version, kind="explore", summary=summary
        )
        self._record = updated if updated is not None else self.refresh()
        return self.hparams

    def parameters_path(self) -> str | None:
        """Local path of the checkpoint to load: the donor's copy after an exploit, else the last save."""
        if self._loaded_path is None and self._record.checkpoint is not None:
            self._loaded_path = self._checkpoints.fetch(self._record.checkpoint, self._record.checkpoint_sha256 or "")
        return self._loaded_path

    # -- lifecycle ---------------------------------------------------------------------------
    def finish(self) -> None:
        self._record = self._store.set_state(self.run, self.member_id, MemberState.FINISHED, worker=self._worker)

    def fail_or_replace(self, error: str) -> Donor | None:
        """The member's training failed with ``error``: restart it as a copy of the best member
        (explored hyperparameters, a ``fail`` then an ``exploit`` event in the lineage) while the
        run has replaced fewer than ``max_failures`` members; else mark it FAILED. Returns the
        donor it restarts from, or None when it failed for good."""
        limit = self._config.max_failures
        if limit and sum(e.kind == "fail" for e in self._store.events(self.run)) < limit:
            snapshot = self._store.list_members(self.run)
            plan = plan_replacement(self._config, snapshot, self.member_id)
            if plan is not None:
                lines = error.strip().splitlines()
                noted = self._store.set_hparams(self.run, self.member_id, plan.old_hparams,
                                                expected_version=plan.expected_version, kind="fail",
                                                summary=(lines[-1] if lines else "failed") + "; replaced")
                if noted is not None:
                    self._record = noted
                    self._pending = dataclasses.replace(plan, expected_version=noted.version)
                    donor = self.exploit()
                    if donor is not None:
                        self.explore()
                        return donor
        self.fail(error)
        return None

    def fail(self, error: str) -> None:
        self._record = self._store.set_state(
            self.run, self.member_id, MemberState.FAILED, worker=self._worker, error=error
        )

    def pause(self) -> None:
        self._record = self._store.set_state(self.run, self.member_id, MemberState.PAUSED, worker=self._worker)


class Population:
    """A run in a store: creates it (and samples every member's first hyperparameters) or reopens it.

    Example:
        >>> import tempfile
        >>> d = tempfile.mkdtemp()
        >>> cfg = RunConfig(name="doc", space={"x": {"type": "float", "low": 0, "high": 1}}, population=2,
        ...                 storage=f"sqlite:///{d}/pbt.db", checkpoints=f"{d}/ck")
        >>> pop = Population(cfg)
        >>> sorted(m.member_id for m in pop.members())
        [0, 1]
    """

    def __init__(
        self,
        config: RunConfig,
        *,
        store: PopulationStore | None = None,
        checkpoints: CheckpointStore | None = None,
        initial: Sequence[Mapping[str, Any]] = (),
        extend_budget: bool = False,
        retry_failed: bool = False,
    ) -> None:
        """Args:
        initial: first hyperparameters of members 0, 1, ... (validated against the space);
            the remaining members are sampled from the space with the run's seed.
        extend_budget: the run exists with a smaller budget: store the larger one and train
            its finished members on (see :mod:`pbtune.resume`).
        retry_failed: failed members resume from their last checkpoint.

        Raises:
            ConfigMismatchError: the run exists with another config (nothing is written).
        """
        from pbtune.store import open_store

        if len(initial) > config.population:
            raise InvalidConfigError("initial", "Population", f"at most population={config.population} entries",
                                     len(initial))
        for index, hparams in enumerate(initial):
            config.space.validate(hparams, where=f"initial[{index}]")
        self.config = config
        self.store = store if store is not None else open_store(config.storage)
        self.checkpoints = checkpoints if checkpoints is not None else CheckpointStore(config.checkpoints)
        first = first_hparams(config.space, config.population, config.seed, config.init)
        first[: len(initial)] = [dict(hparams) for hparams in initial]

        def create() -> None:  # one transaction, not one per member
            stored = self.store.create_run(config.name, config.to_dict()).config
            if check_resumable(stored, config, config.storage, extend_budget=extend_budget):
                self.store.reopen_members(config.name, [MemberState.FINISHED], config=config.to_dict(),
                                          summary=f"budget extended from {stored['budget']} to {config.budget}")
            if retry_failed:
                self.store.reopen_members(config.name, [MemberState.FAILED], summary="failed member retried")
            self.store.add_members(config.name, first)

        self.store.batch(create)

    def member(self, member_id: int, *, worker: str | None = None) -> Member:
        """A handle on one member; rejoining with the same id continues where it left off."""
        if not 0 <= member_id < self.config.population:
            raise PBTuneError(f"member_id must be in [0, {self.config.population}); got {member_id}")
        return Member(self.store, self.checkpoints, self.config, member_id, worker=worker)

    def members(self) -> tuple[MemberRecord, ...]:
        return self.store.list_members(self.config.name)
