"""The data behind figures and tables, checked against the store's records of a real run."""

from __future__ import annotations

import csv
import io

import pytest
from report_helpers import SmallRun

from pbtune.errors import InvalidConfigError
from pbtune.lineage import ScheduleEntry, schedule
from pbtune.report.data import (
    ancestry,
    ancestry_scores,
    best_member_id,
    exploit_marks,
    hparam_curves,
    hparam_history,
    hparams_at,
    lineage_edges,
    member_rows,
    model_age,
    resolve_member,
    scalar_points,
    schedule_csv,
    schedule_records,
    score_curves,
)
from pbtune.store import SQLStore
from pbtune.store.base import CheckpointRef
from pbtune.types import EventRecord, MemberState


def _store_scores(run: SmallRun, member_id: int) -> dict[int, float]:
    """What the store holds for a member: step -> the last score reported for it."""
    out: dict[int, float] = {}
    for record in run.store.scores(run.config.name, member_id):
        out[record.step] = record.score
    return out


def _schedule_at(entries: list[ScheduleEntry], age: int) -> dict:
    """Hyperparameters that trained step ``age`` of the model according to a schedule."""
    current = entries[0].hparams
    for entry in entries:
        if entry.step < age:
            current = entry.hparams
    return dict(current)


def test_the_run_exploited(small_run: SmallRun) -> None:
    # the rest of the suite checks exploit data; a run without exploits would check nothing
    assert any(e.kind == "exploit" for e in small_run.data.events)
    assert all(m.state is MemberState.FINISHED for m in small_run.data.members)


def test_score_curves_match_the_store(small_run: SmallRun) -> None:
    curves = score_curves(small_run.data.scores, small_run.data.events)
    assert sorted(curves) == [m.member_id for m in small_run.data.members]
    for member in small_run.data.members:
        expected = _store_scores(small_run, member.member_id)
        curve = curves[member.member_id]
        assert list(curve.steps) == sorted(expected)
        assert list(curve.values) == [expected[s] for s in sorted(expected)]
        assert curve.steps[-1] == small_run.config.budget
        assert curve.values[-1] == member.score


def test_exploit_marks_are_the_exploit_events_with_both_scores(small_run: SmallRun) -> None:
    data = small_run.data
    curves = score_curves(data.scores, data.events)
    marks = exploit_marks(data.events, curves)
    exploits = [e for e in data.events if e.kind == "exploit"]
    assert [(m.member_id, m.step, m.donor_id, m.donor_step) for m in marks] == [
        (e.member_id, e.step, e.donor_id, e.donor_step) for e in exploits
    ]
    for mark in marks:
        assert mark.score_before == _store_scores(small_run, mark.member_id)[mark.step]
        assert mark.donor_score == _store_scores(small_run, mark.donor_id)[mark.donor_step]
        assert data.mode == "max" and mark.donor_score >= mark.score_before  # it copied a better member


def test_hparam_curves_follow_the_lineage_events(small_run: SmallRun) -> None:
    data = small_run.data
    curves = hparam_curves(data)
    assert list(curves) == ["lr", "batch", "act"]
    choices = ["relu", "tanh", "gelu"]
    for member in data.members:
        kinds = ("init", "exploit", "explore")
        changes = [e for e in data.events if e.member_id == member.member_id and e.kind in kinds]
        for name, curve_by_member in curves.items():
            curve = curve_by_member[member.member_id]
            points = dict(zip(curve.steps, curve.values, strict=True))
            for event in changes:
                later = [e for e in changes if e.step == event.step]
                value = later[-1].new_hparams[name]  # the last change at a step wins
                assert points[event.step] == (choices.index(value) if name == "act" else value)
            final = member.hparams[name]
            assert curve.steps[-1] == member.step
            assert curve.values[-1] == (choices.index(final) if name == "act" else final)


def test_hparams_at_applies_a_change_from_the_next_step() -> None:
    history = [(0, {"lr": 1}), (5, {"lr": 2}), (10, {"lr": 3})]
    assert [hparams_at(history, s)["lr"] for s in (1, 5, 6, 10, 11, 99)] == [1, 1, 2, 2, 3, 3]
    assert hparams_at([], 3) == {}


def test_scalar_points_carry_score_metrics_and_the_hparams_that_trained_the_step(small_run: SmallRun) -> None:
    data = small_run.data
    points = scalar_points(data)
    assert len(points) == sum(len(_store_scores(small_run, m.member_id)) for m in data.members)
    for point in points:
        assert point.values["score"] == _store_scores(small_run, point.member_id)[point.step]
        history = hparam_history(data.events, point.member_id)
        assert point.values["hparams/lr"] == hparams_at(history, point.step)["lr"]
        assert -((point.values["metrics/theta"] - 3.0) ** 2) == pytest.approx(point.values["score"])
    later = scalar_points(data, {m.member_id: 20 for m in data.members})
    assert later and all(p.step > 20 for p in later)


def test_schedule_is_the_concatenation_of_the_donors_segments(small_run: SmallRun) -> None:
    """Step k of a model was trained with what its ancestor trained its own step k - offset with."""
    data = small_run.data
    inherited = 0
    for member in data.members:
        entries = schedule(data.events, member.member_id)
        segments = ancestry(data.events, member.member_id, member.step)
        inherited += len(segments) > 1
        assert segments[0].start == 0 and segments[0].offset == 0
        for previous, segment in zip(segments, segments[1:], strict=False):
            assert segment.age_start == previous.age_end  # each segment starts from the donor's model
        for segment in segments:
            history = hparam_history(data.events, segment.member_id)
            for step in range(segment.start + 1, segment.end + 1):
                assert _schedule_at(entries, step + segment.offset) == hparams_at(history, step), (
                    member.member_id, segment, step,
                )
        assert {e.member_id for e in entries} <= {s.member_id for s in segments}
    assert inherited > 0  # some member's model came from a donor


def _ref(key: str, step: int) -> CheckpointRef:
    return CheckpointRef(key, step, "0" * 64, 1)


def test_schedule_shifts_by_the_donors_own_age_through_a_real_store() -> None:
    """A donor that itself copied an older model passes on that age (chained shifts)."""
    store = SQLStore("sqlite://")
    store.create_run("r", {"space": {"lr": {"type": "float", "low": 0.01, "high": 1.0}}})
    for i, lr in enumerate((0.1, 0.2, 0.3)):
        store.add_member("r", i, {"lr": lr})
    store.report("r", 0, 20, 5.0, checkpoint=_ref("m0-20", 20))
    store.report("r", 1, 10, 1.0, checkpoint=_ref("m1-10", 10))
    # member 1 at its step 10 takes member 0's model of step 20: its model is 10 steps older
    m1 = store.apply_exploit("r", 1, expected_version=store.get_member("r", 1).version, donor_id=0, donor_step=20,
                             hparams={"lr": 0.1}, checkpoint=_ref("m1-c", 10), summary="")
    assert m1 is not None
    store.set_hparams("r", 1, {"lr": 0.12}, expected_version=m1.version)
    store.report("r", 1, 20, 6.0, checkpoint=_ref("m1-20", 20))
    store.report("r", 2, 20, 0.5, checkpoint=_ref("m2-20", 20))
    # member 2 at its step 20 takes member 1's model of member-1 step 20, which is 30 steps old
    m2 = store.apply_exploit("r", 2, expected_version=store.get_member("r", 2).version, donor_id=1, donor_step=20,
                             hparams={"lr": 0.12}, checkpoint=_ref("m2-c", 20), summary="")
    assert m2 is not None
    store.set_hparams("r", 2, {"lr": 0.15}, expected_version=m2.version)
    events = store.events("r")

    entries = schedule(events, 2)
    assert [(e.step, e.hparams["lr"], e.member_id) for e in entries] == [(0, 0.1, 0), (20, 0.12, 1), (30, 0.15, 2)]
    assert [(s.member_id, s.start, s.end, s.offset) for s in ancestry(events, 2, 25)] == [
        (0, 0, 20, 0), (1, 10, 20, 10), (2, 20, 25, 10),
    ]
    assert model_age(events, 2, 25) == 35
    assert model_age(events, 1, 10) == 20 and model_age(events, 0, 7) == 7


def test_score_curves_drop_what_a_resume_rolled_back() -> None:
    now = [1000.0]
    store = SQLStore("sqlite://", clock=lambda: now[0])
    store.create_run("r", {})
    store.add_member("r", 0, {"lr": 0.1})
    assert store.claim("r", "w1", lease_seconds=5, budget=100) is not None
    for step in range(1, 8):
        now[0] += 1
        store.report("r", 0, step, float(step), checkpoint=_ref("c5", 5) if step == 5 else None, worker="w1")
    now[0] += 60  # w1 died: its lease expired; w2 resumes from the checkpoint of step 5
    resumed = store.claim("r", "w2", lease_seconds=5, budget=100)
    assert resumed is not None and resumed.step == 5
    now[0] += 1
    store.report("r", 0, 6, 60.0, worker="w2")
    curve = score_curves(store.scores("r"), store.events("r"))[0]
    assert list(curve.steps) == [1, 2, 3, 4, 5, 6]  # step 7 of the dead worker is gone
    assert curve.values[-1] == 60.0
    assert score_curves(store.scores("r"))[0].steps[-1] == 7  # without events nothing is dropped


def test_ancestry_scores_follow_the_model_back_through_its_donors(small_run: SmallRun) -> None:
    data = small_run.data
    for member in data.members:
        curve = ancestry_scores(data, member.member_id)
        age = model_age(data.events, member.member_id, member.step)
        assert list(curve.steps) == list(range(1, age + 1))
        assert curve.values[-1] == member.score
        for segment in ancestry(data.events, member.member_id, member.step):
            own = _store_scores(small_run, segment.member_id)
            for step in range(segment.start + 1, segment.end + 1):
                assert curve.values[step + segment.offset - 1] == own[step]


def test_lineage_edges_and_member_rows(small_run: SmallRun) -> None:
    data = small_run.data
    edges = lineage_edges(data.events)
    assert len(edges) == sum(e.kind == "exploit" for e in data.events)
    rows = member_rows(data)
    best = best_member_id(data)
    assert best == small_run.result.best.member_id
    for row, member in zip(rows, data.members, strict=True):
        assert row["member"] == member.member_id and row["score"] == member.score
        assert row["best"] == (member.member_id == best)
        assert row["exploits"] == sum(e.kind == "exploit" and e.member_id == member.member_id for e in data.events)
        assert row["best_score"] == max(_store_scores(small_run, member.member_id).values())


def test_resolve_member(small_run: SmallRun) -> None:
    data = small_run.data
    assert resolve_member(data, "best") == small_run.result.best.member_id
    assert resolve_member(data, "2") == 2
    with pytest.raises(InvalidConfigError, match="`member` of `run 'toy'` must be 'best' or one of"):
        resolve_member(data, "7")
    with pytest.raises(InvalidConfigError, match="member"):
        resolve_member(data, "first")


def test_schedule_records_and_csv_hold_the_same_entries(small_run: SmallRun) -> None:
    member_id = small_run.result.best.member_id
    entries = schedule(small_run.data.events, member_id)
    records = schedule_records(entries)
    assert [(r["step"], r["hparams"], r["from_member"]) for r in records] == [
        (e.step, dict(e.hparams), e.member_id) for e in entries
    ]
    rows = list(csv.DictReader(io.StringIO(schedule_csv(entries))))
    assert [int(r["step"]) for r in rows] == [e.step for e in entries]
    assert [float(r["lr"]) for r in rows] == [e.hparams["lr"] for e in entries]
    assert [r["act"] for r in rows] == [e.hparams["act"] for e in entries]


def test_ancestry_of_a_member_without_exploits_is_itself() -> None:
    events = [EventRecord(1, "r", 0, 0, "init", 0.0, new_hparams={"x": 1})]
    assert [(s.member_id, s.start, s.end, s.offset) for s in ancestry(events, 0, 12)] == [(0, 0, 12, 0)]
