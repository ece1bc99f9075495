"""PBT server under load: concurrent clients doing save + should_exploit in a loop, over HTTP.

The server runs in its own process (``pbtune server``, SQLite store, population = clients,
ready every 5 saves). Each client process joins as one member and, until the time is up,
writes a 1 KiB checkpoint, ``save()``s it and calls ``should_exploit()`` (and exploit +
explore when told to, as a training script would). Both checkpoint modes run side by side:

* shared: the server copies the checkpoint from a path under its --shared-root (1 request a save);
* upload: the client streams the bytes to the server first (2 requests a save).

Latency is per call as the client sees it (in shared mode one call is one HTTP request);
requests/s counts HTTP requests of all clients together; the server's CPU milliseconds per
request (from /proc) say what one server core can sustain, whatever else loads the machine.

    python benchmarks/server.py [--clients 16] [--duration 10] [--modes shared,upload]
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from typing import Any

KEY = "benchmark-key-0123456789"


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(q * (len(ordered) - 1))))]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def cpu_seconds(pid: int) -> float | None:
    """User + system CPU seconds of a process (Linux /proc; None elsewhere)."""
    try:
        with open(f"/proc/{pid}/stat") as handle:
            fields = handle.read().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError, IndexError):
        return None


def client_main(url: str, member_id: int, space: str, workdir: str, mode: str, duration: float,
                barrier: Any, results: Any) -> None:
    from pbtune.server.client import PBTClient

    client = PBTClient(url, None, KEY, space, member_id=member_id, checkpoint_mode=mode,
                       cache_dir=os.path.join(workdir, f"cache{member_id}"), retry_seconds=30)
    weights = os.path.join(workdir, f"w{member_id}.bin")
    save_s: list[float] = []
    decide_s: list[float] = []
    extra_requests = 0
    barrier.wait()
    deadline = time.perf_counter() + duration
    score = 0.0
    while time.perf_counter() < deadline:
        with open(weights, "wb") as handle:
            handle.write(os.urandom(1024))
        score += 0.001 * (member_id + 1)
        started = time.perf_counter()
        client.save(weights, score)
        saved = time.perf_counter()
        exploit = client.should_exploit()
        decide_s.append(time.perf_counter() - saved)
        save_s.append(saved - started)
        if exploit:  # what a training script does next (not timed: the issue times save + should_exploit)
            client.exploit()
            client.explore()
            extra_requests += 2
    client.close()
    results.put({"save_s": save_s, "decide_s": decide_s, "extra_requests": extra_requests})


def run_mode(mode: str, clients: int, duration: float, workdir: str) -> dict[str, Any]:
    port = free_port()
    key_file = os.path.join(workdir, "key")
    with open(key_file, "w") as handle:
        handle.write(KEY)
    space = os.path.join(workdir, "space.csv")
    with open(space, "w") as handle:
        handle.write("name,min,max,scale\nlr,1e-4,1e-1,log\nmomentum,0.5,0.99,linear\n")
    server = subprocess.Popen(
        [sys.executable, "-m", "pbtune.cli", "server", "--port", str(port), "--auth-key-file", key_file,
         "--storage", f"sqlite:///{workdir}/pbt.db", "--checkpoints", os.path.join(workdir, "ckpts"),
         "--population", str(max(2, clients)), "--ready-interval", "5", "--shared-root", workdir,
         "--upload-dir", os.path.join(workdir, "uploads"), "--run", f"bench-{mode}"],
        stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        import httpx

        deadline = time.monotonic() + 60
        while True:
            try:
                if httpx.get(f"{url}/health", timeout=1).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            if server.poll() is not None or time.monotonic() > deadline:
                raise SystemExit("the server did not start")
            time.sleep(0.05)
        context = mp.get_context("spawn")
        barrier = context.Barrier(clients + 1)
        results = context.Queue()
        procs = [context.Process(target=client_main, args=(url, i, space, workdir, mode, duration, barrier, results))
                 for i in range(clients)]
        for proc in procs:
            proc.start()
        barrier.wait(timeout=300)  # every client has joined: start together
        started = time.perf_counter()
        cpu_before = cpu_seconds(server.pid)
        collected = [results.get(timeout=duration + 120) for _ in procs]
        wall = time.perf_counter() - started
        cpu_after = cpu_seconds(server.pid)
        for proc in procs:
            proc.join()
    finally:
        server.send_signal(signal.SIGTERM)
        server.wait(timeout=30)
    save_s = [x for r in collected for x in r["save_s"]]
    decide_s = [x for r in collected for x in r["decide_s"]]
    calls = save_s + decide_s
    per_save = 2 if mode == "upload" else 1
    requests = per_save * len(save_s) + len(decide_s) + sum(r["extra_requests"] for r in collected)
    server_cpu = None if cpu_before is None or cpu_after is None else cpu_after - cpu_before
    return {
        "mode": mode, "clients": clients, "wall_s": wall, "iterations": len(save_s),
        "server_cpu_ms_per_request": None if server_cpu is None else 1000 * server_cpu / requests,
        "server_cpu_share": None if server_cpu is None else server_cpu / wall,
        "requests_per_s": requests / wall, "calls_per_s": len(calls) / wall,
        "p50_ms": 1000 * statistics.median(calls), "p99_ms": 1000 * percentile(calls, 0.99),
        "save_p50_ms": 1000 * statistics.median(save_s), "save_p99_ms": 1000 * percentile(save_s, 0.99),
        "should_exploit_p50_ms": 1000 * statistics.median(decide_s),
        "should_exploit_p99_ms": 1000 * percentile(decide_s, 0.99),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--clients", type=int, default=16)
    parser.add_argument("--duration", type=float, default=10.0, help="seconds of load per mode")
    parser.add_argument("--modes", default="shared,upload", help="comma-separated: shared, upload")
    args = parser.parse_args()
    rows = []
    for mode in args.modes.split(","):
        with tempfile.TemporaryDirectory() as workdir:
            rows.append(run_mode(mode.strip(), args.clients, args.duration, workdir))
    print(f"{'mode':<8}{'clients':>8}{'req/s':>9}{'calls/s':>9}{'p50 ms':>9}{'p99 ms':>9}"
          f"{'save p50':>10}{'save p99':>10}{'decide p50':>12}{'decide p99':>12}{'srv cpu ms/req':>16}")
    for r in rows:
        print(f"{r['mode']:<8}{r['clients']:>8}{r['requests_per_s']:>9.0f}{r['calls_per_s']:>9.0f}{r['p50_ms']:>9.2f}"
              f"{r['p99_ms']:>9.2f}{r['save_p50_ms']:>10.2f}{r['save_p99_ms']:>10.2f}"
              f"{r['should_exploit_p50_ms']:>12.2f}{r['should_exploit_p99_ms']:>12.2f}"
              f"{r['server_cpu_ms_per_request'] or float('nan'):>16.2f}")
    head = rows[0]
    figures: dict[str, Any] = {
        "clients": args.clients, "duration_s": args.duration, "mode": head["mode"],
        "requests_per_s": round(head["requests_per_s"], 1), "p50_ms": round(head["p50_ms"], 3),
        "p99_ms": round(head["p99_ms"], 3),
    }
    for r in rows:
        for key in ("requests_per_s", "p50_ms", "p99_ms", "save_p50_ms", "save_p99_ms", "should_exploit_p50_ms",
                    "should_exploit_p99_ms", "server_cpu_ms_per_request", "server_cpu_share"):
            figures[f"{r['mode']}_{key}"] = None if r[key] is None else round(r[key], 3)
    figures.update(cpus=os.cpu_count(), python=sys.version.split()[0])
    print(json.dumps(figures))


if __name__ == "__main__":
    main()
