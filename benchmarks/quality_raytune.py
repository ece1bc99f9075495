"""Ray Tune's PBT and PB2 next to pbtune on one task of ``benchmarks/quality.py``, same judge.

Same trainable, population, steps and ready interval for everyone; score = the held-out test
metric of the member each method reports as best: pbtune's ``result.best``, Ray's
``ResultGrid.get_best_result(metric, mode, scope="last")`` (the best last score, as
pbtune's rule), evaluated from that member's last checkpoint. Ray Tune: asynchronous
``PopulationBasedTraining`` with its defaults (quantile 0.25, resample probability 0.25,
factors 0.8/1.2) and ``PB2`` with the space's bounds, ``perturbation_interval`` = the task's
ready interval, 2 CPUs, 1 CPU per trial, ``reuse_actors=True``. Lineages left: each Ray trial
carries its initial trial's id in its checkpoints, so a trial that copies a donor inherits the
donor's root. Needs ``pip install 'ray[tune]'`` (not a pbtune dependency); without it the script
says so and exits 0. Prints a table per method and paired differences against pbtune's
random search and (for Ray's methods) pbtune's PBT; last line one JSON object.

    python benchmarks/quality_raytune.py [--task toy] [--seeds 10] [--population 8] [--steps 20]
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import random
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

for _variable in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
    os.environ.setdefault(_variable, "1")
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")  # no prompt or upload attempt (no internet here)
HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from quality import METHODS, paired  # noqa: E402
from quality_tasks import TASKS, Task, run_task  # noqa: E402


def ray_trainable(config: dict[str, Any]) -> None:
    """A Ray Tune function trainable around the task's pbtune Trainable (same steps, same files)."""
    from ray import tune

    task: Task = TASKS[config["task"]]
    hparams = {name: config[name] for name in task.space}
    trainable = task.trainable(**{**task.args, "seed": config["seed"]})  # type: ignore[misc]
    trainable.setup(hparams)
    step, root = 0, tune.get_context().get_trial_id()
    checkpoint = tune.get_checkpoint()
    if checkpoint is not None:  # an exploit (the donor's) or a resume (its own)
        with checkpoint.as_directory() as folder:
            trainable.load(os.path.join(folder, "model"))
            with open(os.path.join(folder, "meta.json")) as handle:
                meta = json.load(handle)
        step, root = meta["step"], meta["root"]
    while True:  # Ray stops the trial at training_iteration == steps
        metrics = dict(trainable.step())
        step += 1
        metrics["root"] = root
        if step % config["interval"] and step < config["steps"]:
            tune.report(metrics)
            continue
        with tempfile.TemporaryDirectory() as folder:
            trainable.save(os.path.join(folder, "model"))
            with open(os.path.join(folder, "meta.json"), "w") as handle:
                json.dump({"step": step, "root": root}, handle)
            tune.report(metrics, checkpoint=tune.Checkpoint.from_directory(folder))


def run_ray(method: str, task: Task, seed: int, population: int, steps: int) -> dict[str, Any]:
    """One Ray Tune run; the reported best's test metric, its validation score and lineages left."""
    from ray import tune
    from ray.tune.schedulers import PopulationBasedTraining
    from ray.tune.schedulers.pb2 import PB2
    from ray.tune.search.basic_variant import BasicVariantGenerator

    random.seed(seed)  # Ray's PBT explores with the global generators
    import numpy as np

    np.random.seed(seed)
    ray_space: dict[str, Any] = {}
    bounds: dict[str, list[float]] = {}
    for name, domain in task.space.items():
        ray_space[name] = (tune.loguniform if domain.log else tune.uniform)(domain.low, domain.high)
        bounds[name] = [domain.low, domain.high]
    common = {"time_attr": "training_iteration", "perturbation_interval": task.interval, "metric": "score",
              "mode": "max"}
    if method == "ray_pbt":
        scheduler: Any = PopulationBasedTraining(hyperparam_mutations=ray_space, **common)
    else:
        scheduler = PB2(hyperparam_bounds=bounds, **common)
    with tempfile.TemporaryDirectory() as storage:
        tuner = tune.Tuner(
            tune.with_resources(ray_trainable, {"cpu": 1}),
            param_space={**ray_space, "task": task.name, "seed": seed, "interval": task.interval, "steps": steps},
            tune_config=tune.TuneConfig(num_samples=population, scheduler=scheduler, reuse_actors=True,
                                        search_alg=BasicVariantGenerator(random_state=seed)),
            run_config=tune.RunConfig(name="q", storage_path=storage, verbose=0,
                                      stop={"training_iteration": steps}),
        )
        with contextlib.redirect_stdout(sys.stderr):  # Ray's experiment boxes: keep stdout the table + JSON
            results = tuner.fit()
        if results.errors:
            raise RuntimeError(f"{method}: {len(results.errors)} trials failed: {results.errors[0]}")
        best = results.get_best_result(metric="score", mode="max", scope="last")
        trainable = task.trainable(**{**task.args, "seed": seed})  # type: ignore[misc]
        trainable.setup({name: best.config[name] for name in task.space})
        with best.checkpoint.as_directory() as folder:
            trainable.load(os.path.join(folder, "model"))
        roots = {r.metrics["root"] for r in results}
        return {"test": trainable.test_metric(), "validation": best.metrics["score"], "lineages": len(roots)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--task", default="toy", choices=[n for n, t in TASKS.items() if t.engine == "process"])
    parser.add_argument("--seeds", type=int, default=10)
    parser.add_argument("--population", type=int, default=8)
    parser.add_argument("--steps", type=int, default=None)
    args = parser.parse_args()
    try:
        import ray
    except ImportError:
        print("Ray Tune is not installed: pip install 'ray[tune]' to compare with it")
        print(json.dumps({"skipped": "ray not installed"}))
        return
    task = TASKS[args.task]
    steps = args.steps or task.steps
    seeds = list(range(args.seeds))
    # Ray's workers must import quality_tasks and this checkout's pbtune
    os.environ["PYTHONPATH"] = os.pathsep.join(
        [str(HERE), str(HERE.parent / "src"), os.environ.get("PYTHONPATH", "")])
    started = time.perf_counter()
    rows: dict[str, dict[str, list[float]]] = {}
    for method in ("random", "pbt"):
        rows[method] = {"test": [], "validation": [], "lineages": []}
        for seed in seeds:
            with tempfile.TemporaryDirectory() as workdir:
                outcome = run_task(task, METHODS[method](steps), seed, args.population, steps, workdir)
            for key in rows[method]:
                rows[method][key].append(getattr(outcome, key))
    seconds = {"pbtune": round(time.perf_counter() - started, 1)}
    ray.init(num_cpus=2, include_dashboard=False, logging_level="ERROR", log_to_driver=False)
    try:
        for method in ("ray_pbt", "ray_pb2"):
            started = time.perf_counter()
            rows[method] = {"test": [], "validation": [], "lineages": []}
            for seed in seeds:
                figures = run_ray(method, task, seed, args.population, steps)
                for key in rows[method]:
                    rows[method][key].append(figures[key])
                print(f"  {method} seed {seed}: test {figures['test']:.4f} lineages {figures['lineages']}",
                      file=sys.stderr, flush=True)
            seconds[method] = round(time.perf_counter() - started, 1)
    finally:
        ray.shutdown()
    print(f"{task.name}: {task.describe}; population {args.population}, {steps} steps, ready every {task.interval}, "
          f"{args.seeds} seeds")
    print(f"{'method':<10}{'test':>9}{'diff vs random':>20}{'W/T/L':>10}{'diff vs pbtune pbt':>22}{'W/T/L':>10}"
          f"{'lineages':>10}")
    out: dict[str, Any] = {"task": task.name, "population": args.population, "steps": steps, "seeds": args.seeds,
                           "ray": ray.__version__, "seconds": seconds, "load": os.getloadavg()[0], "methods": {}}
    for method, row in rows.items():
        mean = sum(row["test"]) / len(row["test"])
        lineages = statistics.median(row["lineages"])
        diff = paired(row["test"], rows["random"]["test"], task.tie) if method != "random" else None
        vs_pbt = paired(row["test"], rows["pbt"]["test"], task.tie) if method.startswith("ray") else None
        out["methods"][method] = {**row, "mean_test": mean, "median_lineages": lineages, "vs_random": diff,
                                  "vs_pbtune_pbt": vs_pbt}
        cells = []
        for d, empty in ((diff, "(baseline)"), (vs_pbt, "")):
            cells.append(f"{d['mean']:+.4f} ± {d['se']:.4f}" if d else empty)
            cells.append(f"{d['wins']}/{d['ties']}/{d['losses']}" if d else "")
        print(f"{method:<10}{mean:>9.4f}{cells[0]:>20}{cells[1]:>10}{cells[2]:>22}{cells[3]:>10}{lineages:>10}")
    print(json.dumps(out))


if __name__ == "__main__":
    main()
