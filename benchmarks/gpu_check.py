"""GPU check: local workers get their device share, and the vectorized engine runs on ``cuda``.

(a) placement: a tiny ``pbtune.run`` with ``gpus_per_worker`` (default 0.5: two workers per
    device, on every GPU this process sees) and :class:`ImportsTorch` (``DeviceRecorder`` with
    ``use_torch``, from this module, which imports torch and calls ``torch.cuda.is_available()``
    at import, as many training scripts do: so the zygote does too). Each worker process records
    its ``CUDA_VISIBLE_DEVICES``, the device it trained on and the GPUs torch saw; the worker
    stats hook ties each process to its worker index. Checked: every worker got the share
    :func:`pbtune.engine.devices.worker_shares` gives it, trained on ``cuda``, saw exactly the
    devices of its share, and was forked by the zygote (the zygote had not initialised CUDA; had
    it, the runner would have spawned the workers).
(b) the vectorized engine on ``cuda``: the digits MLP (64-128-10), population ``--population``
    (default 512), member-steps per second (one member-step = one minibatch SGD update).

Without CUDA it says it skipped and exits 0. The last line is one JSON object of the figures.

    python benchmarks/gpu_check.py [--gpus-per-worker 0.5] [--population 512] [--steps 6]
"""

from __future__ import annotations

import argparse
import glob
import json
import os
import re
import sys
import tempfile
import time
from typing import Any

from pbtune.testing.trainables import DeviceRecorder

try:
    import torch

    CUDA_AT_IMPORT = torch.cuda.is_available()  # at import, like many scripts: the zygote runs this too
except ImportError:
    torch = None  # type: ignore[assignment]
    CUDA_AT_IMPORT = False

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


class ImportsTorch(DeviceRecorder):
    """A DeviceRecorder whose module imports torch and asks for CUDA at import (see the module docstring)."""


def check_placement(gpus_per_worker: float, workdir: str) -> dict[str, Any]:
    import pbtune
    from pbtune.engine.devices import detect_devices, worker_shares

    devices = detect_devices()
    workers = max(1, min(8, int(len(devices) / gpus_per_worker)))
    expected = worker_shares(workers, gpus_per_worker, devices)
    stats_dir, record_dir = os.path.join(workdir, "stats"), os.path.join(workdir, "seen")
    os.makedirs(stats_dir)
    os.makedirs(record_dir)
    os.environ["PBTUNE_WORKER_STATS_DIR"] = stats_dir
    started = time.perf_counter()
    pbtune.run(ImportsTorch, name="gpu-check", progress=False,
               space={"lr": {"type": "float", "low": 0.01, "high": 0.3, "log": True}},
               population=max(2, workers), workers=workers, budget=20, ready={"interval": 5},
               gpus_per_worker=gpus_per_worker, trainable_args={"record_dir": record_dir, "use_torch": True},
               storage=f"sqlite:///{workdir}/pbt.db", checkpoints=os.path.join(workdir, "ck"))
    wall = time.perf_counter() - started
    by_pid: dict[int, tuple[int, str]] = {}
    for path in glob.glob(os.path.join(stats_dir, "*.json")):
        with open(path) as handle:
            stats = json.load(handle)
        index = int(re.search(r"-w(\d+)-", os.path.basename(path)).group(1))  # type: ignore[union-attr]
        by_pid[stats["pid"]] = (index, stats["CUDA_VISIBLE_DEVICES"])
    problems: list[str] = []
    for index, (_, share) in sorted((i, (p, s)) for p, (i, s) in by_pid.items()):
        if share != expected[index]:
            problems.append(f"worker {index} was given {share!r}, expected {expected[index]!r}")
    rows = []
    for path in sorted(glob.glob(os.path.join(record_dir, "*.json"))):
        with open(path) as handle:
            seen = json.load(handle)
        index, share = by_pid.get(seen["pid"], (-1, None))
        rows.append({**seen, "worker": index})
        if seen["CUDA_VISIBLE_DEVICES"] != share:
            problems.append(f"member {seen['member']} saw {seen['CUDA_VISIBLE_DEVICES']!r}, its worker had {share!r}")
        if not str(seen.get("device", "")).startswith("cuda"):
            problems.append(f"member {seen['member']} trained on {seen.get('device')!r}, not cuda")
        if share is not None and seen.get("torch_device_count") != len(share.split(",")):
            problems.append(f"member {seen['member']}: torch saw {seen.get('torch_device_count')} devices, "
                            f"its share {share!r}")
        if seen["ppid"] == os.getpid():
            problems.append(f"worker {index} was spawned, not forked: the zygote had initialised CUDA")
    for row in rows:
        print(f"  worker {row['worker']} pid {row['pid']}: member {row['member']} CUDA_VISIBLE_DEVICES="
              f"{row['CUDA_VISIBLE_DEVICES']!r} device {row.get('device')} ({row.get('device_name')}), "
              f"{row['steps']} steps")
    return {"devices": list(devices), "workers": workers, "gpus_per_worker": gpus_per_worker,
            "shares": expected, "members_checked": len(rows), "wall_s": round(wall, 2), "problems": problems}


def vectorized_on_cuda(population: int, steps: int, batches: int, workdir: str) -> dict[str, Any]:
    import pbtune.vectorized as pv

    sys.path.insert(0, os.path.join(ROOT, "examples"))
    import digits_mlp

    x, y, xv, yv = digits_mlp.digits_split()
    started = time.perf_counter()
    result = pv.train(
        digits_mlp.make_mlp,
        {"lr": {"type": "float", "low": 1e-4, "high": 0.5, "log": True},
         "momentum": {"type": "float", "low": 0.0, "high": 0.99},
         "weight_decay": {"type": "float", "low": 1e-6, "high": 1e-2, "log": True}},
        population=population, data=(x, y), eval_data=(xv, yv), batch_size=64, batches_per_step=batches,
        steps=steps, ready={"interval": 2}, exploit={"name": "truncation", "quantile": 0.25},
        explore={"name": "perturb_or_resample", "resample_probability": 0.25}, mode="max", device="cuda",
        name="gpu-check-vec", seed=0, storage=f"sqlite:///{workdir}/vec.db", checkpoints=os.path.join(workdir, "vck"),
    )
    torch.cuda.synchronize()
    wall = time.perf_counter() - started
    return {"population": population, "member_steps": result.member_steps, "wall_s": round(wall, 3),
            "member_steps_per_s": round(result.member_steps / wall, 1), "best": result.best.score,
            "peak_cuda_mib": round(torch.cuda.max_memory_allocated() / 2**20, 1)}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--gpus-per-worker", type=float, default=0.5)
    parser.add_argument("--population", type=int, default=512, help="vectorized population")
    parser.add_argument("--steps", type=int, default=6, help="vectorized PBT steps per member")
    parser.add_argument("--batches", type=int, default=50, help="minibatch updates per vectorized PBT step")
    args = parser.parse_args()
    if torch is None or not CUDA_AT_IMPORT:
        print("no CUDA device (torch missing or torch.cuda.is_available() is False): skipped")
        print(json.dumps({"skipped": True}))
        return 0
    print(f"load average: {os.getloadavg()}; torch {torch.__version__}; "
          f"{torch.cuda.device_count()} GPU(s): {torch.cuda.get_device_name(0)}")
    with tempfile.TemporaryDirectory() as workdir:
        print(f"(a) placement, gpus_per_worker {args.gpus_per_worker}:")
        placement = check_placement(args.gpus_per_worker, workdir)
        for problem in placement["problems"]:
            print(f"  PROBLEM: {problem}")
        print(f"  {'ok' if not placement['problems'] else 'FAILED'}: {placement['workers']} workers on "
              f"{placement['devices']}, shares {placement['shares']}, {placement['members_checked']} members "
              f"checked, {placement['wall_s']} s")
        vectorized = vectorized_on_cuda(args.population, args.steps, args.batches, workdir)
        print(f"(b) vectorized on cuda, population {vectorized['population']}: {vectorized['member_steps']} "
              f"member-steps in {vectorized['wall_s']} s = {vectorized['member_steps_per_s']} member-steps/s "
              f"(best validation accuracy {vectorized['best']:.4f}, "
              f"peak CUDA memory {vectorized['peak_cuda_mib']} MiB)")
    ok = not placement["problems"]
    print(json.dumps({"skipped": False, "ok": ok, "placement": placement, "vectorized": vectorized}))
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
