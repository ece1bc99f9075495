"""examples/compare.py: random search at equal compute really is PBT without exploit."""

from __future__ import annotations

import importlib.util
import sys

import pytest
from conftest import example_path, run_config  # noqa: E402

import pbtune

pytest.importorskip("sklearn")


def _module():
    spec = importlib.util.spec_from_file_location("compare_example", example_path("compare.py"))
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


def test_random_search_variant_has_equal_compute_and_never_exploits(tmp_path):
    compare = _module()
    config = pbtune.load_config(example_path("gbt", "gbt_small.yaml"))
    pbt = compare.variant(config, "pbt", 0, str(tmp_path))
    rs = compare.variant(config, "random", 0, str(tmp_path))
    assert (pbt.seed, rs.seed, rs.trainable_args["seed"]) == (0, 0, 0)
    assert rs.population == pbt.population and rs.budget == pbt.budget and rs.space.to_config() == pbt.space.to_config()
    assert rs.ready.interval > rs.budget and rs.effective_checkpoint_interval == pbt.effective_checkpoint_interval
    assert pbt.storage != rs.storage and pbt.name != rs.name

    out_rs, out_pbt = run_config(rs), run_config(pbt)
    assert not out_rs.events("exploit") and out_pbt.events("exploit")
    steps = lambda out: len(out.store.scores(out.config.name))  # noqa: E731
    assert steps(out_rs) == steps(out_pbt) == config.population * config.budget
    # same seed, same initial draws: both start from the same population
    first = lambda out: {m: e.new_hparams for e in out.events("init") for m in [e.member_id]}  # noqa: E731
    assert first(out_rs) == first(out_pbt)


def test_baseline_summary_and_table():
    compare = _module()
    config = pbtune.load_config(example_path("gbt", "gbt_small.yaml"), budget=3)
    cell = compare.run_baseline(config, config.trainable_args["baseline"], seed=0)
    assert cell["steps"] == 3 and 0 < cell["score"] < 1 and 0.5 < cell["test_accuracy"] <= 1
    summary = compare.summarize([{"score": 1.0, "wall_s": 1.0, "steps": 4, "seed": 0},
                                 {"score": 3.0, "wall_s": 2.0, "steps": 4, "seed": 1}])
    assert summary["score"] == {"mean": 2.0, "std": pytest.approx(2 ** 0.5), "min": 1.0, "max": 3.0}
    assert "seed" not in summary and summary["seeds"] == 2
    text = compare.table({"summary": {"pbt": summary}})
    assert text.splitlines()[2].startswith("| pbt | 2 | 2 ± 1.4 [1, 3] |")
