"""Ray Tune's PBT on the overhead workload, side by side with pbtune's ``benchmarks/overhead.py``.

Same workload as ``overhead.py``: population 16, 200 steps per member, a zero-cost step (a
counter adds the hyperparameter ``x``, x ~ U(0.1, 1); score = the running total), ready and
a checkpoint every 10 steps, 2 CPUs with 1 CPU per trial (2 trials at a time; pbtune uses 2
worker processes). Ray Tune: ``PopulationBasedTraining(time_attr="training_iteration",
perturbation_interval=10, metric="score", mode="max", hyperparam_mutations={"x":
tune.uniform(0.1, 1.0)})`` with Ray's defaults otherwise (quantile_fraction 0.25 - pbtune's
truncation default is 0.2 -, resample_probability 0.25, factors 0.8/1.2, asynchronous,
reuse_actors False unless ``--reuse-actors``, all checkpoints kept, default per-trial
loggers), a function trainable that reports every iteration and passes
``checkpoint=tune.Checkpoint`` every 10th, stopped at training_iteration 200.

One run measures both: first pbtune's ``overhead.py`` in a subprocess (its last JSON line is
parsed), then ``ray.init(num_cpus=2)`` (timed on its own) and ``tuner.fit()`` (timed on its
own). The wall ratio compares ``tuner.fit()`` with pbtune's whole run (which includes
starting its worker processes); Ray's startup is reported apart.

Ray Tune needs extras (pandas, pyarrow, ...) that pbtune's venv lacks, so it runs from its
own venv with the same Ray version::

    python3 -m venv /work/raytune-venv
    /work/raytune-venv/bin/pip install 'ray[tune]==2.60.0'
    /work/raytune-venv/bin/python benchmarks/overhead_raytune.py [--pbtune-python .venv/bin/python]

``--pbtune-python`` is the interpreter with pbtune installed (default: the repository's
``.venv/bin/python``); ``--skip-pbtune`` measures Ray Tune alone; ``--reuse-actors`` turns on
the actor reuse Ray suggests for PBT; ``--time-budget S`` stops Ray Tune after S seconds and
reports the member-steps it reached (the figures are then marked incomplete).

Why Ray is slow here: with more trials than CPUs, Ray's asynchronous PBT pauses a trial at
every perturbation point while another trial is pending or paused, so the 16 trials
time-share the 2 slots by pause/resume (16 x 20 of them), each a checkpoint restore and,
without actor reuse, a new worker process.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent

# Before importing ray: no usage-stats prompt or upload attempt (no internet here).
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")


def counter(config: dict[str, Any]) -> None:
    """Zero-cost Ray Tune function trainable: pbtune's ``Counter`` written against Ray's API."""
    from ray import tune

    total, step = 0.0, 0
    checkpoint = tune.get_checkpoint()
    if checkpoint is not None:  # PBT exploit (or restore): start from the donor's state
        with checkpoint.as_directory() as folder:
            with open(os.path.join(folder, "state.json")) as handle:
                state = json.load(handle)
        total, step = state["total"], state["step"]
    interval = config["interval"]
    while True:  # Ray stops the trial at training_iteration == steps
        step += 1
        total += config["x"]
        if step % interval == 0:
            with tempfile.TemporaryDirectory() as folder:
                with open(os.path.join(folder, "state.json"), "w") as handle:
                    json.dump({"total": total, "step": step}, handle)
                tune.report({"score": total, "step": step}, checkpoint=tune.Checkpoint.from_directory(folder))
        else:
            tune.report({"score": total, "step": step})


def run_pbtune(python: str, population: int, steps: int, interval: int) -> dict[str, Any]:
    """Run pbtune's overhead.py with ``python`` and return its last-line JSON figures."""
    command = [python, str(REPO / "benchmarks" / "overhead.py"), "--population", str(population),
               "--steps", str(steps), "--interval", str(interval), "--workers", "2"]
    done = subprocess.run(command, cwd=REPO, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise SystemExit(f"pbtune overhead.py failed ({done.returncode}):\n{done.stdout}\n{done.stderr}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def run_raytune(
    population: int, steps: int, interval: int, quantile: float, reuse_actors: bool, time_budget: float | None
) -> dict[str, Any]:
    """Time ``ray.init`` and ``tuner.fit()`` for the PBT workload; count member-steps reached and exploits."""
    import ray
    from ray import tune
    from ray.tune.schedulers import PopulationBasedTraining

    started = time.perf_counter()
    ray.init(num_cpus=2, include_dashboard=False, logging_level="ERROR", log_to_driver=False)
    init_s = time.perf_counter() - started
    try:
        with tempfile.TemporaryDirectory() as storage:
            pbt = PopulationBasedTraining(
                time_attr="training_iteration", perturbation_interval=interval, metric="score", mode="max",
                quantile_fraction=quantile, hyperparam_mutations={"x": tune.uniform(0.1, 1.0)},
            )
            tuner = tune.Tuner(
                tune.with_resources(counter, {"cpu": 1}),
                param_space={"x": tune.uniform(0.1, 1.0), "interval": interval},
                tune_config=tune.TuneConfig(
                    num_samples=population, scheduler=pbt, reuse_actors=reuse_actors, time_budget_s=time_budget
                ),
                run_config=tune.RunConfig(name="overhead", storage_path=storage, verbose=0,
                                          stop={"training_iteration": steps}),
            )
            started = time.perf_counter()
            results = tuner.fit()
            fit_s = time.perf_counter() - started
            errors = len(results.errors)
            iterations = [r.metrics.get("training_iteration", 0) for r in results]
            best = results.get_best_result(metric="score", mode="max").metrics["score"]
            global_log = Path(storage, "overhead", "pbt_global.txt")
            exploits = len(global_log.read_text().splitlines()) if global_log.exists() else 0
    finally:
        ray.shutdown()
    # A member's training_iteration is the step it has reached (an exploit restores the donor's).
    return {"init_s": init_s, "fit_s": fit_s, "errors": errors, "trials": len(iterations),
            "steps_reached": sum(iterations), "exploits": exploits, "best_score": best, "ray": ray.__version__}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--population", type=int, default=16)
    parser.add_argument("--steps", type=int, default=200)
    parser.add_argument("--interval", type=int, default=10)
    parser.add_argument("--quantile", type=float, default=0.25, help="Ray's quantile_fraction (its default 0.25)")
    parser.add_argument("--reuse-actors", action="store_true",
                        help="TuneConfig(reuse_actors=True), which Ray suggests for PBT (default False)")
    parser.add_argument("--time-budget", type=float, default=None,
                        help="stop Ray Tune after this many seconds (TuneConfig.time_budget_s) and report the "
                        "member-steps it reached")
    parser.add_argument("--pbtune-python", default=str(REPO / ".venv" / "bin" / "python"))
    parser.add_argument("--skip-pbtune", action="store_true")
    args = parser.parse_args()

    member_steps = args.population * args.steps
    pb = None if args.skip_pbtune else run_pbtune(args.pbtune_python, args.population, args.steps, args.interval)
    ray_fig = run_raytune(args.population, args.steps, args.interval, args.quantile, args.reuse_actors,
                          args.time_budget)
    if ray_fig["errors"] or ray_fig["trials"] != args.population:
        raise SystemExit(f"Ray Tune run failed: {ray_fig}")
    done = ray_fig["steps_reached"]

    figures: dict[str, Any] = {
        "population": args.population, "steps_per_member": args.steps, "interval": args.interval,
        "raytune_wall_s": round(ray_fig["fit_s"], 3), "raytune_init_s": round(ray_fig["init_s"], 3),
        "raytune_completed": done == member_steps, "raytune_member_steps_reached": done,
        "raytune_member_steps_per_s": round(done / ray_fig["fit_s"], 1),
        "raytune_exploits": ray_fig["exploits"], "raytune_quantile": args.quantile,
        "raytune_reuse_actors": args.reuse_actors, "ray": ray_fig["ray"],
    }
    print(f"{'workload':<30}population {args.population}, {args.steps} steps each, "
          f"ready + checkpoint every {args.interval}, 2 CPUs")
    print(f"{'Ray Tune settings':<30}quantile_fraction {args.quantile}, reuse_actors {args.reuse_actors}")
    print(f"{'':<30}{'wall s':>10}{'steps/s':>10}{'exploits':>10}")
    print(f"{'Ray Tune PBT tuner.fit()':<30}{figures['raytune_wall_s']:>10}"
          f"{figures['raytune_member_steps_per_s']:>10}{ray_fig['exploits']:>10}")
    print(f"{'Ray ray.init(num_cpus=2)':<30}{figures['raytune_init_s']:>10}")
    if done != member_steps:
        print(f"{'Ray Tune INCOMPLETE':<30}reached {done} of {member_steps} member-steps within "
              f"--time-budget {args.time_budget} s; wall and ratio are lower bounds")
    if pb is not None:
        figures.update({
            "pbtune_wall_s": pb["wall_s"], "pbtune_member_steps_per_s": pb["member_steps_per_s"],
            "pbtune_p50_ms": pb["p50_ms"], "pbtune_p99_ms": pb["p99_ms"], "pbtune_exploits": pb["exploits"],
            "ratio_wall": round(ray_fig["fit_s"] / pb["wall_s"], 1),
            "ratio_steps_per_s": round(pb["member_steps_per_s"] / figures["raytune_member_steps_per_s"], 1),
        })
        print(f"{'pbtune run (incl. 2 workers)':<30}{pb['wall_s']:>10}"
              f"{pb['member_steps_per_s']:>10}{pb['exploits']:>10}")
        print(f"{'Ray fit / pbtune wall':<30}{figures['ratio_wall']:>10}x")
        print(f"{'pbtune / Ray steps per s':<30}{figures['ratio_steps_per_s']:>10}x")
    figures["python"] = sys.version.split()[0]
    print(json.dumps(figures))


if __name__ == "__main__":
    main()
