"""Population store under load: ready-point latency and throughput, SQLite vs PostgreSQL.

One operation is the store side of a member's ready point, exactly as the engine's worker makes
it: ``Member.report(step, score, checkpoint, decide=True)`` (one transaction: the report, the
checkpoint bookkeeping, the ranking in SQL and, for a member that continues, the ready check),
then ``should_exploit`` and, for a member in the bottom tail, ``exploit`` + ``explore`` (pin the
donor's checkpoint, write the exploit, unpin; write the explore). Checkpoint files are not
written (a null checkpoint store hands out references).

W worker processes (spawned, started together) run operations on their share of a population
of P members for a fixed time. Reported: p50/p99 latency of one operation, p50 of the report
(+ decision) part and of the exploit part, the throughput of all workers together, and
the raw-driver floor: the same work in plain DB-API (one indexed UPDATE, a score INSERT, a rank
COUNT and, in the bottom tail, a top-k SELECT; one transaction), measured in the same run by one
process.

    python benchmarks/store.py                                  # the full grid, ~3-4 minutes
    python benchmarks/store.py --populations 16 --workers 1,4 --seconds 1 --backends sqlite

PostgreSQL runs in a temporary database on --pg-admin (skipped with a note when unreachable).
``--sqlite-busy-ms`` adds SQLite variants with another busy_timeout (the store's is 20 ms and
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

from pbtune.config import RunConfig
from pbtune.member import Member
from pbtune.store import SQLStore
from pbtune.store.base import CheckpointRef

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


class _NullCheckpoints:
    """Checkpoint references without files: the benchmark measures the population store."""

    def put(self, local_path: str, *, run: str, member_id: int, step: int) -> CheckpointRef:
        return CheckpointRef(key=f"{run}/m{member_id}/s{step}-{random.getrandbits(40):x}", step=step,
                             sha256="0" * 64, size=1)

    def copy(self, key: str, sha256: str, *, run: str, member_id: int, step: int) -> CheckpointRef:
        return self.put(key, run=run, member_id=member_id, step=step)

    def fetch(self, key: str, sha256: str) -> str:
        return key

    def delete(self, key: str) -> None:
        pass


def _config(population: int) -> RunConfig:
    space = {"lr": {"type": "float", "low": 0.001, "high": 0.1, "log": True}}
    return RunConfig(name=RUN, space=space, population=population, ready={"interval": 1}, keep_checkpoints=KEEP)


def ready_point(member: Member, step: int, rng: random.Random) -> tuple[float, float, bool]:
    """One ready point; returns (report + decision seconds, exploit seconds, exploited)."""
    t0 = time.perf_counter()
    member.report(step, rng.random(), checkpoint="unused", decide=True)
    exploit = member.should_exploit()
    t1 = time.perf_counter()
    exploited = False
    if exploit and member.exploit() is not None:
        member.explore()
        exploited = True
    return t1 - t0, time.perf_counter() - t1, exploited


def worker_main(job: Job, results: Any) -> None:
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    store = _open(job.url, job.busy_ms)
    rng = random.Random(job.index)
    config = _config(job.population)
    checkpoints: Any = _NullCheckpoints()
    mine = [Member(store, checkpoints, config, m, worker=None)
            for m in range(job.population) if m % job.workers == job.index]
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
        t0 = time.perf_counter()
        report_s, exploit_s, exploited = ready_point(member, member.step + 1, rng)
        latencies.append(time.perf_counter() - t0)
        reports.append(report_s)
        if exploited:
            decides.append(exploit_s)
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
        "exploit_p50_ms": round(1000 * _pct([x for p in parts for x in p["decides"]], 0.5), 2),
        "exploit_share": round(sum(p["exploits"] for p in parts) / max(1, ops), 3),
    }


def _prepare(url: str, population: int) -> None:
    store = SQLStore(url)
    config = _config(population)
    store.create_run(RUN, config.to_dict())
    rng = random.Random(0)
    store.add_members(RUN, [{"lr": rng.uniform(0.001, 0.1)} for _ in range(population)])
    for member in range(population):  # every member scored, with a checkpoint: donors exist from the start
        store.report(RUN, member, 1, rng.random(),
                     checkpoint=CheckpointRef(f"{RUN}/m{member}/s1", 1, "0" * 64, 1))
    store.close()


_FLOOR = [  # the work of a ready point in plain SQL: report, rank COUNT, top-k SELECT
    "UPDATE pbtune_members SET step = {p}, score = {p}, score_step = {p}, version = version + 1"
    " WHERE run = {p} AND member_id = {p}",
    "INSERT INTO pbtune_scores (run, member_id, step, score, time) VALUES ({p}, {p}, {p}, {p}, {p})",
    "SELECT COUNT(*), SUM(CASE WHEN score > {p} OR (score = {p} AND member_id < {p}) THEN 1 ELSE 0 END)"
    " FROM pbtune_members WHERE run = {p} AND score_step IS NOT NULL",
    "SELECT * FROM pbtune_members WHERE run = {p} AND score_step IS NOT NULL"
    " ORDER BY score DESC, member_id LIMIT {p}",
]


def floor(url: str, population: int, seconds: float) -> dict[str, Any]:
    """The raw-driver floor of one ready point (one process, one transaction per operation)."""
    import sqlalchemy as sa

    parsed = sa.engine.make_url(url)
    if parsed.get_backend_name() == "sqlite":
        import sqlite3

        conn: Any = sqlite3.connect(str(parsed.database), isolation_level=None)
        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute("PRAGMA synchronous=NORMAL")
        begin, placeholder = "BEGIN IMMEDIATE", "?"
    else:
        import psycopg

        conn = psycopg.connect(host=parsed.host, port=parsed.port or 5432, user=parsed.username,
                               password=parsed.password, dbname=parsed.database, autocommit=True)
        begin, placeholder = "BEGIN", "%s"
    update, insert, rank, top = (sql.format(p=placeholder) for sql in _FLOOR)
    rng = random.Random(1)
    steps = dict.fromkeys(range(population), 1)
    latencies: list[float] = []
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        member = rng.randrange(population)
        steps[member] += 1
        score = rng.random()
        t0 = time.perf_counter()
        cur = conn.cursor()
        cur.execute(begin)
        cur.execute(update, (steps[member], score, steps[member], RUN, member))
        cur.execute(insert, (RUN, member, steps[member], score, time.time()))
        count, ahead = cur.execute(rank, (score, score, member, RUN)).fetchone()
        tail = max(1, count // 5)
        if ahead >= count - tail:  # the bottom tail reads the top tail (donors), as the store does
            cur.execute(top, (RUN, tail)).fetchall()
        cur.execute("COMMIT")
        latencies.append(time.perf_counter() - t0)
    conn.close()
    return {"floor_p50_ms": round(1000 * _pct(latencies, 0.5), 3),
            "floor_ops_s": round(len(latencies) / seconds, 1)}


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
                        if workers == 1 and busy is None:  # the floor beside the store's own figure
                            rows[-1].update(floor(url, population, args.seconds))
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
              f"{'report p50':>10} {'exploit p50':>11} {'exploits':>8} {'floor p50':>9} {'floor ops/s':>11}")
        _HEADER = True
    print(f"{row['backend']:<20} {row['population']:>5} {row['workers']:>7} {row['throughput_ops_s']:>8} "
          f"{row['p50_ms']:>8} {row['p99_ms']:>8} {row['report_p50_ms']:>10} {row['exploit_p50_ms']:>11} "
          f"{row['exploit_share']:>8} {row.get('floor_p50_ms', ''):>9} {row.get('floor_ops_s', ''):>11}", flush=True)


if __name__ == "__main__":
    main()
