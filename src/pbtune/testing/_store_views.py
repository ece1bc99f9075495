"""Conformance of a store's population view: the same answers as the in-memory ranking."""

from __future__ import annotations

import math
import random

import pytest

from pbtune.store.base import PopulationStore
from pbtune.strategies._view import ListView
from pbtune.testing._store_rounds import ref as _ref
from pbtune.types import MemberState

__all__ = ["ViewConformance"]

_ODD = [math.nan, math.inf, -math.inf, None]  # None: never reported


class ViewConformance:
    """``population_view`` must answer exactly as :class:`ListView` over ``list_members``."""

    def _population(self, store: PopulationStore, seed: int) -> str:
        rng = random.Random(seed)
        run = f"view{seed}"
        store.create_run(run, {})
        size = rng.randint(1, 14)
        for member_id in range(size):
            store.add_member(run, member_id, {"lr": rng.random()})
            roll = rng.random()
            score = rng.choice(_ODD) if roll < 0.3 else float(rng.randint(-3, 3))  # small ints: many ties
            if score is not None:
                ckpt = _ref(f"{run}/m{member_id}", 1) if rng.random() < 0.7 else None
                store.report(run, member_id, 1, score, checkpoint=ckpt)
            if member_id and rng.random() < 0.5:  # joins an earlier member's lineage (chains form)
                donor = rng.randrange(member_id)
                done = store.apply_exploit(run, member_id, expected_version=store.get_member(run, member_id).version,
                                           donor_id=donor, donor_step=1, hparams={"lr": 0.5}, checkpoint=None,
                                           summary=f"copied {donor}")
                assert done is not None
            if rng.random() < 0.15:
                store.set_state(run, member_id, MemberState.FAILED, error="boom")
        return run

    @pytest.mark.parametrize("seed", range(8))
    def test_population_view_matches_the_in_memory_ranking(self, store: PopulationStore, seed: int) -> None:
        run = self._population(store, seed)
        alive = [m for m in store.list_members(run) if m.state is not MemberState.FAILED]
        for mode in ("max", "min"):
            expected = ListView(alive, mode)
            for member in alive:  # each member as the deciding one, known or read
                for known in ((member,), ()):
                    view = store.population_view(run, mode, known=known)
                    assert view.position(member.member_id) == expected.position(member.member_id), (mode, member)
                    assert view.scored_count() == expected.scored_count()
                    assert view.member(member.member_id) == member
            view = store.population_view(run, mode)
            assert view.scored_count() == expected.scored_count()
            assert view.ids() == expected.ids()
            assert view.lineage_sizes() == expected.lineage_sizes()
            assert sum(view.lineage_sizes().values()) == len(alive)
            for k in range(len(alive) + 2):
                assert view.top(k) == expected.top(k), (mode, k)

    def test_population_view_leaves_out_failed_members(self, store: PopulationStore) -> None:
        store.create_run("v", {})
        for member_id, score in enumerate([1.0, 5.0, 2.0]):
            store.add_member("v", member_id, {})
            store.report("v", member_id, 1, score)
        store.set_state("v", 1, MemberState.FAILED, error="boom")
        view = store.population_view("v", "max")
        assert view.ids() == [0, 2] and view.scored_count() == 2
        assert view.lineage_sizes() == {0: 1, 2: 1}
        assert [m.member_id for m in view.top(5)] == [2, 0]
        with pytest.raises(KeyError):
            view.member(1)
