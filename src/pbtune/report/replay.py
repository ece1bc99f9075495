"""Replay a hyperparameter schedule: train one model from scratch the way PBT trained a member.

The steps of a schedule are the model's age (see :func:`pbtune.lineage.schedule`): the entry
at step ``s`` trained steps ``s + 1, s + 2, ...``. Replay applies each change exactly as the
worker does after an exploit: ``set_hparams`` when the trainable applies them in place, else
``save``, a fresh trainable ``setup`` with the new hyperparameters and ``load``. A trainable
whose ``step`` is deterministic given its state and hyperparameters, and whose save/load round
trip is exact, reproduces the PBT member's scores.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from pbtune.engine.trainable import Trainable
from pbtune.errors import InvalidConfigError, PBTuneError
from pbtune.lineage import ScheduleEntry
from pbtune.validation import check_int

__all__ = ["ReplayResult", "as_schedule", "replay", "replay_member"]


@dataclass(frozen=True)
class ReplayResult:
    """What a replay produced."""

    steps: int
    metrics: Mapping[str, Any]  # of the last step
    scores: tuple[tuple[int, float], ...]  # (model age, score) of every step
    trainable: Trainable  # the trained model, to evaluate or save further
    checkpoint: str | None  # where the final model was saved, if asked

    @property
    def score(self) -> float | None:
        return self.scores[-1][1] if self.scores else None


def as_schedule(entries: Iterable[ScheduleEntry | Mapping[str, Any]]) -> list[ScheduleEntry]:
    """Validate a schedule given as entries or as dicts (``pbtune schedule --format json`` rows).

    Raises:
        InvalidConfigError: empty, first step not 0, steps not increasing integers, or hparams
            not a mapping.

    Example:
        >>> as_schedule([{"step": 0, "hparams": {"lr": 0.1}}, {"step": 5, "hparams": {"lr": 0.05}}])[1].step
        5
    """
    out: list[ScheduleEntry] = []
    for index, raw in enumerate(entries):
        if isinstance(raw, ScheduleEntry):
            entry = raw
        elif isinstance(raw, Mapping):
            entry = ScheduleEntry(
                raw.get("step"), raw.get("hparams"), raw.get("from_member", raw.get("member_id", -1)),  # type: ignore[arg-type]
                str(raw.get("kind", "")),
            )
        elif hasattr(raw, "step") and hasattr(raw, "hparams"):
            entry = ScheduleEntry(raw.step, raw.hparams, getattr(raw, "member_id", -1), str(getattr(raw, "kind", "")))
        else:
            raise InvalidConfigError(f"schedule[{index}]", "replay", "a ScheduleEntry or a mapping", raw)
        step = check_int(entry.step, f"schedule[{index}].step", "replay", minimum=0)
        if not isinstance(entry.hparams, Mapping):
            raise InvalidConfigError(
                f"schedule[{index}].hparams", "replay", "a mapping of name -> value", entry.hparams
            )
        if out and step <= out[-1].step:
            raise InvalidConfigError(
                f"schedule[{index}].step", "replay", f"greater than the previous step ({out[-1].step})", step
            )
        out.append(entry)
    if not out:
        raise InvalidConfigError("schedule", "replay", "a non-empty list of entries", [])
    if out[0].step != 0:
        raise InvalidConfigError("schedule[0].step", "replay", "0 (the hyperparameters to start with)", out[0].step)
    return out


def replay(
    trainable: type[Trainable] | Callable[[], Trainable],
    schedule: Iterable[ScheduleEntry | Mapping[str, Any]],
    steps: int,
    *,
    trainable_args: Mapping[str, Any] | None = None,
    metric: str = "score",
    save_to: str | None = None,
    on_step: Callable[[int, Mapping[str, Any]], None] | None = None,
) -> ReplayResult:
    """Train a single model from scratch for ``steps`` steps, following ``schedule``.

    Args:
        trainable: a Trainable subclass (built with ``trainable_args``) or a zero-argument factory.
        schedule: entries of :func:`pbtune.schedule`, or their JSON form; changes after
            ``steps`` are ignored; past the last change the last hyperparameters keep training.
        steps: training steps (the model's final age; ``replay_member`` finds it for a member).
        metric: the key of the step results that is the score.
        save_to: if given, the final model is saved there with ``Trainable.save``.
        on_step: called with ``(age, metrics)`` after every step (logging, early stop by raising).

    Example:
        >>> from pbtune.testing.trainables import Quadratic
        >>> result = replay(Quadratic, [{"step": 0, "hparams": {"lr": 0.1}}, {"step": 3, "hparams": {"lr": 0.3}}], 6)
        >>> result.steps, result.score < 0
        (6, True)
    """
    entries = as_schedule(schedule)
    check_int(steps, "steps", "replay", minimum=0)
    args = dict(trainable_args or {})
    if isinstance(trainable, type):
        if not issubclass(trainable, Trainable):
            raise InvalidConfigError("trainable", "replay", "a pbtune.Trainable subclass or a factory", trainable)
        cls = trainable

        def factory() -> Trainable:
            return cls(**args)
    else:
        factory = trainable
    changes = {e.step: dict(e.hparams) for e in entries[1:] if e.step < steps}
    model = factory()
    model.setup(dict(entries[0].hparams))
    scratch = tempfile.mkdtemp(prefix="pbtune-replay-")
    scores: list[tuple[int, float]] = []
    metrics: Mapping[str, Any] = {}
    try:
        for age in range(steps):
            if age in changes:  # the entry at `age` trains step age + 1 onwards
                model = _apply(model, changes[age], factory, os.path.join(scratch, f"age-{age}.ckpt"))
            metrics = model.step()
            if not isinstance(metrics, Mapping) or metric not in metrics:
                raise PBTuneError(f"Trainable.step() must return a mapping with the key {metric!r}; got {metrics!r}")
            scores.append((age + 1, float(metrics[metric])))
            if on_step is not None:
                on_step(age + 1, metrics)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    if save_to is not None:
        folder = os.path.dirname(os.path.abspath(save_to))
        os.makedirs(folder, exist_ok=True)
        model.save(save_to)
    return ReplayResult(steps, dict(metrics), tuple(scores), model, save_to)


def _apply(model: Trainable, hparams: dict[str, Any], factory: Callable[[], Trainable], path: str) -> Trainable:
    """Change hyperparameters the way the worker does after an exploit (see Worker._adopt)."""
    if model.applies_hparams_in_place():
        model.set_hparams(hparams)
        return model
    model.save(path)
    rebuilt = factory()
    rebuilt.setup(hparams)
    rebuilt.load(path)
    return rebuilt


def replay_member(
    store: Any,
    run: str,
    member: int | str = "best",
    *,
    trainable: type[Trainable] | Callable[[], Trainable] | str | None = None,
    steps: int | None = None,
    trainable_args: Mapping[str, Any] | None = None,
    save_to: str | None = None,
    on_step: Callable[[int, Mapping[str, Any]], None] | None = None,
) -> ReplayResult:
    """Replay the schedule of a member of a stored run (``pbtune replay RUN --member best``).

    Args:
        store: the run's :class:`~pbtune.PopulationStore`.
        member: a member id or ``"best"``.
        trainable: defaults to the run config's ``trainable`` (``"module:Class"``).
        steps: defaults to the age of the member's model (the member's steps plus the steps it
            inherited from donors); more steps continue with the last hyperparameters.
        trainable_args: default to the run config's ``trainable_args``.

    Example::

        result = replay_member(open_store("sqlite:///pbtune-runs/pbtune.db"), "exp", "best")
        print(result.score)
    """
    from pbtune.engine.worker import load_trainable
    from pbtune.report.data import load_run, member_schedule, model_age, resolve_member

    data = load_run(store, run)
    member_id = resolve_member(data, member)
    target = trainable if trainable is not None else data.config.get("trainable")
    if target is None:
        raise InvalidConfigError(
            "trainable", f"run {run!r}", "given (the run's config names none: it was started with a class)", None
        )
    if isinstance(target, str):
        target = load_trainable(target)
    age = model_age(data.events, member_id, data.member(member_id).step) if steps is None else steps
    args = dict(data.config.get("trainable_args") or {}) if trainable_args is None else dict(trainable_args)
    return replay(
        target, member_schedule(data, member_id), age, trainable_args=args, metric=data.metric,
        save_to=save_to, on_step=on_step,
    )
