"""Parity: one population snapshot through the Member path and through the vectorized path
gives the same decisions, hyperparameters, lineage events and store writes (ready checks of
members that continue included)."""

from __future__ import annotations

import pytest

torch = pytest.importorskip("torch", reason="the vectorized engine needs PyTorch (pip install 'pbtune[torch]')")
from vectorized_helpers import blobs, mlp  # noqa: E402

from pbtune import Float  # noqa: E402
from pbtune.checkpoints import CheckpointStore  # noqa: E402
from pbtune.member import Population  # noqa: E402
from pbtune.round import ExploitPlan, plan_round, ready_members  # noqa: E402
from pbtune.store import open_store  # noqa: E402
from pbtune.store.base import ScorePoint  # noqa: E402
from pbtune.vectorized import loop, persistence  # noqa: E402
from pbtune.vectorized.settings import make_settings  # noqa: E402

SPACE = {"lr": Float(0.001, 1.0, log=True), "momentum": Float(0.0, 0.95)}
SCORES = [0.31, 0.12, 0.77, 0.05, 0.64, 0.5, 0.93, 0.2]  # losses: members 6 and 2 are the bottom quarter


def _settings(tmp_path, folder: str, **overrides):
    x, y = blobs(48)
    settings = dict(population=len(SCORES), data=(x, y), steps=20, ready={"interval": 4}, seed=5,
                    exploit={"name": "truncation", "quantile": 0.25}, name="parity",
                    storage=f"sqlite:///{tmp_path}/{folder}/pbt.db", checkpoints=f"{tmp_path}/{folder}/ck",
                    checkpoint=False)
    settings.update(overrides)
    return make_settings(mlp, SPACE, **settings)


def _lineage(store):
    return [(e.member_id, e.step, e.kind, e.donor_id, e.donor_step, e.old_hparams, e.new_hparams, e.summary)
            for e in store.events("parity")]


def _members(store):
    return [(m.member_id, m.step, dict(m.hparams), m.last_ready_step, m.version, m.lineage)
            for m in store.list_members("parity")]


def _earlier_exploits(store, copies):
    """Exploits of an earlier round (before any training here), the same in both stores."""
    for member_id, donor_id in copies:
        donor = store.get_member("parity", donor_id)
        done = store.apply_exploit("parity", member_id, expected_version=store.get_member("parity", member_id).version,
                                   donor_id=donor_id, donor_step=0, hparams=dict(donor.hparams), checkpoint=None,
                                   summary=f"copied {donor_id}")
        assert done is not None


# (exploit options, earlier copies (member, donor), the members that exploit and their donors)
CASES = {
    "copy_hparams": ({"copy_hparams": True}, [], None),
    "weights_only": ({"copy_hparams": False}, [], None),
    # 3's lineage holds 0, 3 and 5: over the 0.25 share (2 of 8); member 2 copies 1, which fills
    # 1's lineage, so member 6, deciding after it in the same round, falls back to 7, the best
    # member above the bottom tail whose lineage has room.
    "lineage_share": ({"max_lineage_share": 0.25}, [(0, 3), (5, 3)], {2: 1, 6: 7}),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_member_and_vectorized_paths_make_the_same_round(tmp_path, case):
    options, copies, expected = CASES[case]
    exploit = {"name": "truncation", "quantile": 0.25, **options}
    step = 4

    # The Member path: every member saves a checkpoint at step 4, then each asks in turn.
    settings_a = _settings(tmp_path, "a", exploit=exploit)
    population = Population(settings_a.config)
    _earlier_exploits(population.store, copies)
    members = [population.member(i) for i in range(len(SCORES))]
    for member, score in zip(members, SCORES, strict=True):
        path = tmp_path / f"w{member.member_id}.bin"
        path.write_bytes(bytes([member.member_id]) * 16)
        member.save(str(path), score, step=step)
    snapshot_a = population.members()
    plans_a = plan_round(settings_a.config, snapshot_a, ready_members(settings_a.config, snapshot_a))
    for member in members:
        if member.should_exploit():
            donor = member.exploit()
            assert donor is not None
            member.explore()
            with open(member.parameters_path() or "", "rb") as handle:  # the donor's bytes were copied
                assert handle.read() == bytes([donor.member_id]) * 16

    # The vectorized path: the same scores reported by the engine, then one round in memory.
    settings_b = _settings(tmp_path, "b", exploit=exploit)
    handle = Population(settings_b.config)
    _earlier_exploits(handle.store, copies)
    records = {m.member_id: m for m in handle.store.list_members("parity")}
    state = loop.start(settings_b, handle.store, CheckpointStore(settings_b.config.checkpoints), records)
    state.step = step
    state.scores = list(SCORES)
    persistence.flush(state, [[ScorePoint(step, s)] for s in SCORES], final=False)
    before = {i: state.population.member_state_dict(i) for i in range(len(SCORES))}
    snapshot_b = persistence.snapshot(state)
    ready = ready_members(settings_b.config, snapshot_b)
    plans_b = plan_round(settings_b.config, snapshot_b, ready)
    loop.exploit_round(state, snapshot_b, ready)

    def decisions(plans):
        return {m: (p.donor_id, dict(p.taken), dict(p.explored), p.exploit_summary, p.explore_summary)
                if isinstance(p, ExploitPlan) else ("continue", p.step, p.reason) for m, p in plans.items()}

    assert decisions(plans_a) == decisions(plans_b)
    exploited = {m: p.donor_id for m, p in plans_a.items() if isinstance(p, ExploitPlan)}
    assert len(ready) == len(SCORES)
    assert exploited == (expected or {2: exploited[2], 6: exploited[6]})  # mode min: 6 and 2 are the bottom
    lineages = {m.member_id: m.lineage for m in handle.store.list_members("parity")}
    assert lineages == {m.member_id: m.lineage for m in population.store.list_members("parity")}
    assert state.lineages == [lineages[i] for i in range(len(SCORES))]  # the engine's memory follows the store
    for member_id, donor_id in exploited.items():
        assert lineages[member_id] == persistence.snapshot(state)[donor_id].lineage
    assert _lineage(population.store) == _lineage(handle.store)
    assert _members(population.store) == _members(handle.store)  # hparams, ready checks, versions
    assert all(m.last_ready_step == step for m in handle.store.list_members("parity"))
    for member_id, donor_id in exploited.items():  # the rows were copied, the others left alone
        after = state.population.member_state_dict(member_id)
        assert all(torch.equal(after[k], before[donor_id][k]) for k in after)
        assert state.population.hparams[member_id] == plans_b[member_id].explored  # type: ignore[union-attr]
    untouched = next(i for i in range(len(SCORES)) if i not in exploited)
    assert all(torch.equal(state.population.member_state_dict(untouched)[k], v) for k, v in before[untouched].items())


def test_the_vectorized_engine_takes_the_core_s_ranking_init_and_pb2(tmp_path):
    pytest.importorskip("sklearn")
    import pbtune.vectorized as pv

    x, y = blobs(96)
    xv, yv = blobs(60, seed=1)
    result = pv.train(mlp, {"lr": Float(0.001, 1.0, log=True)}, population=6, data=(x, y), eval_data=(xv, yv),
                      steps=6, ready={"interval": 2}, ranking={"window": 2}, init="grid", explore="pb2", name="core",
                      storage=f"sqlite:///{tmp_path}/p.db", checkpoints=f"{tmp_path}/ck")
    store = open_store(f"sqlite:///{tmp_path}/p.db")
    stored = store.get_run("core").config
    assert stored["ranking"] == {"window": 2} and stored["explore"]["name"] == "pb2"
    assert result.best_smoothed_score == pytest.approx(result.ranking.score(result.best))
    explores = [e.summary for e in store.events("core") if e.kind == "explore"]
    assert explores and all("pb2" in s for s in explores)
    first = [e.new_hparams["lr"] for e in store.events("core") if e.kind == "init"]
    assert min(first) == pytest.approx(0.001) and max(first) == pytest.approx(1.0)  # init: grid spans the space
