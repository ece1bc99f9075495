"""Replay: a schedule retrains the model from scratch and reproduces what PBT produced."""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from typing import Any

import pytest
from report_helpers import SmallRun

from pbtune.engine.trainable import Trainable
from pbtune.errors import InvalidConfigError
from pbtune.lineage import schedule
from pbtune.report.data import ancestry_scores, model_age
from pbtune.report.replay import as_schedule, replay, replay_member
from pbtune.testing.trainables import Quadratic


def test_replay_reproduces_every_member_of_a_real_run(small_run: SmallRun) -> None:
    """Quadratic is deterministic given its hyperparameters: replay must match PBT bit for bit."""
    data = small_run.data
    for member in data.members:
        result = replay_member(small_run.store, data.run, member.member_id)
        assert result.steps == model_age(data.events, member.member_id, member.step)
        assert result.score == member.score, member.member_id
        # the whole curve: each step's score equals the one the model's ancestor reported
        along = ancestry_scores(data, member.member_id)
        assert [s for s, _ in result.scores] == list(along.steps)
        assert [v for _, v in result.scores] == list(along.values)


def test_replay_of_the_best_member_reproduces_the_run_result(small_run: SmallRun) -> None:
    best = small_run.result.best
    result = replay(Quadratic, small_run.result.schedule, model_age(small_run.data.events, best.member_id, best.step))
    assert result.score == best.score


class _Recorder(Trainable):
    """Counts steps and records the hyperparameter ``x`` each step was trained with."""

    def setup(self, hparams: Mapping[str, Any]) -> None:
        self.x = hparams["x"]
        self.used: list[Any] = []
        self.total = 0.0

    def step(self) -> Mapping[str, float]:
        self.used.append(self.x)
        self.total += self.x
        return {"score": self.total}

    def save(self, path: str) -> None:
        with open(path, "w") as handle:
            json.dump({"used": self.used, "total": self.total}, handle)

    def load(self, path: str) -> None:
        with open(path) as handle:
            state = json.load(handle)
        self.used, self.total = state["used"], state["total"]


class _InPlaceRecorder(_Recorder):
    def set_hparams(self, hparams: Mapping[str, Any]) -> None:
        self.x = hparams["x"]


@pytest.mark.parametrize("cls", [_Recorder, _InPlaceRecorder], ids=["rebuild+load", "set_hparams"])
def test_a_change_at_step_s_trains_step_s_plus_one_on(cls: type[_Recorder]) -> None:
    plan = [{"step": 0, "hparams": {"x": 1}}, {"step": 3, "hparams": {"x": 2}}, {"step": 5, "hparams": {"x": 3}}]
    result = replay(cls, plan, 7)
    model = result.trainable
    assert isinstance(model, cls)
    # steps 1-3 with the entry of step 0, steps 4-5 with the one of step 3, steps 6-7 with step 5's
    assert model.used == [1, 1, 1, 2, 2, 3, 3]
    assert [s for s, _ in result.scores] == list(range(1, 8))
    assert result.score == 13


def test_more_steps_continue_with_the_last_hyperparameters_and_later_changes_are_ignored() -> None:
    plan = [{"step": 0, "hparams": {"x": 1}}, {"step": 2, "hparams": {"x": 10}}]
    assert replay(_InPlaceRecorder, plan, 4).trainable.used == [1, 1, 10, 10]  # type: ignore[attr-defined]
    assert replay(_InPlaceRecorder, plan, 2).trainable.used == [1, 1]  # type: ignore[attr-defined]


def test_replay_saves_the_final_model(tmp_path: Any) -> None:
    path = os.path.join(tmp_path, "out", "model.json")
    result = replay(Quadratic, [{"step": 0, "hparams": {"lr": 0.1}}], 5, save_to=path)
    restored = Quadratic()
    restored.setup({"lr": 0.1})
    restored.load(path)
    assert result.checkpoint == path
    assert -((restored.theta - restored.target) ** 2) == result.score


def test_replay_calls_on_step_with_the_age() -> None:
    seen: list[int] = []
    replay(Quadratic, [{"step": 0, "hparams": {"lr": 0.1}}], 3, on_step=lambda age, metrics: seen.append(age))
    assert seen == [1, 2, 3]


@pytest.mark.parametrize(
    ("plan", "field"),
    [
        ([], "schedule"),
        ([{"step": 1, "hparams": {"x": 1}}], "schedule[0].step"),
        ([{"step": 0, "hparams": {"x": 1}}, {"step": 0, "hparams": {"x": 2}}], "schedule[1].step"),
        ([{"step": 0, "hparams": {"x": 1}}, {"step": -3, "hparams": {"x": 2}}], "schedule[1].step"),
        ([{"step": 0, "hparams": "x=1"}], "schedule[0].hparams"),
        ([{"step": "0", "hparams": {"x": 1}}], "schedule[0].step"),
        (["0:x=1"], "schedule[0]"),
    ],
)
def test_bad_schedules_name_the_field(plan: list[Any], field: str) -> None:
    with pytest.raises(InvalidConfigError) as info:
        as_schedule(plan)
    assert info.value.field == field


def test_bad_steps_and_trainable() -> None:
    with pytest.raises(InvalidConfigError, match="`steps` of `replay`"):
        replay(Quadratic, [{"step": 0, "hparams": {"lr": 0.1}}], -1)
    with pytest.raises(InvalidConfigError, match="`trainable` of `replay`"):
        replay(dict, [{"step": 0, "hparams": {"lr": 0.1}}], 1)  # type: ignore[arg-type]


def test_replay_accepts_schedule_entries_and_their_json_form(small_run: SmallRun) -> None:
    member = small_run.data.members[2]
    entries = schedule(small_run.data.events, member.member_id)
    steps = model_age(small_run.data.events, member.member_id, member.step)
    from_json = json.loads(json.dumps([{"step": e.step, "hparams": dict(e.hparams)} for e in entries]))
    assert replay(Quadratic, entries, steps).score == replay(Quadratic, from_json, steps).score == member.score


def test_replay_member_needs_a_trainable_when_the_run_names_none(small_run: SmallRun) -> None:
    from pbtune.store import SQLStore

    store = SQLStore("sqlite://")
    config = dict(small_run.data.config, trainable=None)
    store.create_run("anon", config)
    store.add_member("anon", 0, {"lr": 0.1, "batch": 8, "act": "relu"})
    store.add_member("anon", 1, {"lr": 0.2, "batch": 8, "act": "relu"})
    store.report("anon", 1, 4, -1.0)
    with pytest.raises(InvalidConfigError, match="`trainable` of `run 'anon'`"):
        replay_member(store, "anon", "best")
    result = replay_member(store, "anon", "best", trainable=Quadratic)
    assert result.steps == 4
    assert result.score == replay(Quadratic, [{"step": 0, "hparams": {"lr": 0.2}}], 4).score


@pytest.mark.slow  # two worker processes, 6 members x 40 steps: ~15 s
def test_replay_reproduces_members_trained_by_two_workers(tmp_path: Any) -> None:
    from report_helpers import small_config

    import pbtune
    from pbtune.report.data import ancestry, load_run
    from pbtune.store import open_store

    config = small_config(str(tmp_path), name="two", workers=2, population=6, budget=40)
    pbtune.run(config=config, progress=False)
    store = open_store(config.storage)
    data = load_run(store, "two")
    checked = 0
    for member in data.members:
        segments = ancestry(data.events, member.member_id, member.step)
        # a donor that itself exploited at the very step that was copied leaves the lineage
        # ambiguous (which of its two step-d checkpoints was copied is not recorded): skip those
        if any(e.kind == "exploit" and e.member_id == s.member_id and e.step == s.end
               for s in segments[:-1] for e in data.events):
            continue
        assert replay_member(store, "two", member.member_id).score == member.score, member.member_id
        checked += 1
    assert checked >= len(data.members) // 2
