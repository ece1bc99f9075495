"""Faults: killed workers, many concurrent writers, a database that drops its connections.

All traffic stays on loopback; every test is bounded in time. The long variants are marked
``slow`` (CI runs them with ``pytest -m slow``).
"""

from __future__ import annotations

import json
import random
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import sqlalchemy as sa
from scaleout_helpers import audit, quadratic_config, start_worker, stop_all

from pbtune.member import Population
from pbtune.scaleout.postgres import terminate_backends
from pbtune.store import SQLStore

HAMMER = str(Path(__file__).with_name("scaleout_hammer.py"))
COUNTER = 10_000


def _storage(kind: str, tmp_path: Path, request: pytest.FixtureRequest) -> str:
    if kind == "sqlite":
        return f"sqlite:///{tmp_path}/pbt.db"
    return str(request.getfixturevalue("pg_url"))


# -- chaos: SIGKILL random workers, start replacements -------------------------------------------
def _chaos(storage: str, tmp_path: Path, *, population: int, workers: int, budget: int, kill_every: float,
           max_kills: int, deadline_s: float) -> tuple[int, Population]:
    """Every ``kill_every`` seconds SIGKILL a random worker that is training a member (killing
    one still starting up would test nothing), and start a replacement; at most ``max_kills``
    times, so that the run is bounded even when the machine is slow."""
    config = quadratic_config("chaos", storage, str(tmp_path / "ck"), population=population, workers=workers,
                              budget=budget, lease_seconds=2.0, trainable_args={"step_seconds": 0.05})
    pop = Population(config)
    rng = random.Random(0)
    names = iter(f"chaos-{i}" for i in range(1000))

    def launch() -> tuple[str, subprocess.Popen[bytes]]:
        name = next(names)
        return name, start_worker("chaos", storage, None, "--worker-id", name)

    procs = [launch() for _ in range(workers)]
    kills = 0
    deadline = time.monotonic() + deadline_s
    next_kill = time.monotonic() + kill_every
    try:
        while True:
            members = pop.members()
            if all(m.state.is_final for m in members):
                break
            assert time.monotonic() < deadline, f"run not done in {deadline_s}s: {members}"
            busy = [i for i, (name, proc) in enumerate(procs)
                    if proc.poll() is None and any(m.lease_owner == name for m in members)]
            if time.monotonic() >= next_kill and busy and kills < max_kills:
                victim = rng.choice(busy)
                procs[victim][1].kill()  # SIGKILL: no cleanup, no lease release
                procs[victim][1].wait()
                kills += 1
                procs[victim] = launch()
                next_kill = time.monotonic() + kill_every
            time.sleep(0.05)
    finally:
        stop_all([proc for _, proc in procs])
    problems = audit(pop.store, pop.checkpoints, config)
    assert problems == [], problems
    return kills, pop


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["sqlite", "postgresql"])
def test_chaos_three_workers_twelve_members(kind: str, tmp_path: Path, request: pytest.FixtureRequest) -> None:
    kills, pop = _chaos(_storage(kind, tmp_path, request), tmp_path, population=12, workers=3, budget=60,
                        kill_every=4.0, max_kills=10, deadline_s=400)
    assert kills >= 3
    events = pop.store.events("chaos")
    assert any(e.kind == "resume" for e in events) and any(e.kind == "exploit" for e in events)


# -- many writers: no lost update ----------------------------------------------------------------
def _hammer(storage: str, processes: int, reports: int, increments: int) -> None:
    store = SQLStore(storage)
    store.create_run("hammer", {})
    for member_id in range(processes):
        store.add_member("hammer", member_id, {})
    store.add_member("hammer", COUNTER, {"n": 0})
    start_at = str(time.time() + 2.0 + 0.15 * processes)  # after every interpreter has started
    procs = [
        subprocess.Popen([sys.executable, HAMMER, storage, "hammer", str(i), str(reports), str(increments), start_at],
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        for i in range(processes)
    ]
    outputs = [p.communicate(timeout=600) for p in procs]
    assert [p.returncode for p in procs] == [0] * processes, [err.decode()[-1500:] for _, err in outputs]
    results = [json.loads(out.decode().strip().splitlines()[-1]) for out, _ in outputs]

    scores = store.scores("hammer")
    for member_id in range(processes):
        mine = [s.step for s in scores if s.member_id == member_id]
        assert mine == list(range(1, reports + 1)), f"member {member_id}: {len(mine)} score rows"
        member = store.get_member("hammer", member_id)
        assert (member.step, member.score, member.version) == (reports, float(reports), reports)
    counter = store.get_member("hammer", COUNTER)
    assert sum(r["increments"] for r in results) == processes * increments
    assert counter.hparams == {"n": processes * increments}  # every compare-and-set that won counted
    assert sum(1 for e in store.events("hammer", COUNTER) if e.kind == "count") == processes * increments
    store.close()


@pytest.mark.parametrize("kind", ["sqlite", "postgresql"])
def test_concurrent_writers_lose_no_update_quick(kind: str, tmp_path: Path, request: pytest.FixtureRequest) -> None:
    _hammer(_storage(kind, tmp_path, request), processes=3, reports=60, increments=15)


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["sqlite", "postgresql"])
def test_sixteen_processes_five_hundred_reports(kind: str, tmp_path: Path, request: pytest.FixtureRequest) -> None:
    _hammer(_storage(kind, tmp_path, request), processes=16, reports=500, increments=25)


# -- PostgreSQL drops every connection, again and again ------------------------------------------
def _drop_connections_run(pg_admin: str, pg_url: str, tmp_path: Path, *, population: int, budget: int,
                          every: float, step_seconds: float = 0.01) -> int:
    config = quadratic_config("drops", pg_url, str(tmp_path / "ck"), population=population, budget=budget,
                              lease_seconds=10.0, trainable_args={"step_seconds": step_seconds})
    pop = Population(config)
    database = sa.engine.make_url(pg_url).database or ""
    stop = threading.Event()
    killed = [0]

    def killer() -> None:
        while not stop.wait(every):
            killed[0] += terminate_backends(pg_admin, database)

    procs = [start_worker("drops", pg_url) for _ in range(2)]
    thread = threading.Thread(target=killer, daemon=True)
    thread.start()
    try:
        for proc in procs:
            proc.wait(timeout=240)
    finally:
        stop.set()
        thread.join()
        stop_all(procs)
    errors = [p.stderr.read().decode()[-1500:] if p.stderr else "" for p in procs]
    assert [p.returncode for p in procs] == [0, 0], errors
    problems = audit(pop.store, pop.checkpoints, config)  # the driver's own pool reconnects too
    assert problems == [], problems
    return killed[0]


def test_workers_reconnect_when_postgres_drops_connections(pg_admin: str, pg_url: str, tmp_path: Path) -> None:
    # Steps of 50 ms: the run lasts at least 4 x 20 x 0.05 / 2 = 2 s, about 10 rounds of the
    # killer, however fast the machine (at 10 ms steps a fast machine finished after 3 kills).
    killed = _drop_connections_run(
        pg_admin, pg_url, tmp_path, population=4, budget=20, every=0.2, step_seconds=0.05
    )
    assert killed >= 4  # sessions really were cut while the workers trained


@pytest.mark.slow
def test_workers_survive_a_long_storm_of_dropped_connections(pg_admin: str, pg_url: str, tmp_path: Path) -> None:
    killed = _drop_connections_run(pg_admin, pg_url, tmp_path, population=8, budget=120, every=0.2)
    assert killed >= 50
