"""Pure functions that turn a run's store records into the data behind plots, tables and exports.

Nothing here draws or writes: every function takes frozen records (or a :class:`RunData`
bundle read once with :func:`load_run`) and returns plain values, so each figure's data can be
checked against the store.

Example:
    >>> from pbtune.types import ScoreRecord
    >>> curves = score_curves([ScoreRecord("r", 0, 1, -4.0, 0.0), ScoreRecord("r", 0, 2, -1.0, 0.0)])
    >>> curves[0].steps, curves[0].values
    ((1, 2), (-4.0, -1.0))
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from pbtune.ancestry import LineageEdge, Segment, ancestry, lineage_edges, model_age
from pbtune.config import is_unbounded
from pbtune.errors import InvalidConfigError, PBTuneError
from pbtune.lineage import SCHEDULE_KINDS, ScheduleEntry, schedule, schedule_csv, schedule_records
from pbtune.ranking import best_member, ranking_from_config
from pbtune.space import Choice, Space
from pbtune.store.base import PopulationStore
from pbtune.types import EventRecord, MemberRecord, ScoreRecord

__all__ = [
    "Curve",
    "ExploitMark",
    "LineageEdge",
    "RunData",
    "Point",
    "Segment",
    "ancestry",
    "ancestry_scores",
    "best_member_id",
    "exploit_marks",
    "hparam_curves",
    "hparam_history",
    "hparams_at",
    "lineage_edges",
    "load_run",
    "member_rows",
    "metric_curves",
    "model_age",
    "resolve_member",
    "scalar_points",
    "schedule_csv",
    "schedule_records",
]



@dataclass(frozen=True)
class RunData:
    """Everything the reports need from one run, read from the store in one go."""

    run: str
    config: Mapping[str, Any]
    members: tuple[MemberRecord, ...]
    scores: tuple[ScoreRecord, ...]
    events: tuple[EventRecord, ...]

    @property
    def mode(self) -> str:
        return str(self.config.get("mode", "max"))

    @property
    def metric(self) -> str:
        return str(self.config.get("metric", "score"))

    @property
    def budget(self) -> int | None:
        budget = self.config.get("budget")
        return budget if isinstance(budget, int) and not is_unbounded(budget) else None

    @property
    def space(self) -> Space | None:
        """The run's hyperparameter space, or None if the stored config has none."""
        raw = self.config.get("space")
        return Space(raw) if isinstance(raw, Mapping) and raw else None

    def member(self, member_id: int) -> MemberRecord:
        for record in self.members:
            if record.member_id == member_id:
                return record
        raise PBTuneError(f"run {self.run!r} has no member {member_id}")


def load_run(store: PopulationStore, run: str) -> RunData:
    """Read a run's config, members, scores and lineage events.

    Raises:
        NotFoundError: no run of that name.

    Example:
        >>> from pbtune.store import open_store
        >>> store = open_store("sqlite://")
        >>> _ = store.create_run("r", {"space": {}})
        >>> load_run(store, "r").members
        ()
    """
    record = store.get_run(run)
    return RunData(run, dict(record.config), store.list_members(run), store.scores(run), store.events(run))


# -- scores ------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Curve:
    """One member's values over its steps (sorted by step)."""

    member_id: int
    steps: tuple[int, ...]
    values: tuple[float, ...]

    def at(self, step: int) -> float | None:
        """The value reported at ``step``, or None."""
        for s, v in zip(self.steps, self.values, strict=True):
            if s == step:
                return v
        return None


def _superseded(scores: Iterable[ScoreRecord], events: Iterable[EventRecord]) -> list[ScoreRecord]:
    """Drop scores a ``resume`` made moot: reported past the checkpoint the member was rolled back to."""
    resumes: dict[int, list[EventRecord]] = {}
    for event in events:
        if event.kind == "resume":
            resumes.setdefault(event.member_id, []).append(event)
    kept = []
    for record in scores:
        stale = any(r.step < record.step and record.time <= r.time for r in resumes.get(record.member_id, ()))
        if not stale:
            kept.append(record)
    return kept


def _curves(scores: Iterable[ScoreRecord], value_of: Any, events: Iterable[EventRecord] = ()) -> dict[int, Curve]:
    by_member: dict[int, dict[int, float]] = {}
    for record in _superseded(scores, events):
        value = value_of(record)
        if value is None:
            continue
        by_member.setdefault(record.member_id, {})[record.step] = value  # a later report of a step wins
    out = {}
    for member_id in sorted(by_member):
        points = sorted(by_member[member_id].items())
        out[member_id] = Curve(member_id, tuple(s for s, _ in points), tuple(v for _, v in points))
    return out


def score_curves(scores: Iterable[ScoreRecord], events: Iterable[EventRecord] = ()) -> dict[int, Curve]:
    """Each member's score over its steps; of several reports of a step the last one counts.

    Pass the run's ``events`` to drop scores that a worker reported before it died and that the
    member's ``resume`` rolled back.
    """
    return _curves(scores, lambda r: float(r.score), events)


def metric_curves(
    scores: Iterable[ScoreRecord], name: str, events: Iterable[EventRecord] = ()
) -> dict[int, Curve]:
    """Each member's numeric metric ``name`` (from the trainable's step results) over its steps."""

    def value_of(record: ScoreRecord) -> float | None:
        value = record.metrics.get(name)
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            return None
        return float(value)

    return _curves(scores, value_of, events)


def metric_names(scores: Iterable[ScoreRecord]) -> list[str]:
    """Names of the numeric metrics members reported, sorted."""
    names = set()
    for record in scores:
        for key, value in record.metrics.items():
            if isinstance(value, (int, float)) and not isinstance(value, bool):
                names.add(key)
    return sorted(names)


@dataclass(frozen=True)
class ExploitMark:
    """Where a member's score curve jumps: it copied ``donor_id``'s model of ``donor_step``."""

    member_id: int
    step: int
    donor_id: int
    donor_step: int
    score_before: float | None  # the member's own score at ``step``
    donor_score: float | None  # the donor's score at ``donor_step`` (what the member jumped to)
    summary: str


def exploit_marks(events: Iterable[EventRecord], curves: Mapping[int, Curve]) -> list[ExploitMark]:
    """One mark per ``exploit`` event, with the scores on both sides of the jump."""
    marks = []
    for event in events:
        if event.kind != "exploit" or event.donor_id is None or event.donor_step is None:
            continue
        own, donor = curves.get(event.member_id), curves.get(event.donor_id)
        marks.append(
            ExploitMark(
                event.member_id, event.step, event.donor_id, event.donor_step,
                own.at(event.step) if own else None, donor.at(event.donor_step) if donor else None,
                event.summary,
            )
        )
    return marks


# -- hyperparameters -----------------------------------------------------------------------------
def hparam_history(events: Iterable[EventRecord], member_id: int) -> list[tuple[int, dict[str, Any]]]:
    """``(step, hparams)`` changes of one member in its own steps; of several at a step the last wins.

    ``hparams`` of an entry at step ``s`` trained the steps after ``s`` (the score of step ``s``
    itself came from the previous ones).
    """
    out: list[tuple[int, dict[str, Any]]] = []
    for event in events:
        if event.member_id != member_id or event.kind not in SCHEDULE_KINDS or event.new_hparams is None:
            continue
        hparams = dict(event.new_hparams)
        if out and out[-1][0] == event.step:
            out[-1] = (event.step, hparams)
        else:
            out.append((event.step, hparams))
    return out


def hparams_at(history: Sequence[tuple[int, Mapping[str, Any]]], step: int) -> dict[str, Any]:
    """The hyperparameters that trained step ``step`` (the change at step ``s`` applies from ``s + 1``).

    Example:
        >>> hparams_at([(0, {"lr": 1}), (5, {"lr": 2})], 5), hparams_at([(0, {"lr": 1}), (5, {"lr": 2})], 6)
        ({'lr': 1}, {'lr': 2})
    """
    if not history:
        return {}
    current = history[0][1]
    for change_step, hparams in history:
        if change_step < step:
            current = hparams
        else:
            break
    return dict(current)


def _numeric(value: Any, domain: Any) -> float | None:
    """A plottable number: choices map to their index in the domain's values."""
    if isinstance(domain, Choice):
        return float(domain.values.index(value)) if value in domain.values else None
    if isinstance(value, bool):
        return float(value)
    if isinstance(value, (int, float)) and math.isfinite(value):
        return float(value)
    return None


def hparam_curves(data: RunData) -> dict[str, dict[int, Curve]]:
    """For each hyperparameter, each member's value as a step function over its own steps.

    A point ``(s, v)`` means "from step ``s`` on, ``v``" (draw with ``drawstyle="steps-post"``);
    the last point repeats the final value at the member's current step. Choice values are
    plotted as their index in the domain's list.
    """
    space = data.space
    names: list[str] = list(space) if space is not None else []
    if not names:
        seen: dict[str, None] = {}
        for member in data.members:
            seen.update(dict.fromkeys(member.hparams))
        names = list(seen)
    out: dict[str, dict[int, Curve]] = {name: {} for name in names}
    for member in data.members:
        history = hparam_history(data.events, member.member_id)
        if not history:
            history = [(0, dict(member.hparams))]
        for name in names:
            domain = space[name] if space is not None and name in space else None
            points = [(s, _numeric(h.get(name), domain)) for s, h in history]
            if member.step > points[-1][0]:
                points.append((member.step, points[-1][1]))
            kept = [(s, v) for s, v in points if v is not None]
            if kept:
                out[name][member.member_id] = Curve(
                    member.member_id, tuple(s for s, _ in kept), tuple(v for _, v in kept)
                )
    return out


@dataclass(frozen=True)
class Point:
    """Scalars of one member at one reported step: ``{metric: score, "metrics/<k>": ..., "hparams/<k>": ...}``."""

    member_id: int
    step: int
    time: float
    values: Mapping[str, float]


def scalar_points(data: RunData, after: Mapping[int, int] | None = None) -> list[Point]:
    """Every member's score, numeric metrics and the hyperparameters that trained each step.

    Used by the TensorBoard and MLflow monitors. ``after`` maps member id -> last step already
    written; only later steps are returned. Choice hyperparameters are given as their index.
    """
    after = after or {}
    space = data.space
    latest: dict[int, dict[int, ScoreRecord]] = {}
    for record in _superseded(data.scores, data.events):
        latest.setdefault(record.member_id, {})[record.step] = record
    points = []
    for member_id in sorted(latest):
        history = hparam_history(data.events, member_id)
        for step in sorted(s for s in latest[member_id] if s > after.get(member_id, 0)):
            record = latest[member_id][step]
            values: dict[str, float] = {data.metric: float(record.score)}
            for key, value in record.metrics.items():
                if key != data.metric and isinstance(value, (int, float)) and not isinstance(value, bool):
                    values[f"metrics/{key}"] = float(value)
            for name, value in hparams_at(history, step).items():
                number = _numeric(value, space[name] if space is not None and name in space else None)
                if number is not None:
                    values[f"hparams/{name}"] = number
            points.append(Point(member_id, step, record.time, values))
    return points


# -- lineage -------------------------------------------------------------------------------------
def ancestry_scores(data: RunData, member_id: int, step: int | None = None) -> Curve:
    """Scores of the model behind ``member_id`` over its age: the donors' segments, then its own."""
    member = data.member(member_id)
    curves = score_curves(data.scores, data.events)
    points: list[tuple[int, float]] = []
    for segment in ancestry(data.events, member_id, member.step if step is None else step):
        curve = curves.get(segment.member_id)
        if curve is None:
            continue
        points += [
            (s + segment.offset, v)
            for s, v in zip(curve.steps, curve.values, strict=True)
            if segment.start < s <= segment.end
        ]
    return Curve(member_id, tuple(s for s, _ in points), tuple(v for _, v in points))


# -- members -------------------------------------------------------------------------------------
def best_member_id(data: RunData) -> int | None:
    """The best member's id by :func:`pbtune.ranking.best_member`'s rule, or None."""
    best = best_member(data.members, data.mode, ranking_from_config(data.config.get("ranking")))
    return best.member_id if best is not None else None


def resolve_member(data: RunData, member: int | str) -> int:
    """A member id from an id or ``"best"``.

    Raises:
        InvalidConfigError: not an id of the run's members, nor ``best``.
        PBTuneError: ``best`` was asked for and no member has a score yet.
    """
    if isinstance(member, str) and member.strip().lower() == "best":
        best = best_member_id(data)
        if best is None:
            raise PBTuneError(
                f"no member of run {data.run!r} has a finite score yet (failed members are never best)"
            )
        return best
    ids = [m.member_id for m in data.members]
    try:
        member_id = int(member)
    except (TypeError, ValueError):
        raise InvalidConfigError("member", f"run {data.run!r}", f"'best' or one of {ids}", member) from None
    if member_id not in ids:
        raise InvalidConfigError("member", f"run {data.run!r}", f"'best' or one of {ids}", member)
    return member_id


def member_rows(data: RunData) -> list[dict[str, Any]]:
    """One row per member for tables: state, step, last and best score, exploits, last event."""
    curves = score_curves(data.scores, data.events)
    sign = 1.0 if data.mode == "max" else -1.0
    best_id = best_member_id(data)
    rows = []
    for member in data.members:
        curve = curves.get(member.member_id)
        finite = [v for v in (curve.values if curve else ()) if math.isfinite(v)]
        mine = [e for e in data.events if e.member_id == member.member_id]
        notable = [e for e in mine if e.kind in ("exploit", "explore", "resume", "fail")]
        last = notable[-1] if notable else None
        rows.append({
            "member": member.member_id,
            "best": member.member_id == best_id,
            "state": member.state.value,
            "step": member.step,
            "score": member.score,
            "best_score": (sign * max(sign * v for v in finite)) if finite else None,
            "exploits": sum(e.kind == "exploit" for e in mine),
            "hparams": dict(member.hparams),
            "last_event": f"step {last.step} {last.kind}: {last.summary}" if last else "",
        })
    return rows


# -- schedules -----------------------------------------------------------------------------------
def member_schedule(data: RunData, member_id: int) -> list[ScheduleEntry]:
    """The hyperparameter schedule (steps are the model's age) behind ``member_id``'s model."""
    return schedule(data.events, member_id)
