"""Population store under load: ready-point latency and throughput, SQLite vs PostgreSQL.

One operation is the store side of a member's ready point, exactly the transactions the
Member makes (checkpoint files are not written; their references are):

    report(step, score, checkpoint) -> collect_checkpoints -> get_member -> list_members
    -> Truncation.decide -> mark_ready_checked            (continue)
                         -> pin, apply_exploit, unpin, collect, set_hparams (exploit + explore)

W worker processes (spawned, started together) run operations on their share of a
population of P members for a fixed time. Reported: p50/p99 latency of one operation, p50 of
its report part and of its decide part, and the throughput of all workers together.

    python benchmarks/store.py                                  # the full grid, ~3-4 minutes
    python benchmarks/store.py --populations 16 --workers 1,4 --seconds 1 --backends sqlite

PostgreSQL runs in a temporary database on --pg-admin (skipped with a note when unreachable).
``--sqlite-busy-ms`` adds SQLite variants with another busy_timeout (the store's is 100 ms and
it retries itself); ``0`` adds none. Last line: one JSON object with every figure.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import multiprocessing as mp
import os
import platform
import random
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass
from typing import Any

from pbtune.store import SQLStore
from pbtune.store.base import CheckpointRef
from pbtune.strategies import Exploit, Truncation

RUN = "bench"
KEEP = 2


@dataclass(frozen=True)
class Job:
    url: str
    population: int
    workers: int
    index: int
    seconds: float
    start_at: float
    busy_ms: int | None  # SQLite busy_timeout override (None: the store's own)


def _open(url: str, busy_ms: int | None) -> SQLStore:
    store = SQLStore(url)
    if busy_ms is not None:
        import sqlalchemy as sa

        def _busy(dbapi_connection: Any, _record: Any) -> None:  # runs after the store's own PRAGMAs
            dbapi_connection.execute(f"PRAGMA busy_timeout={int(busy_ms)}")

        sa.event.listen(store._engine, "connect", _busy)  # benchmark-only experiment
        store._engine.dispose()  # reconnect with the override
    return store


def _ref(member: int, step: int, worker: int) -> CheckpointRef:
    return CheckpointRef(key=f"{RUN}/m{member}/s{step}-w{worker}-{random.getrandbits(40):x}", step=step,
                         sha256="0" * 64, size=1)


def ready_point(store: SQLStore, member: int, step: int, worker: int, rng: random.Random,
                strategy: Truncation) -> tuple[float, float, bool]:
    """One ready point; returns (report seconds, decide seconds, exploited)."""
    t0 = time.perf_counter()
    store.report(RUN, member, step, rng.random(), checkpoint=_ref(member, step, worker))
    store.collect_checkpoints(RUN, member, KEEP)
    t1 = time.perf_counter()
    me = store.get_member(RUN, member)
    population = store.list_members(RUN)
    decision = strategy.decide(population, member, rng, mode="max")
    exploited = False
    if isinstance(decision, Exploit):
        holder = f"w{worker}-{member}-{step}"
        if store.pin_checkpoint(RUN, decision.donor_checkpoint, holder, 60):
            donor = next(m for m in population if m.member_id == decision.donor_id)
            done = store.apply_exploit(RUN, member, expected_version=me.version, donor_id=donor.member_id,
                                       donor_step=decision.donor_step, hparams=donor.hparams,
                                       checkpoint=_ref(member, step, worker), summary="bench")
            store.unpin_checkpoint(RUN, decision.donor_checkpoint, holder)
            store.collect_checkpoints(RUN, member, KEEP)
            if done is not None:
                new = {"lr": float(done.hparams["lr"]) * rng.choice((0.8, 1.2))}
                store.set_hparams(RUN, member, new, expected_version=done.version, summary="bench explore")
                exploited = True
    else:
        store.mark_ready_checked(RUN, member, step, me.version)
    t2 = time.perf_counter()
    return t1 - t0, t2 - t1, exploited


def worker_main(job: Job, results: Any) -> None:
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    store = _open(job.url, job.busy_ms)
    rng = random.Random(job.index)
    strategy = Truncation()
    mine = [m for m in range(job.population) if m % job.workers == job.index]
    steps = {m: store.get_member(RUN, m).step for m in mine}
    time.sleep(max(0.0, job.start_at - time.time()))
    latencies: list[float] = []
    reports: list[float] = []
    decides: list[float] = []
    exploits = 0
    end = time.monotonic() + job.seconds
    i = 0
    while time.monotonic() < end:
        member = mine[i % len(mine)]
        i += 1
        steps[member] += 1
        t0 = time.perf_counter()
        report_s, decide_s, exploited = ready_point(store, member, steps[member], job.index, rng, strategy)
        latencies.append(time.perf_counter() - t0)
        reports.append(report_s)
        decides.append(decide_s)
        exploits += exploited
    store.close()
    results.put({"latencies": latencies, "reports": reports, "decides": decides, "exploits": exploits})


def _pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))] if ordered else float("nan")


def measure(url: str, population: int, workers: int, seconds: float, busy_ms: int | None) -> dict[str, Any]:
    ctx = mp.get_context("spawn")
    results = ctx.Queue()
    start_at = time.time() + 1.5 + 0.25 * workers  # after every process has imported and connected
    jobs = [Job(url, population, workers, i, seconds, start_at, busy_ms) for i in range(workers)]
    procs = [ctx.Process(target=worker_main, args=(job, results)) for job in jobs]
    for proc in procs:
        proc.start()
    parts = [results.get(timeout=120 + seconds) for _ in procs]
    for proc in procs:
        proc.join(timeout=30)
    latencies = [x for p in parts for x in p["latencies"]]
    ops = len(latencies)
    return {
        "population": population, "workers": workers, "ops": ops,
        "throughput_ops_s": round(ops / seconds, 1),
        "p50_ms": round(1000 * _pct(latencies, 0.50), 2),
        "p99_ms": round(1000 * _pct(latencies, 0.99), 2),
        "report_p50_ms": round(1000 * statistics.median([x for p in parts for x in p["reports"]]), 2),
        "decide_p50_ms": round(1000 * statistics.median([x for p in parts for x in p["decides"]]), 2),
        "exploit_share": round(sum(p["exploits"] for p in parts) / max(1, ops), 3),
    }


def _prepare(url: str, population: int) -> None:
    store = SQLStore(url)
    store.create_run(RUN, {"bench": True})
    rng = random.Random(0)
    for member in range(population):
        store.add_member(RUN, member, {"lr": rng.uniform(0.001, 0.1)})
    store.close()


def _backends(spec: str, busy_variants: str) -> list[tuple[str, str, int | None]]:
    """(label, kind, SQLite busy_timeout override) for every backend to measure."""
    out: list[tuple[str, str, int | None]] = []
    for backend in [b.strip() for b in spec.split(",") if b.strip()]:
        if backend == "sqlite":
            out.append(("sqlite", "sqlite", None))
            for ms in [int(x) for x in busy_variants.split(",") if x.strip() and int(x) > 0]:
                out.append((f"sqlite busy={ms}ms", "sqlite", ms))
        elif backend in ("postgresql", "postgres", "pg"):
            out.append(("postgresql", "postgresql", None))
        else:
            raise SystemExit(f"--backends: unknown backend {backend!r} (sqlite, postgresql)")
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--backends", default="sqlite,postgresql")
    parser.add_argument("--populations", default="16,256,1024")
    parser.add_argument("--workers", default="1,4,16")
    parser.add_argument("--seconds", type=float, default=3.0, help="measured seconds per cell")
    parser.add_argument("--sqlite-busy-ms", default="5000",
                        help="extra SQLite busy_timeout variants, measured at the largest worker count")
    parser.add_argument("--pg-admin", default=os.environ.get("PBTUNE_BENCH_POSTGRES",
                                                             "postgresql+psycopg://postgres@127.0.0.1:5432/test"))
    args = parser.parse_args()
    populations = [int(x) for x in args.populations.split(",")]
    worker_counts = [int(x) for x in args.workers.split(",")]

    from pbtune.scaleout.postgres import reachable, temporary_database

    rows: list[dict[str, Any]] = []
    notes: list[str] = []
    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="pbtune-bench-") as tmp:
        for label, kind, busy in _backends(args.backends, args.sqlite_busy_ms):
            if kind == "postgresql" and (reason := reachable(args.pg_admin)) is not None:
                notes.append(f"postgresql skipped: {reason}")
                continue
            counts = worker_counts if busy is None else [max(worker_counts)]  # variants: the contended case
            for population in populations:
                with contextlib.ExitStack() as stack:
                    if kind == "sqlite":
                        url = f"sqlite:///{tmp}/{len(rows)}-{population}.db"
                    else:
                        url = stack.enter_context(temporary_database(args.pg_admin, prefix="pbtune_bench"))
                    _prepare(url, population)
                    for workers in counts:
                        rows.append({"backend": label, **measure(url, population, workers, args.seconds, busy)})
                        _print_row(rows[-1])
    elapsed = time.monotonic() - started
    print()
    for note in notes:
        print(note)
    print(f"total {elapsed:.0f} s on {os.cpu_count()} CPUs ({platform.python_implementation()} "
          f"{platform.python_version()}, {sys.platform})")
    print(json.dumps({"benchmark": "store", "seconds_per_cell": args.seconds, "cpus": os.cpu_count(),
                      "total_s": round(elapsed, 1), "results": rows, "notes": notes}))


_HEADER = False


def _print_row(row: dict[str, Any]) -> None:
    global _HEADER
    if not _HEADER:
        print(f"{'backend':<20} {'pop':>5} {'workers':>7} {'ops/s':>8} {'p50 ms':>8} {'p99 ms':>8} "
              f"{'report p50':>10} {'decide p50':>10} {'exploits':>8}")
        _HEADER = True
    print(f"{row['backend']:<20} {row['population']:>5} {row['workers']:>7} {row['throughput_ops_s']:>8} "
          f"{row['p50_ms']:>8} {row['p99_ms']:>8} {row['report_p50_ms']:>10} {row['decide_p50_ms']:>10} "
          f"{row['exploit_share']:>8}", flush=True)


if __name__ == "__main__":
    main()
