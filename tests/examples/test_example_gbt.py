"""The gradient-boosted trees example."""

from __future__ import annotations

import importlib.util
import sys

import numpy as np
import pytest

pytest.importorskip("sklearn")

from conftest import example_path  # noqa: E402


def _module():
    spec = importlib.util.spec_from_file_location("gbt_pbt_example", example_path("gbt", "gbt_pbt.py"))
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


def test_small_config_improves_over_initial_population(run_small):
    out = run_small("gbt", "gbt_small.yaml")
    assert out.config.mode == "min"
    assert out.better(out.best_final, out.best_initial)
    assert out.events("exploit")


def test_checkpoint_replays_the_same_ensemble(tmp_path):
    gbt = _module()
    a = gbt.BoostedTrees(data="breast_cancer")
    a.setup({"learning_rate": 0.3, "max_depth": 2, "trees_per_step": 4})
    a.step(), a.step()
    a.set_hparams({"learning_rate": 0.05, "max_depth": 4, "trees_per_step": 3})
    a.step()
    a.save(str(tmp_path / "c.json"))
    b = gbt.BoostedTrees(data="breast_cancer")
    b.setup({"learning_rate": 0.9})
    b.load(str(tmp_path / "c.json"))
    assert b.model.n_iter_ == a.model.n_iter_ == 11
    np.testing.assert_allclose(b.model.predict_proba(a.x_val), a.model.predict_proba(a.x_val))
    b.set_hparams(a.hparams)
    assert b.step() == a.step()
