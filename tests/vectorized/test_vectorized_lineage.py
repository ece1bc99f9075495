"""The vectorized engine keeps each member's lineage in memory, in the store and in its
population checkpoint, and the lineage-share guard holds in its lockstep rounds."""

from __future__ import annotations

from collections import Counter

import pytest

torch = pytest.importorskip("torch", reason="the vectorized engine needs PyTorch (pip install 'pbtune[torch]')")
from vectorized_helpers import blobs, mlp  # noqa: E402

import pbtune.vectorized as pv  # noqa: E402
from pbtune import Float  # noqa: E402

SPACE = {"lr": Float(0.001, 1.0, log=True), "momentum": Float(0.0, 0.95)}


def _settings(tmp_path, name, share):
    x, y = blobs(96)
    xv, yv = blobs(60, seed=1)
    return dict(population=8, data=(x, y), eval_data=(xv, yv), batch_size=16, steps=12, ready={"interval": 1},
                exploit={"name": "truncation", "quantile": 0.5, "max_lineage_share": share}, seed=3, name=name,
                checkpoint_interval=3, storage=f"sqlite:///{tmp_path}/pbt.db", checkpoints=str(tmp_path / "ck"))


def _lineages(store, run):
    return [m.lineage for m in store.list_members(run)]


def test_no_lineage_outgrows_its_share_and_the_store_follows_the_exploits(tmp_path):
    run = pv.VectorizedPBT(mlp, SPACE, **_settings(tmp_path, "guarded", 0.25))
    run.run()
    lineages = _lineages(run.store, "guarded")
    assert max(Counter(lineages).values()) <= 2 and len(set(lineages)) >= 4  # cap: ceil(0.25 * 8) = 2
    assert run.state is not None and run.state.lineages == lineages
    # the store's column is what the exploit events lead to, replayed in order
    expected = list(range(8))
    exploits = [e for e in run.store.events("guarded") if e.kind == "exploit"]
    assert exploits
    for e in exploits:
        expected[e.member_id] = expected[e.donor_id]
    assert lineages == expected


def test_lineages_resume_from_the_population_checkpoint(tmp_path):
    reference = pv.VectorizedPBT(mlp, SPACE, **_settings(tmp_path, "ref", 0.25))
    reference.run()
    split = pv.VectorizedPBT(mlp, SPACE, **_settings(tmp_path, "split", 0.25))
    split.run(until=5)
    saved = pv.load_checkpoint(split.checkpoint_path)["engine"]
    assert saved["step"] == 5 and saved["lineages"] == _lineages(split.store, "split")
    resumed = pv.VectorizedPBT(mlp, SPACE, **_settings(tmp_path, "split", 0.25))
    resumed.run()
    assert _lineages(reference.store, "ref") == _lineages(resumed.store, "split")

    def exploits(run):
        return [(e.member_id, e.step, e.donor_id) for e in reference.store.events(run) if e.kind == "exploit"]

    assert exploits("split") == exploits("ref") and exploits("ref")


def test_resume_takes_the_lineages_of_the_weights_from_the_population_checkpoint(tmp_path):
    from pbtune.vectorized.population import atomic_save

    first = pv.VectorizedPBT(mlp, SPACE, **_settings(tmp_path, "file", 0.25))
    first.run(until=2)
    payload = pv.load_checkpoint(first.checkpoint_path)
    payload["engine"]["lineages"] = [5] * 8  # as if the store had recorded a round the file has not
    atomic_save(payload, first.checkpoint_path)
    again = pv.VectorizedPBT(mlp, SPACE, **_settings(tmp_path, "file", 0.25))
    again.run(until=2)  # resumes at step 2: nothing to train
    assert again.state is not None and again.state.lineages == [5] * 8
    del payload["engine"]["lineages"]  # a file written before lineages were kept: the store's
    atomic_save(payload, first.checkpoint_path)
    older = pv.VectorizedPBT(mlp, SPACE, **_settings(tmp_path, "file", 0.25))
    older.run(until=2)
    assert older.state is not None and older.state.lineages == _lineages(first.store, "file")
