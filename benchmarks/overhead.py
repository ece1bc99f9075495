"""PBT overhead: a zero-cost trainable, so every second measured is pbtune's own.

Population 16, 200 steps each, ready every 10 steps, a checkpoint at each ready point,
2 worker processes (the issue's workload). Prints wall seconds, member-steps per second and the
median/p99 latency of report(+checkpoint)+should_exploit as seen by the workers.

    python benchmarks/overhead.py [--population 16] [--steps 200] [--workers 2]
"""

from __future__ import annotations

import argparse
import glob
import json
import os
import statistics
import sys
import tempfile
import time

import pbtune


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(q * (len(ordered) - 1))))]


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--population", type=int, default=16)
    parser.add_argument("--steps", type=int, default=200)
    parser.add_argument("--interval", type=int, default=10)
    parser.add_argument("--workers", type=int, default=2)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as workdir:
        stats_dir = os.path.join(workdir, "stats")
        os.makedirs(stats_dir)
        os.environ["PBTUNE_WORKER_STATS_DIR"] = stats_dir
        started = time.perf_counter()
        pbtune.run(
            "pbtune.testing.trainables:Counter", name="overhead", progress=False,
            space={"x": {"type": "float", "low": 0.1, "high": 1.0}},
            population=args.population, workers=args.workers, budget=args.steps,
            ready={"interval": args.interval}, storage=f"sqlite:///{workdir}/pbt.db",
            checkpoints=os.path.join(workdir, "checkpoints"),
        )
        wall = time.perf_counter() - started
        latencies: list[float] = []
        for path in glob.glob(os.path.join(stats_dir, "*.json")):
            with open(path) as handle:
                latencies += json.load(handle)["decision_seconds"]
        store = pbtune.open_store(f"sqlite:///{workdir}/pbt.db")
        exploits = sum(e.kind == "exploit" for e in store.events("overhead"))
    steps = args.population * args.steps
    figures = {
        "population": args.population, "steps_per_member": args.steps, "workers": args.workers,
        "wall_s": round(wall, 3), "member_steps_per_s": round(steps / wall, 1),
        "p50_ms": round(1000 * statistics.median(latencies), 3), "p99_ms": round(1000 * percentile(latencies, 0.99), 3),
        "decisions": len(latencies), "exploits": exploits, "python": sys.version.split()[0],
    }
    print(f"{'population':<28}{args.population}")
    print(f"{'steps per member':<28}{args.steps} (ready and checkpoint every {args.interval})")
    print(f"{'workers':<28}{args.workers}")
    print(f"{'wall seconds':<28}{figures['wall_s']} (includes starting {args.workers} worker processes)")
    print(f"{'member-steps per second':<28}{figures['member_steps_per_s']}")
    print(f"{'report+should_exploit p50':<28}{figures['p50_ms']} ms   p99 {figures['p99_ms']} ms   "
          f"({len(latencies)} decisions, {exploits} exploits)")
    print(json.dumps(figures))


if __name__ == "__main__":
    main()
