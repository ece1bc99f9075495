"""The random-forest / extra-trees example: trees grow across steps, depth is tuned, JSON checkpoints replay."""

from __future__ import annotations

import importlib.util
import sys

import numpy as np
import pytest

pytest.importorskip("sklearn")

from conftest import example_path  # noqa: E402

import pbtune  # noqa: E402


def _module():
    spec = importlib.util.spec_from_file_location("forest_pbt_example", example_path("forest", "forest_pbt.py"))
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


def test_small_config_improves_over_initial_population(run_small):
    out = run_small("forest", "forest_small.yaml")
    assert out.config.mode == "min"
    assert out.better(out.best_final, out.best_initial)
    assert out.events("exploit")
    # the number of trees grew: every member ends with at least budget x 1 trees
    last = {}
    for record in out.store.scores(out.config.name):
        last[record.member_id] = record.metrics["trees"]
    assert all(trees >= out.config.budget for trees in last.values())


@pytest.mark.parametrize("model", ["random_forest", "extra_trees"])
def test_trees_grow_with_the_depth_of_their_step_and_checkpoints_replay(tmp_path, model):
    forest = _module()
    a = forest.Forest(data="breast_cancer", model=model, seed=3)
    a.setup({"max_depth": 2, "max_features": 0.5, "trees_per_step": 4})
    a.step(), a.step()
    a.set_hparams({"max_depth": 6, "max_features": 0.5, "trees_per_step": 3})
    metrics = a.step()
    assert metrics["trees"] == 11 and len(a.model.estimators_) == 11
    depths = [tree.get_depth() for tree in a.model.estimators_]
    assert max(depths[:8]) <= 2 and max(depths[8:]) > 2  # old trees kept, new ones deeper
    a.save(str(tmp_path / "c.json"))
    b = forest.Forest(data="breast_cancer", model=model, seed=3)
    b.setup({"max_depth": 16})
    b.load(str(tmp_path / "c.json"))
    np.testing.assert_allclose(b.model.predict_proba(a.x_val), a.model.predict_proba(a.x_val))
    b.set_hparams(a.hparams)
    assert b.step() == a.step()
    assert set(a.evaluate()) == {"test_log_loss", "test_accuracy"}


def test_clipped_log_loss_and_bad_model():
    forest = _module()
    proba = np.array([[1.0, 0.0], [0.5, 0.5]])
    loss = forest.clipped_log_loss(np.array([1, 0]), proba, np.array([0, 1]))
    assert loss == pytest.approx((-np.log(1e-3) - np.log(0.5)) / 2)
    with pytest.raises(pbtune.InvalidConfigError, match="`model` of `trainable_args` must be one of"):
        forest.Forest(model="boosted").setup({})
