"""The quality judge: does a PBT strategy find a better model than random search at equal compute?

Every method trains the same population for the same steps (population x steps) on the same
seeds; its score is the held-out TEST metric of the member it reports as best (``result.best``,
the best-member rule of :mod:`pbtune.ranking`), evaluated afterwards from that member's
checkpoint. Per task and method it prints the mean test metric, the paired difference against
random search (mean, standard error over seeds, wins/ties/losses) and the lineages left at the
end (distinct root ancestors of the final members, from the lineage events). The tasks are in
``benchmarks/quality_tasks.py``. Methods the installed pbtune rejects (InvalidConfigError) are
skipped with a note. Last line: one JSON object with every figure, per-seed values included.

    python benchmarks/quality.py                               # all tasks and methods, 10 seeds
    python benchmarks/quality.py --tasks toy digits --methods random pbt --seeds 10 --steps 12
"""

from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any

# one thread each, as pbtune.run's workers do: a shared 2-core machine (set before numpy/sklearn load)
for _variable in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
    os.environ.setdefault(_variable, "1")
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from quality_tasks import TASKS, Outcome, Task, run_task  # noqa: E402

import pbtune  # noqa: E402
from pbtune.strategies import EXPLOIT_STRATEGIES  # noqa: E402


def random_search(steps: int) -> dict[str, Any]:
    """Random search at equal compute: ``exploit: none`` where pbtune has it, else no ready point."""
    if "none" in EXPLOIT_STRATEGIES:
        return {"exploit": "none"}
    return {"ready": {"interval": steps + 1}}


# name -> (steps -> config fields of RunConfig / keywords of pbtune.vectorized.train)
METHODS: dict[str, Callable[[int], dict[str, Any]]] = {
    "random": random_search,
    "pbt": lambda steps: {},  # the defaults: truncation + perturb_or_resample
    "pbt_smooth": lambda steps: {"ranking": {"window": 3}},
    "pbt_trend": lambda steps: {"ranking": {"window": 4, "fit": "trend"}},
    "pb2": lambda steps: {"explore": "pb2"},
    "sync": lambda steps: {"sync": True},
    # not run by default: Ray Tune's truncation fraction (pbtune's default is 0.2)
    "pbt_q25": lambda steps: {"exploit": {"name": "truncation", "quantile": 0.25}},
    "pbt_q25_cap": lambda steps: {"exploit": {"name": "truncation", "quantile": 0.25, "max_copies": 1}},
    # the lineage guard: no root ancestor holds more than this share of the population
    "pbt_lineage": lambda steps: {"exploit": {"name": "truncation", "max_lineage_share": 0.34}},
    "pbt_lineage50": lambda steps: {"exploit": {"name": "truncation", "max_lineage_share": 0.5}},
}
DEFAULT_METHODS = ("random", "pbt", "pbt_smooth", "pb2", "sync")
BASELINE = "random"


def paired(values: Sequence[float], baseline: Sequence[float], tie: float = 1e-9) -> dict[str, Any]:
    """Per-seed differences ``values - baseline`` (larger is better): mean, standard error, W/T/L."""
    if len(values) != len(baseline):
        raise ValueError(f"paired values need the same seeds; got {len(values)} and {len(baseline)}")
    diffs = [a - b for a, b in zip(values, baseline, strict=True)]
    n = len(diffs)
    return {
        "mean": statistics.fmean(diffs) if n else math.nan,
        "se": statistics.stdev(diffs) / math.sqrt(n) if n > 1 else math.nan,
        "wins": sum(d > tie for d in diffs),
        "ties": sum(abs(d) <= tie for d in diffs),
        "losses": sum(d < -tie for d in diffs),
        "diffs": diffs,
    }


def run_method(task: Task, method: str, seeds: Sequence[int], population: int, steps: int,
               log: Callable[[str], None], spawn: bool = False) -> dict[str, Any]:
    """Every seed of one method on one task, or ``{"skipped": reason}``."""
    variant = METHODS[method](steps)
    outcomes: list[Outcome] = []
    for seed in seeds:
        with tempfile.TemporaryDirectory(prefix="pbtune-quality-") as workdir:
            started = time.perf_counter()
            try:
                outcome = run_task(task, variant, seed, population, steps, workdir, spawn)
            except (pbtune.InvalidConfigError, TypeError) as exc:
                unknown = isinstance(exc, pbtune.InvalidConfigError) or "unexpected keyword" in str(exc)
                if outcomes or not unknown:  # not a config form this pbtune lacks: a bug, raise it
                    raise
                log(f"  {task.name}/{method}: skipped, the installed pbtune rejects {variant}: {exc}")
                return {"skipped": f"{type(exc).__name__}: {exc}"}
            seconds = time.perf_counter() - started
        outcomes.append(outcome)
        log(f"  {task.name}/{method} seed {seed}: test {outcome.test:.4f} validation {outcome.validation:.4f} "
            f"lineages {outcome.lineages} ({seconds:.1f} s)")
    return {
        "test": [o.test for o in outcomes],
        "validation": [o.validation for o in outcomes],
        "lineages": [o.lineages for o in outcomes],
        "best_is_truly_best": [o.best_is_truly_best for o in outcomes] if task.evaluate_all else None,
    }


def summarize(task: Task, results: Mapping[str, dict[str, Any]]) -> dict[str, Any]:
    """Add means and the paired difference against random search to each method's per-seed values."""
    base = results.get(BASELINE, {})
    out: dict[str, Any] = {}
    for method, res in results.items():
        if "skipped" in res:
            out[method] = res
            continue
        row = dict(res)
        row["mean_test"] = statistics.fmean(res["test"])
        row["mean_validation"] = statistics.fmean(res["validation"])
        row["median_lineages"] = statistics.median(res["lineages"])
        if res.get("best_is_truly_best") is not None:
            row["truly_best"] = sum(bool(b) for b in res["best_is_truly_best"])
        if "test" in base and method != BASELINE:
            row["vs_random"] = paired(res["test"], base["test"], task.tie)
        out[method] = row
    return out


def print_table(task: Task, population: int, steps: int, rows: Mapping[str, dict[str, Any]]) -> None:
    print(f"\n{task.name}: {task.describe} ({task.engine} engine, population {population}, {steps} steps, "
          f"ready every {task.interval})")
    print(f"{'method':<12}{'test':>9}{'valid':>9}{'diff vs random':>20}{'W/T/L':>10}{'lineages':>10}{'truly best':>12}")
    for method, row in rows.items():
        if "skipped" in row:
            print(f"{method:<12} skipped: {row['skipped'][:100]}")
            continue
        n = len(row["test"])
        diff = row.get("vs_random")
        diff_text = f"{diff['mean']:+.4f} ± {diff['se']:.4f}" if diff else "(baseline)"
        wtl = f"{diff['wins']}/{diff['ties']}/{diff['losses']}" if diff else ""
        truly = f"{row['truly_best']}/{n}" if "truly_best" in row else ""
        print(f"{method:<12}{row['mean_test']:>9.4f}{row['mean_validation']:>9.4f}{diff_text:>20}{wtl:>10}"
              f"{row['median_lineages']:>10}{truly:>12}")


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tasks", nargs="+", default=list(TASKS), choices=list(TASKS))
    parser.add_argument("--methods", nargs="+", default=list(DEFAULT_METHODS), choices=list(METHODS))
    parser.add_argument("--seeds", type=int, default=10)
    parser.add_argument("--population", type=int, default=8)
    parser.add_argument("--steps", type=int, default=None, help="steps per member (default: each task's own)")
    parser.add_argument("--spawn", action="store_true",
                        help="process-engine tasks through pbtune.run (a worker process per run) instead of "
                             "its Worker loop in this process; same decisions, slower")
    args = parser.parse_args(argv)
    methods = [BASELINE] + [m for m in args.methods if m != BASELINE]  # the paired baseline always runs
    seeds = list(range(args.seeds))

    def log(line: str) -> None:
        print(line, file=sys.stderr, flush=True)

    started = time.perf_counter()
    figures: dict[str, Any] = {
        "population": args.population, "seeds": args.seeds, "methods": methods, "tasks": {},
        "load_before": os.getloadavg()[0], "pbtune": pbtune.__version__, "spawn": args.spawn,
    }
    for name in args.tasks:
        task = TASKS[name]
        steps = args.steps or task.steps
        task_started = time.perf_counter()
        results = {m: run_method(task, m, seeds, args.population, steps, log, args.spawn) for m in methods}
        rows = summarize(task, results)
        print_table(task, args.population, steps, rows)
        figures["tasks"][name] = {"steps": steps, "interval": task.interval, "engine": task.engine,
                                  "seconds": round(time.perf_counter() - task_started, 1), "methods": rows}
    figures["seconds"] = round(time.perf_counter() - started, 1)
    figures["load_after"] = os.getloadavg()[0]
    print(json.dumps(figures))
    return figures


if __name__ == "__main__":
    main()
