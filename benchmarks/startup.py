"""Start-up costs: ``import pbtune`` and the time from ``pbtune run`` to the first member step.

(a) ``import pbtune`` in a fresh interpreter: the import alone (timed inside the process), the
    whole process (start to exit) and the same for a bare ``python -c pass`` for reference.
(b) a tiny ``pbtune run`` (population 2, 1 worker, 5 zero-cost steps, a new sqlite store in a
    temporary folder): seconds from launching the command to the end of the first member's first
    ``step()`` (the trainable below writes that moment to a file), and to the command's exit.

Each figure is the median of ``--repeat`` fresh processes; the machine's load is printed.

    python benchmarks/startup.py [--repeat 5]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Mapping
from typing import Any

from pbtune.engine.trainable import Trainable

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


class FirstStep(Trainable):
    """Zero-cost steps; the first step of the run appends the wall-clock time to ``$PBTUNE_FIRST_STEP_FILE``."""

    def setup(self, hparams: Mapping[str, Any]) -> None:
        self.x, self.total = float(hparams["x"]), 0.0

    def step(self) -> Mapping[str, float]:
        if self.total == 0.0:
            with open(os.environ["PBTUNE_FIRST_STEP_FILE"], "a") as handle:
                handle.write(f"{time.time()}\n")
        self.total += self.x
        return {"score": self.total}

    def save(self, path: str) -> None:
        with open(path, "w") as handle:
            handle.write(repr(self.total))

    def load(self, path: str) -> None:
        with open(path) as handle:
            self.total = float(handle.read())


def _env() -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (os.path.join(ROOT, "src"), env.get("PYTHONPATH")) if p)
    return env


def import_time() -> tuple[float, float]:
    """(seconds inside the process to import pbtune, seconds of the whole process)."""
    code = "import time; t = time.perf_counter(); import pbtune; print(time.perf_counter() - t)"
    started = time.perf_counter()
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=_env(), check=True)
    return float(done.stdout.strip()), time.perf_counter() - started


def bare_interpreter() -> float:
    started = time.perf_counter()
    subprocess.run([sys.executable, "-c", "pass"], check=True)
    return time.perf_counter() - started


def first_step() -> tuple[float, float]:
    """(seconds from launching `pbtune run` to the end of the first step, seconds to its exit)."""
    with tempfile.TemporaryDirectory() as workdir:
        config = {
            "name": "startup", "trainable": f"{os.path.abspath(__file__)}:FirstStep", "population": 2, "workers": 1,
            "budget": 5, "ready": {"interval": 5}, "space": {"x": {"type": "float", "low": 0.1, "high": 1.0}},
            "storage": f"sqlite:///{workdir}/pbt.db", "checkpoints": os.path.join(workdir, "ck"),
        }
        path = os.path.join(workdir, "run.json")
        with open(path, "w") as handle:
            json.dump(config, handle)
        marks = os.path.join(workdir, "first-step")
        env = dict(_env(), PBTUNE_FIRST_STEP_FILE=marks)
        command = [sys.executable, "-m", "pbtune"]  # what the `pbtune` console script runs
        if not os.path.exists(os.path.join(ROOT, "src", "pbtune", "__main__.py")):  # an older pbtune
            command = [sys.executable, "-c", "from pbtune.cli import app; app()"]
        launched, started = time.time(), time.perf_counter()
        subprocess.run(command + ["run", path, "--quiet"], capture_output=True, text=True, env=env, cwd=workdir,
                       check=True)
        total = time.perf_counter() - started
        with open(marks) as handle:
            first = min(float(line) for line in handle if line.strip())
    return first - launched, total


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeat", type=int, default=5)
    args = parser.parse_args()
    load_before = os.getloadavg()
    print(f"cpu count {os.cpu_count()}; load average before {load_before}; median of {args.repeat} fresh processes")
    imports, import_procs, bare, steps, runs = [], [], [], [], []
    for _ in range(args.repeat):
        inside, whole = import_time()
        imports.append(inside)
        import_procs.append(whole)
        bare.append(bare_interpreter())
        to_step, total = first_step()
        steps.append(to_step)
        runs.append(total)
    figures = {
        "import_pbtune_s": round(statistics.median(imports), 3),
        "import_process_s": round(statistics.median(import_procs), 3),
        "bare_interpreter_s": round(statistics.median(bare), 3),
        "first_step_s": round(statistics.median(steps), 3),
        "tiny_run_s": round(statistics.median(runs), 3),
        "load_before": [round(v, 2) for v in load_before],
        "load_after": [round(v, 2) for v in os.getloadavg()],
    }
    rows = [
        ("import pbtune (inside the process)", "import_pbtune_s"),
        ('python -c "import pbtune" (whole process)', "import_process_s"),
        ("python -c pass (whole process)", "bare_interpreter_s"),
        ("pbtune run (tiny): launch -> first step done", "first_step_s"),
        ("pbtune run (tiny): launch -> exit", "tiny_run_s"),
    ]
    for label, key in rows:
        print(f"{label:<46}{figures[key]:>7.3f} s")
    print(f"load average after {os.getloadavg()}")
    print(json.dumps(figures))


if __name__ == "__main__":
    main()
