"""The digits MLP (64-128-10) at population 8 x 40 steps: PBT engines against a bare loop.

The same model, the same work (40 steps of 10 SGD minibatches of 64 + a validation pass per
member), the same space (``examples/digits_mlp.yaml``), each way a fresh Python process timed
from its start to its exit, as a user sees it:

(a) bare: one process trains the 8 members one after the other (``DigitsMLP`` directly, no PBT).
(b) script: ``python examples/digits_mlp.py`` (``pbtune.run``, process engine, 2 workers).
(c) cli: ``pbtune run examples/digits_mlp.yaml --quiet`` (the same run from the command line, as
    ``python -m pbtune``: what the console script runs).
(d) vectorized: ``pbtune.vectorized.train`` on the same model and space, 1 torch thread.
(e) warm: a second ``pbtune.run`` in a process that already ran one (workers kept warm),
    timed from the call to its return, against (a)'s training time without start-up.

Ways alternate (a, b, c, d, e, a, b, ...) ``--repeat`` times; the fastest of each is kept.
Ratios are against (a) measured in the same run; the machine's load is printed before and after.
CPU seconds (the whole process tree) are printed too: on a loaded machine a way with more
processes gets a larger share of the cores, so its wall-clock ratio flatters it.

    python benchmarks/digits.py [--repeat 2] [--ways bare script cli vectorized warm] [--before OLD/src]
"""

from __future__ import annotations

import argparse
import json
import os
import random
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from typing import Any

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
EXAMPLES = os.path.join(ROOT, "examples")
CONFIG = os.path.join(EXAMPLES, "digits_mlp.yaml")
WAYS = ("bare", "script", "cli", "vectorized", "warm")


def _config() -> Any:
    import pbtune

    return pbtune.load_config(CONFIG)


# -- ways that run inside a child process (``--child WAY``) -----------------------------------------
def child_bare() -> dict[str, Any]:
    started = time.perf_counter()
    import torch

    from pbtune.space import Space

    sys.path.insert(0, EXAMPLES)
    import digits_mlp

    torch.set_num_threads(1)
    config = _config()
    init = random.Random("0:init")  # the engines' first hyperparameters
    hparams = [Space(config.space).sample(init) for _ in range(config.population)]
    imported = time.perf_counter()
    best = 0.0
    for member in hparams:
        trainable = digits_mlp.DigitsMLP(**config.trainable_args)
        trainable.setup(member)
        for _ in range(config.budget):
            score = trainable.step()["score"]
        best = max(best, score)
    done = time.perf_counter()
    return {"best": best, "train_s": done - imported, "startup_s": imported - started}


def child_vectorized() -> dict[str, Any]:
    import torch

    import pbtune.vectorized as pv

    sys.path.insert(0, EXAMPLES)
    import digits_mlp

    torch.set_num_threads(1)
    config = _config()
    x, y, xv, yv = digits_mlp.digits_split()
    with tempfile.TemporaryDirectory() as workdir:
        result = pv.train(
            digits_mlp.make_mlp, config.space, population=config.population, data=(x, y), eval_data=(xv, yv),
            batch_size=config.trainable_args["batch_size"], batches_per_step=config.trainable_args["batches_per_step"],
            steps=config.budget, ready={"interval": config.ready.interval}, exploit=config.exploit,
            explore=config.explore, mode=config.mode, name="bench-digits", seed=0,
            storage=f"sqlite:///{workdir}/pbt.db", checkpoints=os.path.join(workdir, "ck"),
            device=digits_mlp.pick_device("auto"),  # where the example's own ways train (CUDA when present)
        )
    return {"best": result.best.score}


def child_warm() -> dict[str, Any]:
    import dataclasses

    import pbtune

    config = _config()
    times = []
    for index in range(2):
        with tempfile.TemporaryDirectory() as workdir:
            started = time.perf_counter()
            run = dataclasses.replace(config, name=f"warm-{index}", storage=f"sqlite:///{workdir}/pbt.db",
                                      checkpoints=os.path.join(workdir, "ck"))
            result = pbtune.run(config=run, progress=False)
            times.append(time.perf_counter() - started)
    return {"best": result.best.score, "first_run_s": times[0], "second_run_s": times[1]}


CHILDREN = {"bare": child_bare, "vectorized": child_vectorized, "warm": child_warm}


# -- the parent: one fresh process per measurement ---------------------------------------------------
def pbtune_command(src: str) -> list[str]:
    """The `pbtune` command of the pbtune in ``src``: what its console script runs (an older
    pbtune without ``__main__`` ran ``pbtune.cli:app``)."""
    if os.path.exists(os.path.join(src, "pbtune", "__main__.py")):
        return [sys.executable, "-m", "pbtune"]
    return [sys.executable, "-c", "from pbtune.cli import app; app()"]


def _command(way: str, src: str) -> list[str]:
    if way == "script":
        return [sys.executable, os.path.join(EXAMPLES, "digits_mlp.py")]
    if way == "cli":
        return pbtune_command(src) + ["run", CONFIG, "--quiet"]
    return [sys.executable, os.path.abspath(__file__), "--child", way]


def _cpu_seconds() -> float:
    """CPU seconds of every finished descendant (forked workers included: their parents wait for them)."""
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def measure(way: str, src: str) -> dict[str, Any]:
    workdir = tempfile.mkdtemp(prefix="pbtune-bench-digits-")  # runs write pbtune-runs/ under their cwd
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (src, env.get("PYTHONPATH")) if p)
    try:
        cpu, started = _cpu_seconds(), time.perf_counter()
        done = subprocess.run(_command(way, src), capture_output=True, text=True, cwd=workdir, env=env, timeout=1800)
        wall, cpu = time.perf_counter() - started, _cpu_seconds() - cpu
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    if done.returncode != 0:
        raise SystemExit(f"{way} failed ({done.returncode}):\n{done.stdout[-2000:]}\n{done.stderr[-4000:]}")
    figures: dict[str, Any] = {"wall_s": wall, "cpu_s": cpu}
    if way in CHILDREN:
        figures.update(json.loads(done.stdout.strip().splitlines()[-1]))
    return figures


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeat", type=int, default=2, help="runs per way (alternating); the fastest is kept")
    parser.add_argument("--ways", nargs="+", choices=WAYS, default=list(WAYS))
    parser.add_argument("--before", metavar="SRC", help="also time script and cli with pbtune from this src folder "
                        "(e.g. a checkout of the previous commit), labelled script@before, cli@before")
    parser.add_argument("--child", choices=sorted(CHILDREN), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(CHILDREN[args.child]()))
        return
    ways = ["bare"] + [w for w in args.ways if w != "bare"]
    if args.before:
        ways += [f"{w}@before" for w in ("script", "cli") if w in ways]
    load_before = os.getloadavg()
    print(f"digits MLP 64-128-10, population 8 x 40 steps (10 minibatches of 64 each), 2 workers; "
          f"cpu count {os.cpu_count()}; load average before {load_before}")
    runs: dict[str, list[dict[str, Any]]] = {way: [] for way in ways}
    for _ in range(args.repeat):
        for way in ways:
            name, _, before = way.partition("@")
            runs[way].append(measure(name, os.path.abspath(args.before) if before else os.path.join(ROOT, "src")))
            print(f"  {way:<14}{runs[way][-1]['wall_s']:>8.2f} s wall {runs[way][-1]['cpu_s']:>8.2f} s cpu   "
                  f"(load {os.getloadavg()[0]:.1f})", flush=True)
    best = {way: min(results, key=lambda r: r["wall_s"]) for way, results in runs.items()}
    bare = best["bare"]
    print(f"\n{'way':<14}{'wall s':>9}{'x bare':>9}{'cpu s':>9}{'x bare':>9}  all runs, wall (s)")
    for way in ways:
        walls = " ".join(f"{r['wall_s']:.1f}" for r in runs[way])
        b = best[way]
        print(f"{way:<14}{b['wall_s']:>9.2f}{b['wall_s'] / bare['wall_s']:>9.2f}{b['cpu_s']:>9.2f}"
              f"{b['cpu_s'] / bare['cpu_s']:>9.2f}  {walls}")
    figures: dict[str, Any] = {
        "bare_wall_s": round(bare["wall_s"], 2), "bare_cpu_s": round(bare["cpu_s"], 2),
        "bare_train_s": round(bare["train_s"], 2),
        "bare_startup_s": round(bare["startup_s"], 2),
    }
    print(f"\nbare: {bare['startup_s']:.2f} s to import and {bare['train_s']:.2f} s to train, "
          f"best accuracy {bare['best']:.3f}")
    for way in ways[1:]:
        figures[f"{way}_wall_s"] = round(best[way]["wall_s"], 2)
        figures[f"{way}_over_bare"] = round(best[way]["wall_s"] / bare["wall_s"], 2)
        figures[f"{way}_cpu_over_bare"] = round(best[way]["cpu_s"] / bare["cpu_s"], 2)
    if "warm" in best:
        warm = best["warm"]
        figures["warm_second_run_s"] = round(warm["second_run_s"], 2)
        figures["warm_second_run_over_bare_train"] = round(warm["second_run_s"] / bare["train_s"], 2)
        print(f"warm: first run {warm['first_run_s']:.2f} s, second run {warm['second_run_s']:.2f} s "
              f"({warm['second_run_s'] / bare['train_s']:.2f}x the bare loop's training)")
    figures["load_before"] = [round(v, 2) for v in load_before]
    figures["load_after"] = [round(v, 2) for v in os.getloadavg()]
    print(f"load average after {os.getloadavg()}")
    print(json.dumps(figures))


if __name__ == "__main__":
    main()
