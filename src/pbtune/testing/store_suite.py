"""Conformance suite for PopulationStore implementations (after Optuna's StorageTestCase).

Subclass :class:`StoreConformance` and implement ``make_store(clock)``; every backend
(SQLite, PostgreSQL, ...) runs the same tests.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator

import pytest

from pbtune.errors import IllegalTransitionError, LeaseLostError, MemberFinishedError, NotFoundError
from pbtune.store.base import PopulationStore, ScorePoint
from pbtune.testing._store_rounds import RoundConformance
from pbtune.testing._store_rounds import ref as _ref
from pbtune.testing._store_views import ViewConformance
from pbtune.types import MemberState

__all__ = ["StoreConformance", "FakeClock"]


class FakeClock:
    def __init__(self, start: float = 1_000.0) -> None:
        self.now = start

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


class StoreConformance(RoundConformance, ViewConformance):
    """Behaviour every population store must show (the PBT round's writes: :class:`RoundConformance`;
    the ranked population view: :class:`ViewConformance`)."""

    def make_store(self, clock: Callable[[], float]) -> PopulationStore:
        raise NotImplementedError

    @pytest.fixture
    def clock(self) -> FakeClock:
        return FakeClock()

    @pytest.fixture
    def store(self, clock: FakeClock) -> Iterator[PopulationStore]:
        store = self.make_store(clock)
        yield store
        store.close()

    @pytest.fixture
    def run(self, store: PopulationStore) -> str:
        store.create_run("r", {"budget": 10})
        for i in range(3):
            store.add_member("r", i, {"lr": 0.1 * (i + 1)})
        return "r"

    # -- runs and members ----------------------------------------------------------------------
    def test_create_run_is_idempotent_and_keeps_the_first_config(self, store: PopulationStore) -> None:
        store.create_run("a", {"x": 1})
        again = store.create_run("a", {"x": 2})
        assert dict(again.config) == {"x": 1}
        assert [r.name for r in store.list_runs()] == ["a"]

    def test_missing_run_and_member_raise_not_found(self, store: PopulationStore, run: str) -> None:
        with pytest.raises(NotFoundError):
            store.get_run("nope")
        with pytest.raises(NotFoundError):
            store.get_member(run, 99)
        with pytest.raises(NotFoundError):
            store.add_member("nope", 0, {})

    def test_a_batch_commits_all_its_writes_or_none(self, store: PopulationStore, run: str) -> None:
        def reports() -> list[int]:
            versions = [store.report(run, i, 1, float(i)).version for i in range(3)]
            assert store.get_member(run, 2).step == 1  # reads inside the batch see its writes
            return versions

        versions = store.batch(reports)
        assert versions == [store.get_member(run, i).version for i in range(3)]
        assert [store.get_member(run, i).score for i in range(3)] == [0.0, 1.0, 2.0]

        def half_then_fail() -> None:
            store.report(run, 0, 2, 10.0)
            store.batch(lambda: store.report(run, 1, 2, 11.0))  # nested: part of the outer batch
            raise RuntimeError("caller failed mid-batch")

        with pytest.raises(RuntimeError, match="mid-batch"):
            store.batch(half_then_fail)
        assert [store.get_member(run, i).step for i in range(3)] == [1, 1, 1]  # nothing of it was kept
        assert len(store.scores(run)) == 3

    def test_report_many_writes_what_one_report_per_member_writes(self, store: PopulationStore, run: str) -> None:
        store.create_run("one-by-one", {"budget": 10})
        for i in range(3):
            store.add_member("one-by-one", i, {"lr": 0.1 * (i + 1)})
        points = {0: [ScorePoint(1, 0.5, {"loss": 2.0}), ScorePoint(2, 0.75)], 2: [ScorePoint(2, math.nan)], 1: []}
        many = store.report_many(run, points)
        for member_id, pts in points.items():
            if pts:
                store.report("one-by-one", member_id, pts[-1].step, pts[-1].score, metrics=pts[-1].metrics,
                             earlier=pts[:-1])
        assert sorted(many) == [0, 2]
        for i in range(3):
            got, expected = store.get_member(run, i), store.get_member("one-by-one", i)
            assert (got.state, got.step, got.score_step, got.version) == (
                expected.state, expected.step, expected.score_step, expected.version)
            assert got.score == expected.score or repr(got.score) == repr(expected.score) == "nan"
            if i in many:
                assert many[i] == got  # the returned records are what the store now holds
        scores = [(r.member_id, r.step, r.metrics) for r in store.scores(run)]
        assert scores == [(r.member_id, r.step, r.metrics) for r in store.scores("one-by-one")]
        assert store.get_member(run, 0).state is MemberState.RUNNING
        assert store.report_many(run, {}) == {}

    def test_report_many_can_finish_the_members_it_reports(self, store: PopulationStore, run: str) -> None:
        store.create_run("one-by-one", {"budget": 10})
        for i in range(3):
            store.add_member("one-by-one", i, {"lr": 0.1 * (i + 1)})
        for name in (run, "one-by-one"):
            store.claim(name, "w1", 30.0, budget=10)  # member 0 is leased: finishing frees it
        done = store.report_many(run, {0: [ScorePoint(3, 0.5)], 1: [ScorePoint(3, 0.25)]}, finish=True)
        for member_id, score in ((0, 0.5), (1, 0.25)):
            store.report("one-by-one", member_id, 3, score)
            store.set_state("one-by-one", member_id, MemberState.FINISHED)
        assert sorted(done) == [0, 1]
        for member_id, score in ((0, 0.5), (1, 0.25)):
            member, expected = store.get_member(run, member_id), store.get_member("one-by-one", member_id)
            assert done[member_id] == member
            assert (member.state, member.step, member.score, member.lease_owner) == (
                MemberState.FINISHED, 3, score, None)
            assert member.version == expected.version  # what report + set_state would have left
        assert store.get_member(run, 2).state is MemberState.PENDING  # not reported: left alone
        with pytest.raises(MemberFinishedError):
            store.report_many(run, {0: [ScorePoint(4, 1.0)]})

    def test_report_many_writes_nothing_when_one_member_cannot_take_it(self, store: PopulationStore, run: str) -> None:
        store.report(run, 1, 1, 0.0)
        store.set_state(run, 1, MemberState.FINISHED)
        with pytest.raises(MemberFinishedError):
            store.report_many(run, {0: [ScorePoint(2, 1.0)], 1: [ScorePoint(2, 1.0)]})
        with pytest.raises(NotFoundError):
            store.report_many(run, {0: [ScorePoint(2, 1.0)], 7: [ScorePoint(2, 1.0)]})
        assert store.get_member(run, 0).step == 0 and len(store.scores(run)) == 1

    def test_add_members_adds_what_add_member_adds(self, store: PopulationStore, run: str) -> None:
        store.create_run("bulk", {"budget": 10})
        store.add_member("bulk", 1, {"lr": 9.0})  # exists: kept as it is
        added = store.add_members("bulk", [{"lr": 0.1}, {"lr": 0.2}, {"lr": 0.3}])
        assert [(m.member_id, m.hparams, m.state, m.version) for m in added] == [
            (0, {"lr": 0.1}, MemberState.PENDING, 0), (1, {"lr": 9.0}, MemberState.PENDING, 0),
            (2, {"lr": 0.3}, MemberState.PENDING, 0)]
        assert added == store.list_members("bulk")
        inits = sorted((e.member_id, e.kind, e.step, e.new_hparams) for e in store.events("bulk"))
        assert inits == [(0, "init", 0, {"lr": 0.1}), (1, "init", 0, {"lr": 9.0}), (2, "init", 0, {"lr": 0.3})]
        assert store.add_members("bulk", [{"lr": 5.0}] * 3) == added  # again: nothing changes
        assert len(store.events("bulk")) == 3
        with pytest.raises(NotFoundError):
            store.add_members("nope", [{}])

    def test_add_member_records_init_event_once(self, store: PopulationStore, run: str) -> None:
        store.add_member(run, 0, {"lr": 123})  # exists: unchanged
        assert store.get_member(run, 0).hparams == {"lr": 0.1}
        inits = [e for e in store.events(run) if e.kind == "init"]
        assert [e.member_id for e in inits] == [0, 1, 2]
        assert inits[0].new_hparams == {"lr": 0.1}

    def test_snapshots_are_frozen(self, store: PopulationStore, run: str) -> None:
        member = store.get_member(run, 0)
        with pytest.raises(AttributeError):
            member.step = 5  # type: ignore[misc]

    # -- reports -----------------------------------------------------------------------------
    def test_report_appends_scores_and_moves_the_member(self, store: PopulationStore, run: str) -> None:
        store.report(run, 0, 1, 0.5, earlier=[])
        updated = store.report(run, 0, 3, 0.9, metrics={"loss": 0.1}, earlier=[ScorePoint(2, 0.7)])
        assert (updated.step, updated.score, updated.state) == (3, 0.9, MemberState.RUNNING)
        assert [(s.step, s.score) for s in store.scores(run, 0)] == [(1, 0.5), (2, 0.7), (3, 0.9)]
        assert store.scores(run, 0)[-1].metrics == {"loss": 0.1}

    def test_nan_and_inf_scores_round_trip(self, store: PopulationStore, run: str) -> None:
        store.report(run, 0, 1, math.nan)
        store.report(run, 1, 1, -math.inf)
        assert math.isnan(store.get_member(run, 0).score)  # type: ignore[arg-type]
        assert store.get_member(run, 1).score == -math.inf
        assert store.get_member(run, 2).score is None
        assert math.isnan(store.scores(run, 0)[0].score)

    def test_nan_and_inf_metrics_are_stored_and_rank_worst(self, store: PopulationStore, run: str) -> None:
        """PostgreSQL's JSON type has no NaN/Infinity tokens: a non-finite metric must still be
        stored (it failed every member there), read back as the same float, and rank worst."""
        odd = {"loss": math.nan, "grad": math.inf, "low": -math.inf, "nested": {"x": [math.nan, 1.0]}, "ok": 2.5}
        store.report(run, 0, 1, math.nan, metrics=odd)
        store.report(run, 1, 1, math.inf, metrics={"loss": -math.inf})
        store.report_many(run, {2: [ScorePoint(1, 0.25, {"loss": math.inf})]})
        got = store.scores(run, 0)[0].metrics
        assert math.isnan(got["loss"]) and got["grad"] == math.inf and got["low"] == -math.inf
        assert math.isnan(got["nested"]["x"][0]) and got["nested"]["x"][1] == 1.0 and got["ok"] == 2.5
        assert store.scores(run, 1)[0].metrics == {"loss": -math.inf}
        assert store.scores(run, 2)[0].metrics == {"loss": math.inf}
        from pbtune.ranking import ranked

        for mode in ("max", "min"):
            order = [m.member_id for m in ranked(store.list_members(run), mode)]
            assert order[0] == 2, (mode, order)  # the only finite score wins in either direction

    def test_checkpoint_is_recorded_with_the_report(self, store: PopulationStore, run: str) -> None:
        member = store.report(run, 0, 2, 1.0, checkpoint=_ref("r/m0/a", 2))
        assert (member.checkpoint, member.checkpoint_step) == ("r/m0/a", 2)

    def test_finished_member_rejects_changes(self, store: PopulationStore, run: str) -> None:
        store.report(run, 0, 1, 1.0)
        store.set_state(run, 0, MemberState.FINISHED)
        with pytest.raises(MemberFinishedError):
            store.report(run, 0, 2, 1.0)
        with pytest.raises(MemberFinishedError):
            store.set_hparams(run, 0, {"lr": 1}, expected_version=store.get_member(run, 0).version)

    def test_illegal_transition_raises(self, store: PopulationStore, run: str) -> None:
        with pytest.raises(IllegalTransitionError):
            store.set_state(run, 0, MemberState.PAUSED)  # PENDING -> PAUSED is not allowed

    def test_failed_member_keeps_the_traceback(self, store: PopulationStore, run: str) -> None:
        store.set_state(run, 1, MemberState.FAILED, error="Traceback...\nValueError: boom")
        member = store.get_member(run, 1)
        assert member.state is MemberState.FAILED and "ValueError: boom" in (member.error or "")
        assert store.events(run, 1)[-1].summary == "ValueError: boom"

    # -- compare-and-set -----------------------------------------------------------------------
    def test_apply_exploit_is_compare_and_set(self, store: PopulationStore, run: str) -> None:
        store.report(run, 1, 2, 5.0, checkpoint=_ref("r/m1/a", 2))
        stale = store.get_member(run, 0).version
        store.report(run, 0, 2, 1.0)  # moves the version on
        lost = store.apply_exploit(run, 0, expected_version=stale, donor_id=1, donor_step=2,
                                   hparams={"lr": 0.2}, checkpoint=_ref("r/m0/copy", 2), summary="")
        assert lost is None
        assert store.get_member(run, 0).hparams == {"lr": 0.1}
        current = store.get_member(run, 0).version
        won = store.apply_exploit(run, 0, expected_version=current, donor_id=1, donor_step=2,
                                  hparams={"lr": 0.2}, checkpoint=_ref("r/m0/copy2", 2), summary="copied 1")
        assert won is not None and won.hparams == {"lr": 0.2} and won.checkpoint == "r/m0/copy2"
        assert won.last_ready_step == 2
        exploit = [e for e in store.events(run, 0) if e.kind == "exploit"]
        assert len(exploit) == 1 and exploit[0].donor_id == 1 and exploit[0].old_hparams == {"lr": 0.1}

    def test_set_hparams_is_compare_and_set(self, store: PopulationStore, run: str) -> None:
        version = store.get_member(run, 2).version
        assert store.set_hparams(run, 2, {"lr": 9}, expected_version=version + 1) is None
        assert store.set_hparams(run, 2, {"lr": 9}, expected_version=version, summary="lr: 0.3 -> 9") is not None
        assert store.events(run, 2)[-1].summary == "lr: 0.3 -> 9"

    def test_mark_ready_checked(self, store: PopulationStore, run: str) -> None:
        member = store.report(run, 0, 4, 1.0)
        assert store.mark_ready_checked(run, 0, 4, member.version) is True
        assert store.get_member(run, 0).last_ready_step == 4
        assert store.mark_ready_checked(run, 0, 5, member.version) is False

    # -- leases ------------------------------------------------------------------------------
    def test_claim_gives_each_member_to_one_worker_least_advanced_first(self, store: PopulationStore, run: str) -> None:
        store.report(run, 0, 3, 1.0)
        store.set_state(run, 0, MemberState.PAUSED)
        claimed = [store.claim(run, f"w{i}", 10, budget=10) for i in range(4)]
        ids = [c.member_id if c else None for c in claimed]
        assert ids == [1, 2, 0, None]

    def test_members_at_budget_are_not_claimed(self, store: PopulationStore, run: str) -> None:
        for i in range(3):
            store.report(run, i, 10, 1.0)
            store.set_state(run, i, MemberState.PAUSED)
        assert store.claim(run, "w", 10, budget=10) is None

    def test_expired_lease_is_taken_over_from_the_last_checkpoint(
        self, store: PopulationStore, run: str, clock: FakeClock
    ) -> None:
        first = store.claim(run, "dead", 5, budget=10)
        assert first is not None
        store.report(run, first.member_id, 4, 1.0, checkpoint=_ref("r/m/4", 4), worker="dead")
        store.report(run, first.member_id, 6, 2.0, worker="dead")
        clock.advance(3)
        assert store.heartbeat(run, "dead", 5) == {first.member_id}
        clock.advance(4)  # 4 < 5 s after the heartbeat: still held
        assert all(c is None or c.member_id != first.member_id
                   for c in [store.claim(run, "other", 5, budget=10) for _ in range(2)])
        clock.advance(2)
        taken = store.claim(run, "new", 5, budget=10)
        assert taken is not None and taken.member_id == first.member_id
        assert taken.step == 4 and taken.lease_owner == "new"
        assert store.events(run, first.member_id)[-1].kind == "resume"
        with pytest.raises(LeaseLostError):
            store.report(run, first.member_id, 7, 3.0, worker="dead")

    def test_claim_of_a_named_member_takes_over_only_that_member_when_its_lease_expired(
        self, store: PopulationStore, run: str, clock: FakeClock
    ) -> None:
        held = store.claim(run, "dead", 5, budget=10, member_id=2)
        assert held is not None and held.member_id == 2 and held.lease_owner == "dead"
        store.report(run, 2, 3, 1.0, checkpoint=_ref("r/m2/3", 3), worker="dead")
        store.report(run, 2, 5, 1.5, worker="dead")
        assert store.claim(run, "heir", 5, budget=10, member_id=2) is None  # still live
        clock.advance(6)
        taken = store.claim(run, "heir", 5, budget=1, member_id=2)  # a named member: at any step
        assert taken is not None and (taken.member_id, taken.lease_owner, taken.step) == (2, "heir", 3)
        assert store.events(run, 2)[-1].kind == "resume"
        with pytest.raises(LeaseLostError):
            store.report(run, 2, 4, 2.0, worker="dead")
        assert store.get_member(run, 0).lease_owner is None  # nobody else was leased

    def test_release_frees_the_lease(self, store: PopulationStore, run: str) -> None:
        member = store.claim(run, "w", 10, budget=10)
        assert member is not None
        paused = store.set_state(run, member.member_id, MemberState.PAUSED, worker="w")
        assert paused.lease_owner is None
        assert store.heartbeat(run, "w", 10) == set()

    # -- checkpoints ---------------------------------------------------------------------------
    def test_collect_keeps_current_newest_and_pinned(self, store: PopulationStore, run: str) -> None:
        for step in range(1, 6):
            store.report(run, 0, step, float(step), checkpoint=_ref(f"r/m0/{step}", step))
        assert store.pin_checkpoint(run, "r/m0/1", "reader", 60) is True
        doomed = store.collect_checkpoints(run, 0, keep=2)
        assert sorted(doomed) == ["r/m0/2", "r/m0/3"]
        assert store.collect_checkpoints(run, 0, keep=2) == []
        assert store.pin_checkpoint(run, "r/m0/2", "late", 60) is False  # already collected
        store.unpin_checkpoint(run, "r/m0/1", "reader")
        assert store.collect_checkpoints(run, 0, keep=2) == ["r/m0/1"]

    def test_expired_pins_do_not_protect(self, store: PopulationStore, run: str, clock: FakeClock) -> None:
        for step in range(1, 4):
            store.report(run, 0, step, float(step), checkpoint=_ref(f"r/m0/{step}", step))
        store.pin_checkpoint(run, "r/m0/1", "reader", 5)
        clock.advance(6)
        assert sorted(store.collect_checkpoints(run, 0, keep=1)) == ["r/m0/1", "r/m0/2"]
