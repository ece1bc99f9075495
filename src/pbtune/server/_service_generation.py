"""Generational (``sync``) runs on the server: when a client must wait for its generation.

The decisions stay the round planner's (:func:`~pbtune.round.generation_waiting`, inside
:meth:`Member.should_exploit <pbtune.member.Member.should_exploit>`, and
:func:`~pbtune.round.generation_deciding`); this module only says when a request must wait,
and keeps members whose client went away out of the generation. A base class of
:class:`~pbtune.server.service.PopulationService`.

* ``should-exploit`` at a ready point while a member of the generation is behind: 409
  ``generation_waiting``; nothing is decided, the client asks again after ``retry_after`` s.
* a ``report`` past the step at which the member's generation is still deciding: 409
  ``generation_deciding``; nothing is recorded, the client sends it again. The client may train
  on meanwhile (no decision of the others changes its weights or hyperparameters); only its
  record must not move on, so no donor hands out a later checkpoint than the step its
  generation was ranked at (what the worker's ``_hold`` does in the process engine).
* a member whose client went away (lease expired) is out of every generation until a client
  takes it over (it then catches up from its last checkpoint); a failed member is out for good.
  Members that no client has joined yet are in it: the generation waits for their clients.
* a report that skips a ready point (no ``should-exploit`` there, e.g. a client that resumed
  a member) records that the member continued at it, so no generation waits for a decision
  that never comes.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from typing import Any, cast

from pbtune.config import RunConfig
from pbtune.member import Member, Population
from pbtune.round import ReadyCheck, generation_deciding
from pbtune.server.errors import GenerationWaitError
from pbtune.store import PopulationStore
from pbtune.types import MemberRecord, MemberState

__all__ = ["ServiceGeneration", "generation_view", "retry_after"]


def generation_view(snapshot: Iterable[MemberRecord], member_id: int, now: float) -> list[MemberRecord]:
    """The members ``member_id``'s generation counts: all but those whose client went away
    (:meth:`MemberRecord.is_gone`); the asking member always stays."""
    return [m for m in snapshot if m.member_id == member_id or not m.is_gone(now)]


def retry_after(config: RunConfig) -> float:
    """Seconds a waiting client waits before asking again: a tenth of the lease, within
    [0.05, 0.5] (its heartbeat keeps the lease meanwhile). Half a second bounds what a generation
    loses to polling (``benchmarks/server_sync.py``: ~0.1 s a generation at 0.5 s, ~0.2 s at
    1 s) while N waiting clients ask at most 2N times a second."""
    return round(min(0.5, max(0.05, config.lease_seconds / 10)), 3)


class _GenerationStore:
    """The population store as one member's generation sees it: :meth:`list_members` leaves out
    the members whose client went away; everything else is the store's own."""

    def __init__(self, store: PopulationStore, member_id: int, clock: Callable[[], float]) -> None:
        self._store = store
        self._member_id = member_id
        self._clock = clock

    def list_members(self, run: str) -> tuple[MemberRecord, ...]:
        return tuple(generation_view(self._store.list_members(run), self._member_id, self._clock()))

    def __getattr__(self, name: str) -> Any:
        return getattr(self._store, name)


class ServiceGeneration:
    """The generational rules of the service; the service sets these attributes."""

    store: PopulationStore
    run_name: str
    config: RunConfig | None
    _clock: Callable[[], float]

    def _new_member(self, population: Population, member_id: int, token: str | None) -> Member:
        """A Member handle; in a generational run its decisions see the generation's view."""
        if not population.config.sync:
            return population.member(member_id, worker=token)
        view = cast(PopulationStore, _GenerationStore(self.store, member_id, self._clock))
        return Member(view, population.checkpoints, population.config, member_id, worker=token)

    def _generation(self, member_id: int) -> list[MemberRecord]:
        return generation_view(self.store.list_members(self.run_name), member_id, self._clock())

    def _generation_waiting(self, record: MemberRecord) -> GenerationWaitError:
        """The answer to a should-exploit whose generation is incomplete (``Member.waiting``)."""
        assert self.config is not None
        behind = [m for m in self._generation(record.member_id) if not m.state.is_final and m.step < record.step]
        return GenerationWaitError(
            f"generational run: member {record.member_id} waits at step {record.step} until {_describe(behind)}"
            " reached it; nothing was decided: ask again",
            code="generation_waiting", step=record.step, waiting_for=tuple(m.member_id for m in behind),
            retry_after=retry_after(self.config),
        )

    def _hold_report(self, record: MemberRecord, step: int) -> MemberRecord:
        """Before a report moves a generational member on to ``step``: note a ready point it
        skipped as a continue, then refuse (409 ``generation_deciding``) while its generation is
        still deciding at its step. Returns the member's record (updated if a note was written)."""
        config = self.config
        if config is None or not config.sync or step <= record.step:
            return record
        if config.ready.is_ready(record):  # it trained past its ready point without asking
            check = ReadyCheck(record.member_id, record.step, record.version, "trained on without asking").write()
            self.store.mark_ready_checked(self.run_name, check.member_id, check.step, check.expected_version)
            record = self.store.get_member(self.run_name, record.member_id)
        members = self._generation(record.member_id)
        if not generation_deciding(config, members, record.member_id):
            return record
        undecided = [m for m in members if m.member_id != record.member_id and not m.state.is_final
                     and m.last_ready_step < record.step]
        raise GenerationWaitError(
            f"generational run: member {record.member_id} decided at step {record.step}; its report of step {step}"
            f" waits until {_describe(undecided)} decided at that step; nothing was recorded: send it again",
            code="generation_deciding", step=record.step, waiting_for=tuple(m.member_id for m in undecided),
            retry_after=retry_after(config),
        )


def _describe(members: Sequence[MemberRecord]) -> str:
    """``member 2 (step 4)``, ``members 2 (step 4), 3 (pending: no client has joined it)``."""
    parts = []
    for m in members:
        if m.state is MemberState.PENDING:
            parts.append(f"{m.member_id} (pending: no client has joined it)")
        elif m.state is MemberState.PAUSED:
            parts.append(f"{m.member_id} (paused at step {m.step})")
        else:
            parts.append(f"{m.member_id} (step {m.step})")
    if not parts:
        return "the rest of its generation"
    return ("member " if len(parts) == 1 else "members ") + ", ".join(parts)
