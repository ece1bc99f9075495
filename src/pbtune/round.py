"""The round planner: which ready members exploit whom, with which hyperparameters.

Given the run's config, a population snapshot and the members that reached a ready point, it
returns per member either a :class:`ReadyCheck` (keep training; the ready interval restarts)
or an :class:`ExploitPlan` (the donor and its checkpoint, the hyperparameters taken, the
explored ones, the lineage summaries and the store write this implies). It is pure: no I/O,
no clock, and every random draw comes from :func:`decision_rng`, so the same snapshot gives
the same plans in every engine and every process.

Engines carry plans out: :class:`pbtune.member.Member` with checkpoint files and the store,
the vectorized engine with row copies in memory. Strategies' ``decide`` and ``explore`` are
called from here only.

Example:
    >>> from pbtune.config import RunConfig
    >>> from pbtune.types import MemberRecord, MemberState
    >>> cfg = RunConfig(name="r", space={"lr": {"type": "float", "low": 0.01, "high": 1.0}}, population=5)
    >>> snapshot = [MemberRecord("r", i, MemberState.RUNNING, 10, {"lr": 0.1 * (i + 1)}, score=float(i),
    ...                          checkpoint=f"c{i}") for i in range(5)]
    >>> plans = plan_round(cfg, snapshot, ready_members(cfg, snapshot))
    >>> plans[0].donor_id, plans[1].reason
    (4, 'not in the bottom quantile')
"""

from __future__ import annotations

import dataclasses
import math
import random
from collections import Counter
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from pbtune.config import RunConfig
from pbtune.ranking import best_member
from pbtune.store.base import CheckpointRef, ExploitWrite, ReadyCheckWrite
from pbtune.strategies import Exploit, ExploreContext
from pbtune.strategies._view import ListView, PopulationView
from pbtune.types import MemberRecord, MemberState

__all__ = [
    "ExploitPlan",
    "Plan",
    "ReadyCheck",
    "at_step",
    "can_plan_from_view",
    "decision_rng",
    "generation_deciding",
    "generation_waiting",
    "explore_hparams",
    "plan_member",
    "plan_ready",
    "plan_replacement",
    "plan_round",
    "ready_members",
]


def decision_rng(seed: int, member_id: int, step: int, purpose: str) -> random.Random:
    """A generator that depends only on what is being decided, never on process or timing."""
    return random.Random(f"{seed}:{member_id}:{step}:{purpose}")


@dataclass(frozen=True)
class ReadyCheck:
    """Keep training: the strategy chose no donor. Recording it restarts the ready interval."""

    member_id: int
    step: int
    expected_version: int
    reason: str = ""

    def write(self) -> ReadyCheckWrite:
        return ReadyCheckWrite(self.member_id, self.expected_version, self.step)


@dataclass(frozen=True)
class ExploitPlan:
    """Copy ``donor_id``'s checkpoint, take ``taken`` as hyperparameters, then explore to ``explored``."""

    member_id: int
    step: int
    expected_version: int
    donor_id: int
    donor_step: int
    donor_score: float
    donor_checkpoint: str
    donor_checkpoint_sha256: str | None
    donor_hparams: Mapping[str, Any]
    copy_hparams: bool
    old_hparams: Mapping[str, Any]
    taken: Mapping[str, Any]
    explored: Mapping[str, Any]
    exploit_summary: str
    explore_summary: str
    donor_lineage: int = -1  # the donor's lineage, which the member joins; -1: the donor's id

    def __post_init__(self) -> None:
        if self.donor_lineage < 0:
            object.__setattr__(self, "donor_lineage", self.donor_id)

    def write(self, *, checkpoint: CheckpointRef | None = None, explore: bool = True) -> ExploitWrite:
        """The store write of this plan: the exploit, and the explore unless ``explore=False``
        (the Member writes it when its user calls ``explore()``, after loading the weights)."""
        return ExploitWrite(
            self.member_id, self.expected_version, self.donor_id, self.donor_step, dict(self.taken),
            self.exploit_summary, explored=dict(self.explored) if explore else None,
            explore_summary=self.explore_summary if explore else "", checkpoint=checkpoint,
            donor_checkpoint=self.donor_checkpoint if checkpoint is not None else None,
            donor_lineage=self.donor_lineage,
        )


Plan = ReadyCheck | ExploitPlan


def generation_waiting(config: RunConfig, snapshot: Sequence[MemberRecord], member_id: int) -> bool:
    """Generational mode (``sync``): True while a member that has not failed is behind this one's step
    (this member must wait for its generation; failed members never hold it up)."""
    if not config.sync:
        return False
    step = next(m.step for m in snapshot if m.member_id == member_id)
    return any(m.step < step for m in snapshot if m.state is not MemberState.FAILED and not m.state.is_final)


def generation_deciding(config: RunConfig, snapshot: Sequence[MemberRecord], member_id: int) -> bool:
    """Generational mode: True while this member, which decided at its ready step, must not train on
    because another member has not decided at that step yet (a donor that trained on would hand
    out a later checkpoint than the generation was ranked at)."""
    me = next(m for m in snapshot if m.member_id == member_id)
    if not config.sync or me.last_ready_step != me.step or me.step == 0:
        return False
    return any(m.last_ready_step < me.step for m in snapshot
               if m.member_id != member_id and m.state is not MemberState.FAILED and not m.state.is_final)


def at_step(members: Iterable[MemberRecord], step: int) -> list[MemberRecord]:
    """The members as they were at ``step`` (their last score up to it, from their recent scores),
    so a generation is ranked at one step even if some member is already past it."""
    out = []
    for m in members:
        earlier = [(s, score) for s, score in m.recent if s <= step]
        if m.step > step and earlier:
            m = dataclasses.replace(m, step=earlier[-1][0], score=earlier[-1][1], recent=tuple(earlier))
        out.append(m)
    return out


def ready_members(config: RunConfig, snapshot: Iterable[MemberRecord]) -> list[int]:
    """Ids of the members that reached a ready point (final members never are)."""
    return [m.member_id for m in snapshot if not m.state.is_final and config.ready.is_ready(m)]


def explore_hparams(
    config: RunConfig, member_id: int, step: int, hparams: Mapping[str, Any],
    population: Sequence[MemberRecord] = (),
) -> tuple[dict[str, Any], str]:
    """The explored hyperparameters of ``member_id`` at ``step`` and their lineage summary.

    ``population`` is the round's snapshot, for a model-based explore (PB2); without it PB2
    falls back to perturbing.
    """
    rng = decision_rng(config.seed, member_id, step, "explore")
    context = ExploreContext(population, member_id, step, config.mode, config.ready.interval)
    new, changes = config.explore.explore(hparams, config.space, rng, context)
    return new, "; ".join(change.summary() for change in changes)


def plan_round(config: RunConfig, snapshot: Sequence[MemberRecord], ready: Iterable[int]) -> dict[int, Plan]:
    """One plan per ready member, all decided against the same snapshot.

    Failed members are neither donors nor ranked. With the exploit strategy's ``max_copies``,
    no donor seeds more than that many members of this round (members deciding together: the
    vectorized engine's lockstep round); further members pick among the other donors, or
    continue. Each member decides against the lineages left by the plans before it (as if they
    had been carried out), so ``max_lineage_share`` holds within a round too.
    Raises ``KeyError`` for an id not in the snapshot.
    """
    alive_steps = [m.step for m in snapshot if m.state is not MemberState.FAILED]
    if config.sync and alive_steps:  # a generation is compared at one step
        snapshot = at_step(snapshot, min(alive_steps))
    ranked = config.ranking.view(snapshot)  # strategies rank by the run's ranking score
    by_id = {m.member_id: m for m in ranked}
    population = [m for m in ranked if m.state is not MemberState.FAILED]
    cap = getattr(config.exploit, "max_copies", None)
    copies: Counter[int] = Counter()
    joined: dict[int, int] = {}  # member -> the lineage it joined by a plan of this round
    plans: dict[int, Plan] = {}
    for member_id in ready:
        # Diversity guard: a donor that already seeded `max_copies` members this round offers no
        # checkpoint to the rest (strategies never pick a donor without one), so they spread out.
        offered = [
            _offered(m, cap is not None and copies[m.member_id] >= cap, joined.get(m.member_id)) for m in population
        ] if cap is not None or joined else population
        by_id[member_id]  # KeyError for an id not in the snapshot, as documented
        plan = _plan(config, ListView(offered, config.mode), member_id, lambda: snapshot)
        if isinstance(plan, ExploitPlan):
            copies[plan.donor_id] += 1
            joined[member_id] = plan.donor_lineage
        plans[member_id] = plan
    return plans


def _offered(member: MemberRecord, capped: bool, lineage: int | None) -> MemberRecord:
    """``member`` as later deciders of a round see it: no checkpoint once capped, its new lineage."""
    if not capped and lineage is None:
        return member
    changes: dict[str, Any] = {"checkpoint": None} if capped else {}
    if lineage is not None:
        changes["lineage"] = lineage
    return dataclasses.replace(member, **changes)


def plan_ready(
    config: RunConfig, view: PopulationView, member_id: int,
    population: Callable[[], Sequence[MemberRecord]],
) -> Plan:
    """The plan of one ready member, decided through ``view`` (a store answers it in SQL).

    The same rule as :func:`plan_round` for one member; ``population`` is called only when the
    explore strategy looks at the population (PB2) and the member exploits.
    Valid when :func:`can_plan_from_view` holds for the config.
    """
    return _plan(config, view, member_id, population)


def can_plan_from_view(config: RunConfig) -> bool:
    """True when a ready point can be planned from a ranked view (:func:`plan_ready`): ranking by
    the last score, not generational (those compare whole snapshots)."""
    return not config.sync and config.ranking.window == 1


def _plan(
    config: RunConfig, view: PopulationView, member_id: int, population: Callable[[], Sequence[MemberRecord]]
) -> Plan:
    me = view.member(member_id)
    rng = decision_rng(config.seed, member_id, me.step, "exploit")
    decision = config.exploit.decide_view(view, member_id, rng)
    if not isinstance(decision, Exploit):
        return ReadyCheck(member_id, me.step, me.version, decision.reason)
    donor = view.member(decision.donor_id)
    taken = dict(donor.hparams if decision.copy_hparams else me.hparams)
    seen = population() if getattr(config.explore, "uses_population", False) else ()
    explored, explore_summary = explore_hparams(config, member_id, me.step, taken, seen)
    summary = (
        f"copied member {donor.member_id} (step {decision.donor_step}, score {decision.donor_score:.6g})"
        f" over member {member_id} (score {_fmt(me.score)})" + ("" if decision.copy_hparams else " (weights only)")
    )
    return ExploitPlan(
        member_id=member_id, step=me.step, expected_version=me.version, donor_id=donor.member_id,
        donor_step=decision.donor_step, donor_score=decision.donor_score,
        donor_checkpoint=decision.donor_checkpoint, donor_checkpoint_sha256=donor.checkpoint_sha256,
        donor_hparams=dict(donor.hparams), copy_hparams=decision.copy_hparams, old_hparams=dict(me.hparams),
        taken=taken, explored=explored, exploit_summary=summary, explore_summary=explore_summary,
        donor_lineage=donor.lineage,
    )


def plan_replacement(config: RunConfig, snapshot: Sequence[MemberRecord], member_id: int) -> ExploitPlan | None:
    """How a member whose training failed restarts: from the best member with a checkpoint
    (by the run's ranking; failed members never), with explored hyperparameters. None: no donor."""
    me = next(m for m in snapshot if m.member_id == member_id)
    others = [m for m in snapshot if m.member_id != member_id and m.has_checkpoint]
    donor = best_member(others, config.mode, config.ranking)
    if donor is None or donor.checkpoint is None:
        return None
    copy_hparams = getattr(config.exploit, "copy_hparams", True)
    taken = dict(donor.hparams if copy_hparams else me.hparams)
    explored, explore_summary = explore_hparams(config, member_id, me.step, taken, snapshot)
    score = config.ranking.score(donor)
    return ExploitPlan(
        member_id=member_id, step=me.step, expected_version=me.version, donor_id=donor.member_id,
        donor_step=donor.checkpoint_step or donor.step, donor_score=math.nan if score is None else score,
        donor_checkpoint=donor.checkpoint, donor_checkpoint_sha256=donor.checkpoint_sha256,
        donor_hparams=dict(donor.hparams), copy_hparams=copy_hparams, old_hparams=dict(me.hparams), taken=taken,
        explored=explored, explore_summary=explore_summary,
        exploit_summary=f"replaced failed member {member_id} with a copy of member {donor.member_id} "
        f"(step {donor.checkpoint_step or donor.step}, score {_fmt(score)})", donor_lineage=donor.lineage,
    )


def plan_member(config: RunConfig, snapshot: Sequence[MemberRecord], member_id: int) -> Plan | None:
    """The plan of one member, or None if it is not at a ready point (or is final)."""
    me = next(m for m in snapshot if m.member_id == member_id)
    if me.member_id not in ready_members(config, [me]):
        return None
    return plan_round(config, snapshot, [member_id])[member_id]


def _fmt(score: float | None) -> str:
    return "None" if score is None else f"{score:.6g}"
