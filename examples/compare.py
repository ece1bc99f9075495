"""PBT against random search, grid search and a hand-picked baseline at equal compute, over seeds.

    python examples/compare.py examples/gbt/gbt.yaml --seeds 0 1 2

For each seed it runs the config up to four ways and prints one table (mean and spread over seeds):

* ``pbt``: the config as written.
* ``random``: the same population, space, seed and budget with exploit disabled (the ready
  interval is set past the budget), so every member keeps its randomly drawn hyperparameters:
  random search with exactly the same number of training steps (population x budget).
* ``grid``: the same population size and budget, exploit disabled as for ``random``, but the
  members start from the points of a grid over the space (see :func:`grid_points`) instead
  of random draws: grid search at equal compute.
* ``baseline``: one model with the fixed hyperparameters in ``trainable_args.baseline``
  (skipped when the config has none), trained for ``budget`` steps in this process.

The score is the config's ``metric`` of the best member at the end (as ``pbtune best`` shows
it). Steps are equal across pbt, random and grid; when a trainable's steps differ in cost (the
translation example tunes epochs per step) it reports ``work`` per step, and the column ``work``
is the run's total. If the trainable defines ``evaluate() -> dict`` (e.g. test accuracy), it is computed for
that best member too. The last line printed is one JSON object of all figures.
"""

from __future__ import annotations

import argparse
import itertools
import json
import math
import os
import shutil
import statistics
import sys
import tempfile
import time
from collections.abc import Mapping, Sequence
from typing import Any

import pbtune
from pbtune.engine.worker import load_trainable

METHODS = ("pbt", "random", "grid", "baseline")


def grid_levels(space: pbtune.Space, population: int) -> dict[str, int]:
    """How many values each hyperparameter gets so that the grid has at most ``population`` points.

    Levels are handed out one at a time, to the hyperparameter with the fewest so far (ties: the
    first in the space), while the product stays <= population; a hyperparameter never gets more
    levels than it has distinct values. Population 8 over 5 hyperparameters gives 2 x 2 x 2 x 1 x 1:
    a full grid cannot cover every dimension at that compute, which is the point of the comparison.
    """
    limits = {name: _distinct(domain) for name, domain in space.items()}
    levels = dict.fromkeys(space, 1)
    while True:
        for name in sorted(space, key=lambda n: levels[n]):  # stable: ties keep space order
            grown = math.prod(levels.values()) // levels[name] * (levels[name] + 1)
            if levels[name] < limits[name] and grown <= population:
                levels[name] += 1
                break
        else:
            return levels


def _distinct(domain: Any) -> int:
    if isinstance(domain, pbtune.Choice):
        return len(domain.values)
    if isinstance(domain, pbtune.Int):
        return int(domain.high) - int(domain.low) + 1
    return 1 << 30


def _axis(domain: Any, k: int) -> list[Any]:
    """``k`` values spread over a domain: centres of ``k`` equal cells (in log space for log domains)."""
    if isinstance(domain, pbtune.Choice):
        n = len(domain.values)
        return [domain.values[min(n - 1, int((i + 0.5) * n / k))] for i in range(k)]
    fractions = [(i + 0.5) / k for i in range(k)]
    if domain.log:
        low, high = math.log(domain.low), math.log(domain.high + (1 if isinstance(domain, pbtune.Int) else 0))
        values = [math.exp(low + f * (high - low)) for f in fractions]
    else:
        high = domain.high + (1 if isinstance(domain, pbtune.Int) else 0)
        values = [domain.low + f * (high - domain.low) for f in fractions]
    return [domain.clip(math.floor(v)) if isinstance(domain, pbtune.Int) else float(v) for v in values]


def grid_points(space: pbtune.Space, population: int) -> list[dict[str, Any]]:
    """``population`` starting points: the grid of :func:`grid_levels`, repeated if it is smaller.

    A hyperparameter with one level sits at the centre of its range (geometric centre for log
    domains). When the grid has fewer points than members (e.g. population 5 over 3
    hyperparameters: 2 x 2 x 1), the grid is repeated from its first point; those repeats
    are independently trained models with the same settings.

    Example::

        grid_points(pbtune.Space({"lr": pbtune.Float(1e-4, 1e-2, log=True), "batch": [16, 64]}), 4)
        # [{'lr': 0.000316.., 'batch': 16}, {'lr': 0.000316.., 'batch': 64}, {'lr': 0.00316.., ...}, ...]
    """
    levels = grid_levels(space, population)
    axes = [_axis(space[name], levels[name]) for name in space]
    grid = [dict(zip(space, values, strict=True)) for values in itertools.product(*axes)]
    return [dict(grid[i % len(grid)]) for i in range(population)]


def variant(config: pbtune.RunConfig, method: str, seed: int, root: str) -> pbtune.RunConfig:
    """The run config of one (method, seed) cell, with its own store and checkpoint folder."""
    data = config.to_dict()
    data["name"] = f"{config.name}-{method}-s{seed}"
    data["seed"] = seed
    data["trainable_args"] = {**data["trainable_args"], "seed": seed}
    data["storage"] = f"sqlite:///{os.path.join(root, data['name'], 'pbtune.db')}"
    data["checkpoints"] = os.path.join(root, data["name"], "checkpoints")
    if method in ("random", "grid"):
        # Never ready, so never exploits; checkpoints keep PBT's cadence for equal overhead.
        data["checkpoint_interval"] = config.effective_checkpoint_interval
        data["ready"] = {"interval": config.budget + 1, "burn_in": 0}
    return pbtune.RunConfig.from_dict(data)


def _extra_metrics(trainable: pbtune.Trainable) -> dict[str, float]:
    evaluate = getattr(trainable, "evaluate", None)
    if not callable(evaluate):
        return {}
    return {str(k): float(v) for k, v in evaluate().items()}


def run_population(config: pbtune.RunConfig, workers: int | None,
                   initial: Sequence[Mapping[str, Any]] = ()) -> dict[str, Any]:
    """Run one population (members 0, 1, ... starting from ``initial`` if given) and describe its best member."""
    if workers:
        config = pbtune.RunConfig.from_dict({**config.to_dict(), "workers": workers})
    start = time.monotonic()
    result = pbtune.run(config=config, progress=False, initial=initial)
    wall = time.monotonic() - start
    store = pbtune.open_store(config.storage)
    first = {}
    work: list[float] = []
    for record in store.scores(config.name):
        first.setdefault(record.member_id, record.score)
        if "work" in record.metrics:
            work.append(float(record.metrics["work"]))
    initial = sorted(first.values(), reverse=config.mode == "max")
    extra: dict[str, float] = {}
    if result.checkpoint_path:
        cls = load_trainable(str(config.trainable))
        trainable = cls(**config.trainable_args)
        trainable.setup(result.best.hparams)
        trainable.load(result.checkpoint_path)
        extra = _extra_metrics(trainable)
    finals = [m.score for m in result.members if m.score is not None and math.isfinite(m.score)]
    return {
        "score": float(result.best.score or float("nan")),
        "population_mean": statistics.fmean(finals) if finals else float("nan"),
        "initial_best": initial[0] if initial else float("nan"),
        "best_hparams": dict(result.best.hparams),
        "steps": config.population * config.budget,
        "wall_s": wall,
        **({"work": sum(work)} if work else {}),
        **extra,
    }


def run_baseline(config: pbtune.RunConfig, hparams: Mapping[str, Any], seed: int) -> dict[str, Any]:
    """One model with fixed hyperparameters for ``budget`` steps, in this process."""
    cls = load_trainable(str(config.trainable))
    start = time.monotonic()
    trainable = cls(**{**config.trainable_args, "seed": seed})
    trainable.setup(dict(hparams))
    metrics: Mapping[str, float] = {}
    work = 0.0
    for _ in range(config.budget):
        metrics = trainable.step()
        work += float(metrics.get("work", 0.0))
    return {"score": float(metrics[config.metric]), "best_hparams": dict(hparams), "steps": config.budget,
            "wall_s": time.monotonic() - start, **({"work": work} if "work" in metrics else {}),
            **_extra_metrics(trainable)}


def summarize(cells: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """Mean, standard deviation (n-1), min and max of every numeric figure over seeds."""
    out: dict[str, Any] = {"seeds": len(cells)}
    keys = [k for k, v in cells[0].items()
            if isinstance(v, (int, float)) and not isinstance(v, bool) and k != "seed"]
    for key in keys:
        values = [float(c[key]) for c in cells]
        out[key] = {"mean": statistics.fmean(values), "std": statistics.stdev(values) if len(values) > 1 else 0.0,
                    "min": min(values), "max": max(values)}
    return out


def paired(runs: Mapping[str, Sequence[Mapping[str, Any]]], mode: str, key: str = "score",
           reference: str = "pbt") -> dict[str, dict[str, float]]:
    """Per-seed differences ``reference - method`` of ``key``, signed so that positive means
    "reference better": ``score`` follows ``mode``; other figures are minimised when their name
    says loss or FID (``test_log_loss``, ``test_fid``) and maximised otherwise.

    Returns ``{method: {"mean", "sem", "wins", "ties", "losses", "seeds"}}`` over the seeds both ran.
    """
    lower_better = mode == "min" if key == "score" else ("loss" in key or "fid" in key)
    sign = -1.0 if lower_better else 1.0
    ref = {c["seed"]: float(c[key]) for c in runs.get(reference, []) if key in c}
    out: dict[str, dict[str, float]] = {}
    for method, cells in runs.items():
        if method == reference:
            continue
        diffs = [sign * (ref[c["seed"]] - float(c[key])) for c in cells if c["seed"] in ref and key in c]
        if not diffs:
            continue
        sem = statistics.stdev(diffs) / math.sqrt(len(diffs)) if len(diffs) > 1 else float("nan")
        out[method] = {"mean": statistics.fmean(diffs), "sem": sem, "seeds": len(diffs),
                       "wins": sum(d > 0 for d in diffs), "ties": sum(d == 0 for d in diffs),
                       "losses": sum(d < 0 for d in diffs)}
    return out


def compare(config: pbtune.RunConfig, seeds: Sequence[int], methods: Sequence[str] = METHODS,
            workers: int | None = None, root: str | None = None) -> dict[str, Any]:
    """Run every (method, seed) cell; return ``{"runs": {method: [cells]}, "summary": {method: ...}}``.

    Example::

        figures = compare(pbtune.load_config("examples/gbt/gbt_small.yaml"), seeds=[0, 1, 2])
        figures["summary"]["pbt"]["score"]["mean"]
    """
    baseline = config.trainable_args.get("baseline")
    methods = [m for m in methods if m != "baseline" or isinstance(baseline, Mapping)]
    own_root = root is None
    folder = root or tempfile.mkdtemp(prefix="pbtune-compare-")
    runs: dict[str, list[dict[str, Any]]] = {m: [] for m in methods}
    try:
        for seed in seeds:
            for method in methods:
                if method == "baseline":
                    cell = run_baseline(config, baseline, seed)  # type: ignore[arg-type]
                else:
                    initial = grid_points(config.space, config.population) if method == "grid" else ()
                    cell = run_population(variant(config, method, seed, folder), workers, initial)
                cell["seed"] = seed
                runs[method].append(cell)
                print(f"  {method:<8} seed {seed}: {config.metric} {cell['score']:.5g}  ({cell['wall_s']:.1f} s)",
                      file=sys.stderr, flush=True)
    finally:
        if own_root:
            shutil.rmtree(folder, ignore_errors=True)
    return {"config": config.name, "metric": config.metric, "mode": config.mode,
            "population": config.population, "budget": config.budget,
            "runs": runs, "summary": {m: summarize(cells) for m, cells in runs.items() if cells},
            "paired": {key: paired(runs, config.mode, key) for key in _paired_keys(runs)}}


def _paired_keys(runs: Mapping[str, Sequence[Mapping[str, Any]]]) -> list[str]:
    """The score and every test figure (``test_*``) that PBT's cells carry."""
    cells = runs.get("pbt") or []
    return [k for k in (cells[0] if cells else {}) if k == "score" or k.startswith("test_")]


def paired_table(figures: Mapping[str, Any]) -> str:
    """PBT minus each other method, per seed: mean ± standard error, and wins/ties/losses
    (signed as in :func:`paired`: positive means PBT better)."""
    lines = ["| PBT minus | figure | mean ± s.e. (positive: PBT better) | PBT wins / ties / losses |",
             "|---|---|---|---|"]
    for key, rows in figures.get("paired", {}).items():
        for method, d in rows.items():
            lines.append(f"| {method} | {key} | {d['mean']:+.4g} ± {d['sem']:.2g} | "
                         f"{d['wins']} / {d['ties']} / {d['losses']} (of {d['seeds']}) |")
    return "\n".join(lines)


def table(figures: Mapping[str, Any]) -> str:
    """A Markdown table: one row per method, mean ± std [min, max] of each figure."""
    summary = figures["summary"]
    keys: list[str] = []
    for stats in summary.values():
        keys += [k for k in stats if k not in keys and k not in ("seeds", "seed", "steps", "wall_s")]
    header = ["method", "seeds", *keys, "steps", "wall s (mean)"]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for method, stats in summary.items():
        cells = [method, str(stats["seeds"])]
        for key in keys:
            s = stats.get(key)
            cells.append("-" if s is None else f"{s['mean']:.4g} ± {s['std']:.2g} [{s['min']:.4g}, {s['max']:.4g}]")
        cells += [f"{stats['steps']['mean']:.0f}", f"{stats['wall_s']['mean']:.1f}"]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("config")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--methods", default=",".join(METHODS), help="comma-separated subset of " + ",".join(METHODS))
    parser.add_argument("--workers", type=int, help="override the config's worker processes")
    parser.add_argument("--root", help="keep the runs' stores and checkpoints in this folder")
    parser.add_argument("--out", help="also write the figures to this JSON file")
    args = parser.parse_args(argv)
    methods = [m.strip() for m in args.methods.split(",") if m.strip()]
    for m in methods:
        if m not in METHODS:
            parser.error(f"--methods: {m!r} is not one of {', '.join(METHODS)}")
    config = pbtune.load_config(args.config)
    start = time.monotonic()
    figures = compare(config, args.seeds, methods, args.workers, args.root)
    figures["wall_s_total"] = time.monotonic() - start
    figures["command"] = "python examples/compare.py " + " ".join(argv if argv is not None else sys.argv[1:])
    print(f"{config.name}: population {config.population}, budget {config.budget} steps/member, "
          f"metric {config.metric} ({config.mode}), seeds {args.seeds}")
    print(table(figures))
    print()
    print(paired_table(figures))
    if args.out:
        os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
        with open(args.out, "w", encoding="utf-8") as handle:
            json.dump(figures, handle, indent=2)
    print(json.dumps({"config": figures["config"], "summary": figures["summary"], "paired": figures["paired"],
                      "wall_s_total": figures["wall_s_total"]}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
