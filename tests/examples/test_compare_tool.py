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


def test_grid_levels_fill_the_population_and_respect_small_domains():
    compare = _module()
    five = pbtune.Space({"a": pbtune.Float(0, 1), "b": pbtune.Float(1e-3, 1, log=True), "c": pbtune.Int(1, 8),
                         "d": pbtune.Choice([16, 32, 64]), "e": pbtune.Float(0, 1)})
    assert compare.grid_levels(five, 8) == {"a": 2, "b": 2, "c": 2, "d": 1, "e": 1}
    two = pbtune.Space({"x": pbtune.Float(0, 1), "y": pbtune.Float(0, 1)})
    assert compare.grid_levels(two, 8) == {"x": 4, "y": 2}
    tiny = pbtune.Space({"flag": pbtune.Choice([True, False]), "k": pbtune.Int(1, 2), "x": pbtune.Float(0, 1)})
    assert compare.grid_levels(tiny, 16) == {"flag": 2, "k": 2, "x": 4}


def test_grid_points_are_a_grid_inside_the_space():
    compare = _module()
    space = pbtune.Space({"lr": pbtune.Float(1e-4, 1e-2, log=True), "depth": pbtune.Int(1, 8),
                          "batch": pbtune.Choice([16, 32, 64, 128]), "p": pbtune.Float(0.0, 0.5)})
    points = compare.grid_points(space, 8)
    assert len(points) == 8 and len({tuple(p.items()) for p in points}) == 8
    for point in points:
        space.validate(point)
        assert isinstance(point["depth"], int)
    assert sorted({p["lr"] for p in points}) == pytest.approx([10 ** -3.5, 10 ** -2.5])  # log-space centres
    assert {p["depth"] for p in points} == {3, 7} and {p["batch"] for p in points} == {32, 128}
    assert {p["p"] for p in points} == {0.25}  # one level: the centre
    repeated = compare.grid_points(pbtune.Space({"x": pbtune.Float(0, 1), "y": pbtune.Float(0, 1),
                                                 "z": pbtune.Float(0, 1)}), 5)
    assert repeated[4] == repeated[0] and len({tuple(p.items()) for p in repeated[:4]}) == 4


def test_grid_search_runs_the_grid_at_equal_compute(tmp_path):
    compare = _module()
    config = pbtune.load_config(example_path("gbt", "gbt_small.yaml"), budget=4)
    grid = compare.variant(config, "grid", 0, str(tmp_path))
    assert grid.ready.interval > grid.budget and grid.name != config.name
    points = compare.grid_points(config.space, config.population)
    out = run_config(grid, initial=points)
    assert not out.events("exploit")
    assert len(out.store.scores(grid.name)) == config.population * config.budget
    started = {e.member_id: e.new_hparams for e in out.events("init")}
    assert [started[i] for i in range(config.population)] == points
    final = {m.member_id: dict(m.hparams) for m in out.store.list_members(grid.name)}
    assert [final[i] for i in range(config.population)] == points  # nothing moved


def test_paired_differences_are_signed_so_positive_means_pbt_better():
    compare = _module()
    runs = {"pbt": [{"seed": 0, "score": 0.1, "test_accuracy": 0.9, "test_log_loss": 0.2},
                    {"seed": 1, "score": 0.3, "test_accuracy": 0.8, "test_log_loss": 0.4}],
            "random": [{"seed": 0, "score": 0.3, "test_accuracy": 0.9, "test_log_loss": 0.1},
                       {"seed": 1, "score": 0.4, "test_accuracy": 0.7, "test_log_loss": 0.3}]}
    score = compare.paired(runs, "min")["random"]  # lower is better: PBT 0.1 beats 0.3, 0.3 beats 0.4
    assert score["mean"] == pytest.approx(0.15) and (score["wins"], score["ties"], score["losses"]) == (2, 0, 0)
    assert score["sem"] == pytest.approx(0.05)
    accuracy = compare.paired(runs, "min", "test_accuracy")["random"]  # accuracy: higher is better
    assert accuracy["mean"] == pytest.approx(0.05) and (accuracy["wins"], accuracy["ties"]) == (1, 1)
    assert compare.paired(runs, "min", "test_log_loss")["random"]["losses"] == 2
    assert compare.paired(runs, "max")["random"]["losses"] == 2
    text = compare.paired_table({"paired": {"score": compare.paired(runs, "min")}})
    assert "| random | score | +0.15 ± 0.05 | 2 / 0 / 0 (of 2) |" in text
