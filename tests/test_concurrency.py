"""8 processes write into one SQLite store at once: no lost update, no 'database is locked'."""

from __future__ import annotations

import multiprocessing as mp
from pathlib import Path

from pbtune.store import open_store

PROCESSES = 8
REPORTS = 60
INCREMENTS = 25


def hammer(url: str, member_id: int) -> None:
    store = open_store(url)
    for step in range(1, REPORTS + 1):
        store.report("r", member_id, step, float(step))
        if step <= INCREMENTS:
            while True:  # compare-and-set increment of a counter every process shares
                shared = store.get_member("r", 0)
                new = {"count": shared.hparams["count"] + 1}
                if store.set_hparams("r", 0, new, expected_version=shared.version, kind="count") is not None:
                    break


def test_concurrent_processes_lose_no_update(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path}/c.db"
    store = open_store(url)
    store.create_run("r", {})
    store.add_member("r", 0, {"count": 0})
    for i in range(1, PROCESSES + 1):
        store.add_member("r", i, {})
    context = mp.get_context("spawn")
    procs = [context.Process(target=hammer, args=(url, i)) for i in range(1, PROCESSES + 1)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(timeout=240)
    assert [p.exitcode for p in procs] == [0] * PROCESSES  # a StoreError would exit non-zero
    assert store.get_member("r", 0).hparams["count"] == PROCESSES * INCREMENTS
    assert len([e for e in store.events("r") if e.kind == "count"]) == PROCESSES * INCREMENTS
    assert len(store.scores("r")) == PROCESSES * REPORTS
    assert all(store.get_member("r", i).step == REPORTS for i in range(1, PROCESSES + 1))
