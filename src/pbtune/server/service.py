"""The population behind the server: the core Member logic over one run in a PopulationStore.

Everything here is plain Python (no HTTP), so it is what the routes in :mod:`pbtune.server.app`
call and what a restarted server reopens: all state that matters lives in the store; the
only in-memory state is the exploit decision between ``should_exploit`` and ``exploit``,
and a request retried after a restart is recognised from the store (see ``report``,
``exploit``, ``explore``).

How member ids are handed out (a population of N members ``0..N-1``):

* Joining without an id leases the least advanced free member to the client's token
  (:meth:`PopulationStore.claim`); the client heartbeats, and a member whose client stopped
  heartbeating for ``lease_seconds`` is free again (the next client resumes it from its last
  checkpoint). When none is free the join fails with ``population_full``, or, on a server
  whose population grows with its clients (``grow``), a new member N is added for it (its
  first hyperparameters are the ones a population of N+1 would have given it) and the run's
  stored ``population`` becomes N+1.
* Joining with an id rejoins that member: a restarted client keeps its identity. A member
  leased to another live client is refused (``member_held``); one leased to a dead client
  is taken over under the joining client's own token (a fresh one, never the dead client's),
  from its last checkpoint; an unleased one is reserved for whoever names it, and is never
  handed to a client that joins without an id.
* Every write and decision (report, should-exploit, exploit, explore, finish, fail) checks
  that the request's token is the member's lease holder: a client that lost its lease gets
  ``lease_lost`` (409) and changes nothing.

In a generational run (``sync``) should-exploit and report may answer 409
``generation_waiting`` / ``generation_deciding``: wait, then send again (see
:mod:`pbtune.server._service_generation`).
"""

from __future__ import annotations

import contextlib
import logging
import os
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from typing import Any

from pbtune.checkpoints import CheckpointStore
from pbtune.config import RunConfig
from pbtune.errors import LeaseLostError, NotFoundError
from pbtune.member import Donor, Member, Population
from pbtune.server._service_generation import ServiceGeneration
from pbtune.server._service_growth import PopulationGrowth
from pbtune.server._service_reads import CheckpointInfo, ServiceReads
from pbtune.server._service_rules import (
    already_reported,
    applied_exploit,
    check_space,
    check_step_increases,
    checkpoint_source,
    fresh_token,
    shared_path,
)
from pbtune.server._wire import CheckpointSpec
from pbtune.server.errors import PopulationFullError, ServerError
from pbtune.server.uploads import UploadArea
from pbtune.space import Space
from pbtune.store import PopulationStore, open_store
from pbtune.types import MemberRecord, MemberState

__all__ = ["PopulationService", "CheckpointInfo"]

log = logging.getLogger(__name__)

class PopulationService(ServiceReads, PopulationGrowth, ServiceGeneration):
    """One run of a store, served to remote members.

    Args:
        template: a :class:`RunConfig` dict (``to_dict()`` form). ``space`` may be None: the
            first client that joins with a space creates the run. A run of the same name
            already in the store is reopened with its stored settings.
        uploads: where uploaded checkpoints are staged.
        shared_roots: folders whose files clients may name as checkpoints (shared filesystem).
        grow: a client that finds no free member gets a new one (the population grows).
        new_run: if the store already holds a run named ``template["name"]``, serve a new run
            ``NAME-2`` (``-3``...) instead of reopening it.
        store: an open store (default: opened from ``template["storage"]``).
        clock: seconds since the epoch (lease expiry checks).

    Example:
        >>> import tempfile
        >>> d = tempfile.mkdtemp()
        >>> template = RunConfig(name="doc", space={"x": {"type": "float", "low": 0, "high": 1}},
        ...     population=2, storage=f"sqlite:///{d}/pbt.db", checkpoints=f"{d}/ck").to_dict()
        >>> service = PopulationService(template, uploads=UploadArea(f"{d}/up", max_bytes=1024))
        >>> record, token = service.join(None, "client-a", None)
        >>> (record.member_id, token)
        (0, 'client-a')
    """

    def __init__(
        self,
        template: Mapping[str, Any],
        *,
        uploads: UploadArea,
        shared_roots: tuple[str, ...] = (),
        store: PopulationStore | None = None,
        clock: Callable[[], float] = time.time,
        grow: bool = False,
        new_run: bool = False,
    ) -> None:
        self.template = dict(template)
        self.grow = grow
        self.run_name: str = self.template["name"]
        self.uploads = uploads
        self.shared_roots = tuple(os.path.realpath(root) for root in shared_roots)
        self._clock = clock
        self.store = store if store is not None else open_store(self.template["storage"])
        if new_run:
            self.run_name = self.template["name"] = self._free_name(self.run_name)
        self._create_lock = threading.Lock()
        # SQLite has one writer at a time: queueing writers here is fairer (and much kinder to
        # tail latency) than letting request threads spin on its lock with retries.
        self._write_gate: Any = threading.Lock() if self.store_is_sqlite() else contextlib.nullcontext()
        self._locks: dict[int, threading.Lock] = {}
        self._handles: dict[int, tuple[str | None, Member]] = {}
        self._decided: set[int] = set()  # members whose last should_exploit said yes
        self._population: Population | None = None
        self.config: RunConfig | None = None
        self.reopened = False  # the run was already in the store (a restart continues it)
        self._reopen()

    # -- the run -----------------------------------------------------------------------------
    def _reopen(self) -> None:
        try:
            stored = dict(self.store.get_run(self.run_name).config)
        except NotFoundError:
            if self.template.get("space") is not None:
                self._open(RunConfig.from_dict(self.template))
            return
        self.reopened = True
        stored["storage"] = self.template["storage"]
        stored["checkpoints"] = self.template["checkpoints"]
        own = ("storage", "checkpoints", "population") if self.grow else ("storage", "checkpoints")
        ignored = sorted(k for k, v in self.template.items() if k not in own and v is not None and stored.get(k) != v)
        if ignored:
            log.warning("run %r already exists in the store: its stored settings win over the server's %s",
                        self.run_name, ", ".join(ignored))
        self._open(RunConfig.from_dict(stored))

    def _open(self, config: RunConfig) -> None:
        population = Population(config, store=self.store, checkpoints=CheckpointStore(config.checkpoints))
        self._locks = {member_id: threading.Lock() for member_id in range(config.population)}
        self.config = config
        self._population = population

    def _ensure_run(self, space: Mapping[str, Any] | None) -> Population:
        if self._population is None:
            if space is None:
                raise ServerError(
                    f"run {self.run_name!r} does not exist yet and this server was started without a space:"
                    " the first client must join with one (PBTClient config_path=...)",
                    status=409, code="run_not_created",
                )
            with self._create_lock:
                if self._population is None:
                    template = {**self.template, "space": Space(space).to_config()}
                    self._open(RunConfig.from_dict(template))
                    log.info("created run %r from the space of the first client", self.run_name)
        assert self._population is not None
        return self._population

    def _check_member_id(self, member_id: int) -> Population:
        if self._population is None or self.config is None:
            raise ServerError(f"run {self.run_name!r} does not exist yet: join first", status=409,
                              code="run_not_created")
        if not 0 <= member_id < self.config.population:
            raise NotFoundError(
                f"run {self.run_name!r} has no member {member_id}: ids are 0..{self.config.population - 1}"
            )
        return self._population

    def store_is_sqlite(self) -> bool:
        return str(self.template["storage"]).startswith("sqlite")

    @contextlib.contextmanager
    def _serialized(self, member_id: int, *, writes: bool = True) -> Iterator[None]:
        """One request at a time per member (the Member handle holds the pending decision).

        ``writes=False`` for requests that mostly read (should_exploit writes only when it
        decides to continue at a ready point; the store's own retry covers that).
        """
        with self._locks[member_id], (self._write_gate if writes else contextlib.nullcontext()):
            yield

    def _check_holder(self, record: MemberRecord, token: str | None) -> None:
        """Every write and decision: the request's token must be the member's lease holder
        (None for a member joined by id without a lease). A stale client is refused."""
        if record.lease_owner != token:
            held = f"the client {record.lease_owner!r}" if record.lease_owner else "no client (it was released)"
            raise LeaseLostError(
                f"this client (token {token!r}) no longer holds member {record.member_id} of run"
                f" {self.run_name!r}: it is held by {held}; join again"
            )

    def _holder_handle(self, member_id: int, token: str | None) -> tuple[Member, MemberRecord]:
        """The member's handle and fresh record, after the lease check."""
        member = self._handle(member_id, token)
        record = member.refresh()
        self._check_holder(record, token)
        return member, record

    def _handle(self, member_id: int, token: str | None) -> Member:
        """The cached Member for this member and token (it carries the pending exploit decision)."""
        population = self._check_member_id(member_id)
        cached = self._handles.get(member_id)
        if cached is not None and cached[0] == token:
            return cached[1]
        member = self._new_member(population, member_id, token)
        self._handles[member_id] = (token, member)
        self._decided.discard(member_id)
        return member

    # -- joining -----------------------------------------------------------------------------
    def join(
        self, member_id: int | None, token: str | None, space: Mapping[str, Any] | None
    ) -> tuple[MemberRecord, str | None]:
        """Join as ``member_id``, or as a free member (leased to ``token``).

        Returns the member and the token to heartbeat with (None: nothing to heartbeat).
        """
        self._ensure_run(space)
        assert self.config is not None
        config = self.config
        if space is not None:
            check_space(config, space)
        if member_id is None:
            if token is None:
                raise ServerError("joining as a free member needs a client `token`", status=422, code="invalid")
            for member in self.store.list_members(self.run_name):  # a join retried after its answer was lost
                if member.lease_owner == token and member.state is MemberState.RUNNING:
                    return member, token
            with self._write_gate:
                claimed = self.store.claim(self.run_name, token, config.lease_seconds, config.budget)
            if claimed is None and self.grow:
                claimed = self._grow(token)
            if claimed is None:
                raise PopulationFullError(self._full_message(), status=409, code="population_full")
            log.info("client %s joined as member %d", token, claimed.member_id)
            return claimed, token
        self._check_member_id(member_id)
        with self._serialized(member_id):
            record = self.store.get_member(self.run_name, member_id)
            if record.lease_owner is not None and record.state is MemberState.RUNNING:
                live = (record.lease_expires or 0.0) > self._clock()
                if record.lease_owner != token and live:
                    raise ServerError(
                        f"member {member_id} is held by the live client {record.lease_owner!r} (its lease runs"
                        f" {(record.lease_expires or 0.0) - self._clock():.0f} s more); join as another member or wait",
                        status=409, code="member_held",
                    )
                if record.lease_owner == token:  # our own lease (a restarted client): keep it alive
                    self.store.heartbeat(self.run_name, token, config.lease_seconds)
                    return self.store.get_member(self.run_name, member_id), token
                # a dead client's lease: taken over under a fresh token (never the dead client's,
                # which would let both write), from the member's last checkpoint
                fresh = token or fresh_token()
                taken = self.store.claim(self.run_name, fresh, config.lease_seconds, config.budget,
                                         member_id=member_id)
                if taken is None:  # its client heartbeat (or another rejoin won) just now
                    raise ServerError(f"member {member_id} was just taken by another client",
                                      status=409, code="member_held")
                self._handles.pop(member_id, None)
                self._decided.discard(member_id)
                log.info("client %s took member %d over from the dead client %s", fresh, member_id,
                         record.lease_owner)
                return taken, fresh
            if record.state in (MemberState.PENDING, MemberState.PAUSED):
                record = self.store.set_state(self.run_name, member_id, MemberState.RUNNING)
                if record.lease_owner not in (None, token):  # a free-member join won the race
                    raise ServerError(f"member {member_id} was just leased to another client",
                                      status=409, code="member_held")
            return record, None

    def heartbeat(self, member_id: int, token: str | None) -> bool:
        """Extend the lease of ``token``; False if it no longer holds ``member_id``."""
        self._check_member_id(member_id)
        if token is None:
            raise ServerError("heartbeat needs the client `token`", status=422, code="invalid")
        assert self.config is not None
        return member_id in self.store.heartbeat(self.run_name, token, self.config.lease_seconds)

    # -- Algorithm 1 -------------------------------------------------------------------------
    def report(
        self,
        member_id: int,
        token: str | None,
        step: int | None,
        metric: float,
        *,
        metrics: Mapping[str, Any] | None = None,
        checkpoint: CheckpointSpec | None = None,
    ) -> MemberRecord:
        """Record a score (and checkpoint). A repeat of the last committed report is a no-op."""
        self._check_member_id(member_id)
        upload = checkpoint.upload if checkpoint is not None else None
        with self._serialized(member_id):
            member, record = self._holder_handle(member_id, token)
            step = record.step + 1 if step is None else step
            if already_reported(record, step, metric, checkpoint is not None):
                result = record
            else:
                check_step_increases(record, step)
                self._hold_report(record, step)  # generational: raises while the generation decides
                source = self._checkpoint_source(checkpoint)
                member.report(step, metric, checkpoint=source, metrics=metrics)
                self._decided.discard(member_id)
                result = member.record
        if upload is not None:
            self.uploads.discard(upload)
        return result

    def _checkpoint_source(self, spec: CheckpointSpec | None) -> str | None:
        return checkpoint_source(spec, self.uploads, self.shared_roots)

    def shared_path(self, path: str) -> str:
        """``path`` resolved, if it lies inside a shared root (see :func:`shared_path`)."""
        return shared_path(path, self.shared_roots)

    def should_exploit(self, member_id: int, token: str | None) -> tuple[bool, MemberRecord]:
        self._check_member_id(member_id)
        with self._serialized(member_id, writes=False):
            member, _ = self._holder_handle(member_id, token)
            decided = member.should_exploit()
            if member.waiting:  # generational: nothing decided until the generation is complete
                raise self._generation_waiting(member.record)
            if decided:
                self._decided.add(member_id)
            else:
                self._decided.discard(member_id)
            return decided, member.record

    def exploit(
        self, member_id: int, token: str | None, step: int | None, after_decision: bool
    ) -> tuple[Donor | None, MemberRecord]:
        """Carry out the pending decision.

        ``after_decision`` says the client saw ``should_exploit`` answer True at ``step``; if
        the decision was lost (server restart), the exploit already applied at that step is
        returned, or the decision is made again.
        """
        self._check_member_id(member_id)
        with self._serialized(member_id):
            member, _ = self._holder_handle(member_id, token)
            if member_id in self._decided:
                self._decided.discard(member_id)
                return member.exploit(), member.record
            if after_decision:
                record = member.refresh()
                done = applied_exploit(self.store, record, step)
                if done is not None:
                    return done, record
                if member.should_exploit():
                    return member.exploit(), member.record
                return None, member.record
            member.exploit()  # raises: no decision to carry out
            raise AssertionError("unreachable")

    def explore(
        self, member_id: int, token: str | None, from_hparams: Mapping[str, Any] | None
    ) -> tuple[dict[str, Any], MemberRecord]:
        """Explore; if ``from_hparams`` was already explored away from (a retry), return the result."""
        self._check_member_id(member_id)
        with self._serialized(member_id):
            member, record = self._holder_handle(member_id, token)
            if from_hparams is not None and dict(record.hparams) != dict(from_hparams):
                events = self.store.events(self.run_name, member_id)
                last = events[-1] if events else None
                if (last is not None and last.kind == "explore" and dict(last.old_hparams or {}) == dict(from_hparams)
                        and dict(last.new_hparams or {}) == dict(record.hparams)):
                    return dict(record.hparams), record
            hparams = member.explore()
            return hparams, member.record

    def finish(self, member_id: int, token: str | None) -> MemberRecord:
        self._check_member_id(member_id)
        with self._serialized(member_id):
            member = self._handle(member_id, token)
            if member.refresh().state is MemberState.FINISHED:
                return member.record  # a retried finish
            self._check_holder(member.record, token)
            member.finish()
            self._decided.discard(member_id)
            return member.record

    def fail(self, member_id: int, token: str | None, error: str) -> MemberRecord:
        """Mark the member failed (its client's training broke): it leaves every generation."""
        self._check_member_id(member_id)
        with self._serialized(member_id):
            member = self._handle(member_id, token)
            if member.refresh().state is MemberState.FAILED:
                return member.record  # a retried fail
            self._check_holder(member.record, token)
            member.fail(error)
            self._decided.discard(member_id)
            return member.record

    def close(self) -> None:
        self.store.close()
