"""Conformance tests of a PBT round's writes: bulk exploits and ready checks, reopening
members, recent scores (a base of :class:`~pbtune.testing.store_suite.StoreConformance`)."""

from __future__ import annotations

import math
from typing import Any

import pytest

from pbtune.errors import MemberFinishedError, NotFoundError
from pbtune.store.base import CheckpointRef, ExploitWrite, PopulationStore, ReadyCheckWrite, ScorePoint
from pbtune.types import RECENT_SCORES, MemberState

__all__ = ["RoundConformance", "ref"]


def ref(key: str, step: int) -> CheckpointRef:
    """A checkpoint reference for tests (no file behind it)."""
    return CheckpointRef(key=key, step=step, sha256="0" * 64, size=1)


_ref = ref


class RoundConformance:
    """Writes of a PBT round; the fixtures ``store`` and ``run`` come from the subclass."""

    def test_apply_exploits_writes_what_apply_exploit_and_set_hparams_write(
        self, store: PopulationStore, run: str
    ) -> None:
        store.create_run("one-by-one", {"budget": 10})
        for name in (run, "one-by-one"):
            for i in range(3):
                store.add_member(name, i, {"lr": 0.1 * (i + 1)})  # no-op for run's existing members
            store.report(name, 0, 2, 0.1)
            store.report(name, 2, 2, 0.9)
        writes = [
            ExploitWrite(0, store.get_member(run, 0).version, 2, 2, {"lr": 0.3}, "copied 2 over 0",
                         explored={"lr": 0.36}, explore_summary="lr x1.2"),
            ExploitWrite(1, store.get_member(run, 1).version, 2, 2, {"lr": 0.3}, "copied 2 over 1"),
        ]
        many = store.apply_exploits(run, writes)
        for w in writes:
            one = store.apply_exploit("one-by-one", w.member_id, expected_version=w.expected_version,
                                      donor_id=w.donor_id, donor_step=w.donor_step, hparams=w.hparams,
                                      checkpoint=None, summary=w.summary)
            assert one is not None
            if w.explored is not None:
                store.set_hparams("one-by-one", w.member_id, w.explored, expected_version=one.version,
                                  summary=w.explore_summary)
        assert many is not None and sorted(many) == [0, 1]
        for i in range(3):
            got, expected = store.get_member(run, i), store.get_member("one-by-one", i)
            assert (got.hparams, got.version, got.last_ready_step, got.step) == (
                expected.hparams, expected.version, expected.last_ready_step, expected.step)
            if i in many:
                assert many[i] == got
        assert store.get_member(run, 0).hparams == {"lr": 0.36}

        def lineage(name: str) -> list[tuple[Any, ...]]:
            return [(e.member_id, e.step, e.kind, e.donor_id, e.donor_step, e.old_hparams, e.new_hparams, e.summary)
                    for e in store.events(name)]

        assert lineage(run) == lineage("one-by-one")
        assert [e.kind for e in store.events(run, 0)] == ["init", "exploit", "explore"]

    def test_apply_exploits_writes_nothing_when_one_member_changed(self, store: PopulationStore, run: str) -> None:
        versions = {i: store.get_member(run, i).version for i in range(3)}
        store.report(run, 1, 1, 0.5)  # member 1 moves on: its version no longer matches
        writes = [ExploitWrite(i, versions[i], 2, 0, {"lr": 9.0}, "copied") for i in (0, 1)]
        assert store.apply_exploits(run, writes) is None
        assert [store.get_member(run, i).hparams["lr"] for i in (0, 1)] == [0.1, 0.2]
        assert [e.kind for e in store.events(run)] == ["init"] * 3
        store.set_state(run, 2, MemberState.FINISHED)
        with pytest.raises(MemberFinishedError):
            store.apply_exploits(run, [ExploitWrite(2, store.get_member(run, 2).version, 0, 0, {"lr": 1.0}, "x")])
        with pytest.raises(NotFoundError):
            store.apply_exploits(run, [ExploitWrite(7, 0, 0, 0, {"lr": 1.0}, "x")])
        stale = ExploitWrite(0, versions[0] + 5, 1, 0, {"lr": 1.0}, "x")  # stale and finished: finished wins
        with pytest.raises(MemberFinishedError):
            store.apply_exploits(run, [stale, ExploitWrite(2, store.get_member(run, 2).version, 0, 0, {}, "x")])
        with pytest.raises(ValueError, match="more than once"):
            store.apply_exploits(run, [ExploitWrite(0, versions[0], 1, 0, {"lr": 1.0}, "x")] * 2)
        assert store.get_member(run, 0).hparams["lr"] == 0.1 and len(store.events(run)) == 3

    def test_a_round_writes_exploits_with_checkpoints_and_ready_checks_in_one_call(
        self, store: PopulationStore, run: str
    ) -> None:
        store.create_run("one-by-one", {"budget": 10})
        for name in (run, "one-by-one"):
            for i in range(3):
                store.add_member(name, i, {"lr": 0.1 * (i + 1)})
                store.report(name, i, 4, 0.1 * i, checkpoint=_ref(f"{name}-{i}-4", 4))
        copy = _ref(f"{run}-0-copy", 4)
        exploit = ExploitWrite(0, store.get_member(run, 0).version, 2, 4, {"lr": 0.3}, "copied 2 over 0",
                               explored={"lr": 0.36}, explore_summary="lr x1.2", checkpoint=copy,
                               donor_checkpoint=f"{run}-2-4")
        check = ReadyCheckWrite(1, store.get_member(run, 1).version, 4)
        updated = store.apply_exploits(run, [exploit], [check])
        one = store.apply_exploit("one-by-one", 0, expected_version=exploit.expected_version, donor_id=2,
                                  donor_step=4, hparams={"lr": 0.3}, checkpoint=_ref("one-by-one-0-copy", 4),
                                  summary="copied 2 over 0", donor_checkpoint="one-by-one-2-4")
        assert one is not None
        store.set_hparams("one-by-one", 0, {"lr": 0.36}, expected_version=one.version, summary="lr x1.2")
        assert store.mark_ready_checked("one-by-one", 1, 4, check.expected_version)
        assert updated is not None and sorted(updated) == [0, 1]
        for i in range(3):
            got, expected = store.get_member(run, i), store.get_member("one-by-one", i)
            assert (got.hparams, got.version, got.last_ready_step, got.checkpoint_step) == (
                expected.hparams, expected.version, expected.last_ready_step, expected.checkpoint_step)
            if i in updated:
                assert updated[i] == got
        member = store.get_member(run, 0)
        assert (member.checkpoint, member.checkpoint_sha256) == (copy.key, copy.sha256)
        exploit_event = [e for e in store.events(run, 0) if e.kind == "exploit"][-1]
        assert (exploit_event.checkpoint, exploit_event.donor_checkpoint) == (copy.key, f"{run}-2-4")
        assert store.apply_exploits(run, [exploit]) == {0: member}  # a retry after a lost answer: already done
        assert len(store.events(run, 0)) == 3
        assert store.apply_exploits(run, [], [check]) is None  # a stale ready check writes nothing
        assert store.get_member(run, 1).version == updated[1].version

    def test_reopen_members_brings_finished_and_failed_members_back(self, store: PopulationStore, run: str) -> None:
        store.report(run, 0, 4, 0.5, checkpoint=_ref("r-0-4", 4))
        store.report(run, 0, 6, 0.6)
        store.set_state(run, 0, MemberState.FAILED, error="boom")
        store.report(run, 1, 6, 0.7, checkpoint=_ref("r-1-6", 6))
        store.set_state(run, 1, MemberState.FINISHED)
        assert store.reopen_members(run, [MemberState.FAILED], summary="retried") == [0]
        failed = store.get_member(run, 0)
        assert (failed.state, failed.step, failed.error, failed.lease_owner) == (MemberState.PAUSED, 4, None, None)
        assert store.get_member(run, 1).state is MemberState.FINISHED
        assert store.reopen_members(run, [MemberState.FINISHED], summary="more", config={"budget": 20}) == [1]
        finished = store.get_member(run, 1)
        assert (finished.state, finished.step) == (MemberState.PAUSED, 6)
        assert store.get_run(run).config == {"budget": 20}
        assert [(e.member_id, e.step, e.summary) for e in store.events(run) if e.kind == "reopen"] == [
            (0, 4, "retried"), (1, 6, "more")]
        store.report(run, 1, 7, 0.8)  # trains on
        with pytest.raises(NotFoundError):
            store.reopen_members("nope", [MemberState.FAILED], summary="x")

    def test_members_keep_their_recent_scores(self, store: PopulationStore, run: str) -> None:
        store.report(run, 0, 1, 0.5, earlier=[])
        member = store.report(run, 0, 3, math.inf, earlier=[ScorePoint(2, math.nan)])
        assert member.recent[0] == (1, 0.5) and member.recent[2][0] == 3
        assert math.isnan(member.recent[1][1]) and math.isnan(member.recent[2][1])  # non-finite: stored as unknown
        assert store.get_member(run, 0).recent[0] == (1, 0.5)
        many = store.report_many(run, {1: [ScorePoint(s, float(s)) for s in range(1, 40)]})
        assert many[1].recent == tuple((s, float(s)) for s in range(40 - RECENT_SCORES, 40))
        assert store.get_member(run, 1).recent == many[1].recent
        store.report(run, 2, 2, 0.1, checkpoint=_ref("r-2-2", 2))
        store.report(run, 2, 5, 0.2)
        store.set_state(run, 2, MemberState.FAILED, error="x")
        store.reopen_members(run, [MemberState.FAILED], summary="retry")  # back to step 2: forgets later scores
        assert store.get_member(run, 2).recent == ((2, 0.1),)

    def test_members_keep_their_lineage(self, store: PopulationStore, run: str) -> None:
        assert [m.lineage for m in store.list_members(run)] == [0, 1, 2]  # their own ids at first
        store.create_run("bulk", {})
        assert [m.lineage for m in store.add_members("bulk", [{}, {}])] == [0, 1]
        for i in range(3):
            store.report(run, i, 2, 0.1 * i, checkpoint=_ref(f"r-{i}-2", 2))
        carried = ExploitWrite(0, store.get_member(run, 0).version, 2, 2, {"lr": 0.3}, "copied 2 over 0",
                               explored={"lr": 0.36}, explore_summary="x", donor_lineage=2)
        updated = store.apply_exploits(run, [carried])
        assert updated is not None and updated[0].lineage == 2 == store.get_member(run, 0).lineage
        # Without a carried lineage, the donor's stored one: 1 copies 0, which is of 2's lineage now.
        one = store.apply_exploit(run, 1, expected_version=store.get_member(run, 1).version, donor_id=0,
                                  donor_step=2, hparams={"lr": 0.36}, checkpoint=None, summary="copied 0 over 1")
        assert one is not None and one.lineage == 2 == store.get_member(run, 1).lineage
        # The lineage the plan saw wins over the stored one (the donor may have exploited since).
        two = store.apply_exploits(run, [ExploitWrite(2, store.get_member(run, 2).version, 1, 2, {"lr": 1.0}, "x",
                                                      donor_lineage=7)])
        assert two is not None and two[2].lineage == 7
        # Reports, explores, state changes and reopening keep it.
        store.report(run, 0, 3, 0.9)
        store.set_hparams(run, 0, {"lr": 0.5}, expected_version=store.get_member(run, 0).version)
        store.set_state(run, 0, MemberState.FAILED, error="boom")
        store.reopen_members(run, [MemberState.FAILED], summary="retried")
        assert [m.lineage for m in store.list_members(run)] == [2, 2, 7]
