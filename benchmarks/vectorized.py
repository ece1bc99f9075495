"""Vectorized engine vs. the process engine vs. a sequential loop, on the digits MLP (64-128-10).

A *member-step* is one minibatch SGD update (batch 64) of one member. All three ways run the
same PBT workload: a PBT step is ``--batches`` minibatch updates followed by an evaluation on
the validation set (360 samples) and a score; members are ready every ``--interval`` PBT steps
(truncation 25%, perturb-or-resample); ``--steps`` PBT steps per member.

(a) vectorized: ``pbtune.vectorized.train`` in one process (sqlite store, population
    checkpoint at every ready point), at 1 and 2 torch threads.
(b) process engine: ``pbtune.run`` with 2 worker processes (1 torch thread each) and the
    example trainable ``examples/digits_mlp.py:DigitsMLP`` (its ``batches_per_step`` = ``--batches``).
(c) sequential: a plain loop over members in one process (1 thread), PBT decisions with the
    same strategies in memory (no store, no checkpoints: this favours (c)).

For (a) it also prints the fraction of the matmul peak reached: matmul FLOP/s of the whole run
(the MLP's forward, backward and evaluation matmuls per member-step) over the FLOP/s of the same
batched matmul shapes in a tight loop at the same thread count, measured right after the run.

Every measurement runs in a fresh subprocess; the figures are wall-clock member-steps per
second of the whole run (for (b) including starting its workers; its steady state, from the
store's score times, is printed too) and peak resident memory (for (b): driver + workers).

    python benchmarks/vectorized.py [--populations 8 32 128] [--batches 50] [--steps 6] [--interval 2]
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import random
import resource
import subprocess
import sys
import tempfile
import time
from typing import Any

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SPACE = {
    "lr": {"type": "float", "low": 1e-4, "high": 0.5, "log": True},
    "momentum": {"type": "float", "low": 0.0, "high": 0.99},
    "weight_decay": {"type": "float", "low": 1e-6, "high": 1e-2, "log": True},
}
EXPLOIT = {"name": "truncation", "quantile": 0.25}
EXPLORE = {"name": "perturb_or_resample", "resample_probability": 0.25}
BATCH = 64


def _digits() -> Any:
    sys.path.insert(0, os.path.join(ROOT, "examples"))
    import digits_mlp

    return digits_mlp


def _rss_mib(who: int) -> float:
    return resource.getrusage(who).ru_maxrss / 1024.0  # Linux: KiB


# -- the three ways (each runs in its own subprocess) ---------------------------------------------
def run_vectorized(args: argparse.Namespace, workdir: str) -> dict[str, Any]:
    import torch

    import pbtune.vectorized as pv

    torch.set_num_threads(args.threads)
    digits = _digits()
    x, y, xv, yv = digits.digits_split()
    started = time.perf_counter()
    result = pv.train(
        digits.make_mlp,
        SPACE,
        population=args.population,
        data=(x, y),
        eval_data=(xv, yv),
        batch_size=BATCH,
        batches_per_step=args.batches,
        steps=args.steps,
        ready={"interval": args.interval},
        exploit=EXPLOIT,
        explore=EXPLORE,
        mode="max",
        device=args.device,
        name="bench-vec",
        seed=0,
        storage=f"sqlite:///{workdir}/pbt.db",
        checkpoints=os.path.join(workdir, "ck"),
    )
    wall = time.perf_counter() - started
    return {
        "wall_s": wall,
        "member_steps": result.member_steps,
        "best": result.best.score,
        "chunks": result.chunk_plan.chunks if result.chunk_plan else 1,
        "peak_rss_mib": _rss_mib(resource.RUSAGE_SELF),
    }


def run_process(args: argparse.Namespace, workdir: str) -> dict[str, Any]:
    import pbtune

    storage = f"sqlite:///{workdir}/pbt.db"
    started = time.perf_counter()
    result = pbtune.run(
        os.path.join(ROOT, "examples", "digits_mlp.py") + ":DigitsMLP",
        name="bench-proc",
        progress=False,
        space=SPACE,
        population=args.population,
        workers=2,
        budget=args.steps,
        ready={"interval": args.interval},
        exploit=EXPLOIT,
        explore=EXPLORE,
        mode="max",
        seed=0,
        trainable_args={"batch_size": BATCH, "batches_per_step": args.batches, "device": "cpu"},
        storage=storage,
        checkpoints=os.path.join(workdir, "ck"),
    )
    wall = time.perf_counter() - started
    scores = pbtune.open_store(storage).scores("bench-proc")
    first = min(s.time for s in scores)
    later = [s for s in scores if s.time > first]
    span = max(s.time for s in scores) - first
    steady = len(later) * args.batches / span if span > 0 else float("nan")
    driver, workers = _rss_mib(resource.RUSAGE_SELF), _rss_mib(resource.RUSAGE_CHILDREN)
    return {
        "wall_s": wall,
        "member_steps": args.population * args.steps * args.batches,
        "best": result.best.score,
        "steady_steps_per_s": steady,
        "peak_rss_mib": driver + 2 * workers,
    }  # RUSAGE_CHILDREN: the largest worker


def run_sequential(args: argparse.Namespace, workdir: str) -> dict[str, Any]:
    del workdir
    import torch
    import torch.nn.functional as F

    from pbtune import Space
    from pbtune.member import decision_rng
    from pbtune.strategies import Exploit, PerturbOrResample, Ready, Truncation
    from pbtune.types import MemberRecord, MemberState

    torch.set_num_threads(1)
    digits = _digits()
    device = torch.device(args.device)
    x, y, xv, yv = (t.to(device) for t in digits.digits_split())
    space, ready = Space(SPACE), Ready(interval=args.interval)
    exploit = Truncation(quantile=EXPLOIT["quantile"])
    explore = PerturbOrResample(resample_probability=EXPLORE["resample_probability"])
    started = time.perf_counter()
    init = random.Random("0:init")  # the same initial hyperparameters as the engines
    hparams = [space.sample(init) for _ in range(args.population)]
    torch.manual_seed(0)
    models = [digits.make_mlp().to(device) for _ in range(args.population)]
    opts = [
        torch.optim.SGD(m.parameters(), lr=h["lr"], momentum=h["momentum"], weight_decay=h["weight_decay"])
        for m, h in zip(models, hparams, strict=True)
    ]
    generator = torch.Generator().manual_seed(0)
    scores = [0.0] * args.population
    last_ready = [0] * args.population
    for step in range(1, args.steps + 1):
        for i, (model, opt) in enumerate(zip(models, opts, strict=True)):
            model.train()
            for _ in range(args.batches):
                index = torch.randint(len(x), (BATCH,), generator=generator).to(device)
                opt.zero_grad(set_to_none=True)
                F.cross_entropy(model(x[index]), y[index]).backward()
                opt.step()
            model.eval()
            with torch.no_grad():
                scores[i] = float((model(xv).argmax(dim=1) == yv).float().mean())
        if step >= args.steps:
            break
        snapshot = [
            MemberRecord(
                "seq",
                i,
                MemberState.RUNNING,
                step,
                hparams[i],
                score=scores[i],
                score_step=step,
                checkpoint="memory",
                checkpoint_step=step,
                last_ready_step=last_ready[i],
            )
            for i in range(args.population)
        ]
        states = [
            (copy.deepcopy(m.state_dict()), copy.deepcopy(o.state_dict())) for m, o in zip(models, opts, strict=True)
        ]
        for i in range(args.population):
            if not ready.is_ready(snapshot[i]):
                continue
            last_ready[i] = step
            decision = exploit.decide(snapshot, i, decision_rng(0, i, step, "exploit"), mode="max")
            if isinstance(decision, Exploit):
                models[i].load_state_dict(states[decision.donor_id][0])
                opts[i].load_state_dict(states[decision.donor_id][1])
                hparams[i], _ = explore.explore(hparams[decision.donor_id], space, decision_rng(0, i, step, "explore"))
                for group in opts[i].param_groups:
                    group.update(
                        lr=hparams[i]["lr"], momentum=hparams[i]["momentum"], weight_decay=hparams[i]["weight_decay"]
                    )
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    wall = time.perf_counter() - started
    return {
        "wall_s": wall,
        "member_steps": args.population * args.steps * args.batches,
        "best": max(scores),
        "peak_rss_mib": _rss_mib(resource.RUSAGE_SELF),
    }


WAYS = {"vectorized": run_vectorized, "process": run_process, "sequential": run_sequential}


def _warm_imports() -> None:
    """Import what the ways import lazily (torch.optim pulls in torch._dynamo: seconds), outside the timing."""
    import torch

    import pbtune.vectorized.engine  # noqa: F401

    torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=0.1)
    torch.func.vmap(torch.sin)(torch.zeros(2))
    _digits().digits_split()


# Matmul FLOPs of one member-step of the 64-128-10 MLP at batch 64: forward (x@W1, h@W2),
# backward (grad of h, grads of W2 and W1; the input needs no grad), and the evaluation pass
# over the 360 validation samples shared by the PBT step's ``--batches`` updates.
LAYERS = ((64, 128), (128, 10))
VALIDATION = 360


def flops_per_member_step(batches: int) -> float:
    forward = sum(2 * BATCH * i * o for i, o in LAYERS)
    backward = 2 * BATCH * 128 * 10 + sum(2 * BATCH * i * o for i, o in LAYERS)
    evaluation = sum(2 * VALIDATION * i * o for i, o in LAYERS) / batches
    return forward + backward + evaluation


def matmul_peak(population: int, repeat: int = 20, trials: int = 5) -> float:
    """FLOP/s of the step's batched matmuls alone: the same shapes, contiguous operands, this
    process's threads; the fastest of ``trials`` timings (a peak, not an average)."""
    import torch

    def rand(*shape: int) -> torch.Tensor:
        return torch.randn(population, *shape)

    # (left, right) operands of forward x@W1, h@W2 and backward g@W2^T, h^T@g, x^T@h
    pairs = [(rand(BATCH, 64), rand(64, 128)), (rand(BATCH, 128), rand(128, 10)), (rand(BATCH, 10), rand(10, 128)),
             (rand(128, BATCH), rand(BATCH, 10)), (rand(64, BATCH), rand(BATCH, 128))]
    flops = sum(2 * a.shape[0] * a.shape[1] * a.shape[2] * b.shape[2] for a, b in pairs)
    best = float("inf")
    for _ in range(trials + 1):  # the first trial warms up
        started = time.perf_counter()
        for _ in range(repeat):
            for a, b in pairs:
                torch.bmm(a, b)
        best = min(best, (time.perf_counter() - started) / repeat)
    return flops / best


def child(args: argparse.Namespace) -> None:
    os.environ.setdefault("OMP_NUM_THREADS", str(args.threads))
    _warm_imports()
    with tempfile.TemporaryDirectory() as workdir:
        figures = WAYS[args.way](args, workdir)
    figures["steps_per_s"] = figures["member_steps"] / figures["wall_s"]
    if args.way == "vectorized":  # achieved matmul FLOP/s over the same matmuls' peak, same threads
        peak = matmul_peak(args.population)
        figures["matmul_peak_gflops"] = peak / 1e9
        figures["peak_fraction"] = figures["steps_per_s"] * flops_per_member_step(args.batches) / peak
    print(json.dumps(figures))


def wait_policy(way: str) -> str:
    """OpenMP waiting for a way's run, unless OMP_WAIT_POLICY is set.

    (a) is the only process on the cores, so its threads spin between the step's hundreds of
    small parallel kernels (ACTIVE: 1.45x faster at 2 threads than PASSIVE, measured); spinning
    threads are 4x slower when other processes share the cores, so (b) and (c) keep PASSIVE
    (with 1 thread per process the setting does not matter to them).
    """
    return os.environ.get("OMP_WAIT_POLICY", "ACTIVE" if way == "vectorized" else "PASSIVE")


def measure(way: str, population: int, args: argparse.Namespace, threads: int = 1) -> dict[str, Any]:
    command = [
        sys.executable,
        os.path.abspath(__file__),
        "--child",
        way,
        "--population",
        str(population),
        "--threads",
        str(threads),
        "--batches",
        str(args.batches),
        "--steps",
        str(args.steps),
        "--interval",
        str(args.interval),
        "--device",
        args.device,
    ]
    env = dict(os.environ, OMP_NUM_THREADS=str(threads), OMP_WAIT_POLICY=wait_policy(way))
    done = subprocess.run(command, capture_output=True, text=True, env=env, cwd=ROOT, timeout=1800)
    if done.returncode != 0:
        raise SystemExit(f"{way} at population {population} failed:\n{done.stderr[-4000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--populations", type=int, nargs="+", default=[8, 32, 128])
    parser.add_argument("--batches", type=int, default=50, help="minibatch updates per PBT step")
    parser.add_argument("--steps", type=int, default=6, help="PBT steps per member")
    parser.add_argument("--interval", type=int, default=2, help="ready interval in PBT steps")
    parser.add_argument("--repeat", type=int, default=1, help="runs per figure; the fastest is kept")
    parser.add_argument("--vectorized-threads", type=int, nargs="+", default=[1, 2], help="torch threads for (a)")
    parser.add_argument("--child", choices=sorted(WAYS), help=argparse.SUPPRESS)
    parser.add_argument("--population", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--threads", type=int, default=1, help=argparse.SUPPRESS)
    parser.add_argument("--device", default="cpu", help="device of (a) and (c), e.g. cuda; (b) stays on the CPU")
    args = parser.parse_args()
    if args.child:
        args.way = args.child
        child(args)
        return

    print(
        f"digits MLP 64-128-10, batch {BATCH}; a PBT step = {args.batches} minibatch updates + evaluation; "
        f"ready every {args.interval} steps; {args.steps} steps per member; cpu count {os.cpu_count()}"
    )
    print("member-step = one minibatch SGD update of one member; figures are member-steps per second (wall)")
    print(
        f"OMP_WAIT_POLICY: vectorized {wait_policy('vectorized')}, others {wait_policy('process')}; "
        f"load average before: {os.getloadavg()}\n"
    )
    header = f"{'pop':>5} {'way':<22} {'steps/s':>10} {'wall s':>8} {'peak MiB':>9} {'best acc':>9}  note"
    print(header)
    print("-" * len(header))
    summary: dict[str, dict[str, Any]] = {}
    for population in args.populations:
        rows: dict[str, dict[str, Any]] = {}
        plan = [(f"vectorized x{t} thread{'s' if t > 1 else ''}", "vectorized", t) for t in args.vectorized_threads]
        plan += [("process, 2 workers", "process", 1), ("sequential, 1 thread", "sequential", 1)]
        for label, way, threads in plan:
            runs = [measure(way, population, args, threads) for _ in range(args.repeat)]
            rows[label] = max(runs, key=lambda r: r["steps_per_s"])
            r = rows[label]
            note = ""
            if way == "process":
                note = f"steady state {r['steady_steps_per_s']:.0f} steps/s (after worker start-up)"
            elif way == "vectorized":
                note = (f"{r['chunks']} chunk(s); {100 * r['peak_fraction']:.0f}% of its matmul peak "
                        f"({r['matmul_peak_gflops']:.1f} GFLOP/s, same shapes and threads)")
            print(
                f"{population:>5} {label:<22} {r['steps_per_s']:>10.0f} {r['wall_s']:>8.2f} "
                f"{r['peak_rss_mib']:>9.0f} {r['best']:>9.3f}  {note}"
            )
        vec = {t: rows[label] for (label, way, t) in plan if way == "vectorized"}
        proc, seq = rows["process, 2 workers"], rows["sequential, 1 thread"]
        best_threads = max(vec, key=lambda t: vec[t]["steps_per_s"])
        best_vec = vec[best_threads]["steps_per_s"]
        per_thread = "; ".join(
            f"{t} thread{'s' if t > 1 else ''}: {v['steps_per_s'] / seq['steps_per_s']:.1f}x sequential, "
            f"{v['steps_per_s'] / proc['steps_per_s']:.1f}x process"
            for t, v in vec.items()
        )
        print(
            f"{'':>5} ratios (vectorized at its best, {best_threads} thread(s)): "
            f"{best_vec / seq['steps_per_s']:.1f}x sequential, {best_vec / proc['steps_per_s']:.1f}x process "
            f"({best_vec / proc['steady_steps_per_s']:.1f}x the process engine's steady state)\n"
            f"{'':>5} {per_thread}\n"
        )
        figures: dict[str, Any] = {
            "vectorized_steps_per_s": round(best_vec, 1),
            "vectorized_threads": best_threads,
            "process_steps_per_s": round(proc["steps_per_s"], 1),
            "process_steady_steps_per_s": round(proc["steady_steps_per_s"], 1),
            "sequential_steps_per_s": round(seq["steps_per_s"], 1),
            "vectorized_over_sequential": round(best_vec / seq["steps_per_s"], 2),
            "vectorized_over_process": round(best_vec / proc["steps_per_s"], 2),
        }
        for t, v in vec.items():
            figures[f"vectorized_{t}thread_steps_per_s"] = round(v["steps_per_s"], 1)
            figures[f"vectorized_{t}thread_peak_fraction"] = round(v["peak_fraction"], 3)
        figures["peak_rss_mib"] = {
            "vectorized": round(max(v["peak_rss_mib"] for v in vec.values())),
            "process": round(proc["peak_rss_mib"]),
            "sequential": round(seq["peak_rss_mib"]),
        }
        summary[str(population)] = figures
    print(f"load average after: {os.getloadavg()} (other processes on this machine slow every figure)")
    print(json.dumps(summary))


if __name__ == "__main__":
    main()
