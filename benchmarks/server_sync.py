"""Generational (sync) PBT over the server: what waiting for the generation costs.

A ``pbtune server`` process (SQLite store, population = clients, ready every 2 saves) and one
process per client. Each client "trains" ``--steps`` steps whose lengths follow one fixed
schedule (client i is ``1 + spread * i / (n - 1)`` times slower than client 0, each step
jittered by +-``--jitter``, seeded), saves a small checkpoint (shared filesystem) and calls
``should_exploit()`` after every step, exploiting and exploring when told to. The same
schedule runs asynchronously and generationally, side by side.

The bound a generational run cannot beat is the lockstep one: every generation lasts as long
as its slowest member. The overhead of waiting is the wall time above that bound (the server's
requests and the clients' polling: a waiting client asks again with backoff from 50 ms up to
the server's ``retry_after``, a tenth of ``lease_seconds`` but at most 0.5 s).

    python benchmarks/server_sync.py [--clients 8] [--steps 20] [--step-seconds 0.1] [--lease-seconds 60]
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import random
import signal
import socket
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

KEY = "benchmark-key-0123456789"
READY_INTERVAL = 2  # what pbtune.testing.server_process starts the server with


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def schedule(clients: int, steps: int, step_seconds: float, spread: float, jitter: float) -> list[list[float]]:
    """Seconds of "training" of each client at each step (the same in both modes)."""
    return [[step_seconds * (1 + spread * i / max(1, clients - 1))
             * (1 + jitter * random.Random(f"{i}:{s}").uniform(-1, 1)) for s in range(steps)]
            for i in range(clients)]


def client_main(url: str, index: int, workdir: str, seconds: list[float], barrier: Any, results: Any) -> None:
    from pbtune.server.client import PBTClient

    client = PBTClient(url, None, KEY, os.path.join(workdir, "space.csv"), checkpoint_mode="shared",
                       cache_dir=os.path.join(workdir, f"cache{index}"), retry_seconds=60)
    weights = os.path.join(workdir, f"w{index}.bin")
    exploits = 0
    barrier.wait()
    for step, pause in enumerate(seconds, start=1):
        time.sleep(pause)
        with open(weights, "wb") as handle:
            handle.write(os.urandom(1024))
        client.save(weights, -abs(client.hparams["lr"] - 0.01) + 0.001 * step, step=step)
        if client.should_exploit() and client.exploit() is not None:
            client.explore()
            exploits += 1
    client.finish()
    client.close()
    results.put({"waited_s": client.generation_wait_seconds, "exploits": exploits, "done": time.perf_counter()})


def run_mode(sync: bool, args: argparse.Namespace, seconds: list[list[float]], workdir: Path) -> dict[str, Any]:
    from pbtune.testing.server_process import start_server

    key_file = workdir / "key"
    key_file.write_text(KEY)
    (workdir / "space.csv").write_text("name,min,max,scale\nlr,1e-4,1e-1,log\n")
    port = free_port()
    extra = ["--shared-root", str(workdir), "--lease-seconds", str(args.lease_seconds), "--run",
             "sync" if sync else "async", *(["--sync"] if sync else [])]
    server = start_server(workdir, port, key_file, f"sqlite:///{workdir}/pbt.db", args.clients, extra)
    try:
        context = mp.get_context("spawn")
        barrier = context.Barrier(args.clients + 1)
        results = context.Queue()
        procs = [context.Process(target=client_main, args=(f"http://127.0.0.1:{port}", i, str(workdir),
                                                           seconds[i], barrier, results))
                 for i in range(args.clients)]
        for proc in procs:
            proc.start()
        barrier.wait(timeout=300)  # every client has joined: start together
        started = time.perf_counter()
        collected = [results.get(timeout=600) for _ in procs]
        wall = max(r["done"] for r in collected) - started
        for proc in procs:
            proc.join()
    finally:
        server.send_signal(signal.SIGTERM)
        server.wait(timeout=30)
    lockstep = sum(max(column) for column in zip(*seconds, strict=True))
    alone = max(sum(row) for row in seconds)
    bound = lockstep if sync else alone
    generations = args.steps // READY_INTERVAL
    return {
        "mode": "sync" if sync else "async", "wall_s": round(wall, 3), "bound_s": round(bound, 3),
        "overhead_s": round(wall - bound, 3),
        "overhead_per_generation_ms": round(1000 * (wall - bound) / generations, 1),
        "mean_waited_s": round(sum(r["waited_s"] for r in collected) / len(collected), 3),
        "exploits": sum(r["exploits"] for r in collected),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--clients", type=int, default=8)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--step-seconds", type=float, default=0.1, help="client 0's mean step")
    parser.add_argument("--spread", type=float, default=0.5, help="the slowest client's extra time per step")
    parser.add_argument("--jitter", type=float, default=0.2, help="each step's relative jitter")
    parser.add_argument("--lease-seconds", type=float, default=60.0)
    args = parser.parse_args()
    seconds = schedule(args.clients, args.steps, args.step_seconds, args.spread, args.jitter)
    rows = []
    for sync in (False, True):
        with tempfile.TemporaryDirectory(prefix="pbtune-bench-sync-") as workdir:
            rows.append(run_mode(sync, args, seconds, Path(workdir)))
    print(f"{args.clients} clients, {args.steps} steps, ready every {READY_INTERVAL}, lease {args.lease_seconds:g} s"
          f" (retry_after {min(0.5, max(0.05, args.lease_seconds / 10)):g} s); bound: async = the slowest client"
          " alone, sync = lockstep (each generation as long as its slowest member)")
    print(f"{'mode':6} {'wall s':>8} {'bound s':>8} {'overhead s':>11} {'per gen ms':>11} {'waited s':>9}"
          f" {'exploits':>9}")
    for row in rows:
        print(f"{row['mode']:6} {row['wall_s']:8.2f} {row['bound_s']:8.2f} {row['overhead_s']:11.2f}"
              f" {row['overhead_per_generation_ms']:11.1f} {row['mean_waited_s']:9.2f} {row['exploits']:9d}")
    figures = {f"{row['mode']}_{key}": value for row in rows for key, value in row.items() if key != "mode"}
    print(json.dumps({"clients": args.clients, "steps": args.steps, "step_seconds": args.step_seconds,
                      "lease_seconds": args.lease_seconds, "python": sys.version.split()[0], **figures}))


if __name__ == "__main__":
    main()
