"""Shared pieces of the scale-out tests: worker subprocesses and a whole-run audit."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Sequence

import sqlalchemy as sa

from pbtune.checkpoints import CheckpointStore
from pbtune.config import RunConfig
from pbtune.store import _schema as schema
from pbtune.store.base import PopulationStore
from pbtune.types import MemberState

SPACE = {"lr": {"type": "float", "low": 0.01, "high": 0.4}}


def quadratic_config(name: str, storage: str, checkpoints: str, **overrides: object) -> RunConfig:
    settings: dict[str, object] = dict(
        name=name, space=SPACE, population=4, workers=2, budget=20, ready={"interval": 5},
        storage=storage, checkpoints=checkpoints, trainable="pbtune.testing.trainables:Quadratic",
        trainable_args={"step_seconds": 0.005}, exploit={"name": "truncation", "quantile": 0.25},
    )
    settings.update(overrides)
    return RunConfig(**settings)  # type: ignore[arg-type]


def start_worker(run: str, storage: str, checkpoints: str | None = None, *extra: str,
                 env: dict[str, str] | None = None) -> subprocess.Popen[bytes]:
    """``pbtune worker`` in a subprocess, exactly as a scheduler would start it."""
    args = [sys.executable, "-m", "pbtune.cli", "worker", "--run", run, "--storage", storage, "--poll", "0.1"]
    if checkpoints is not None:
        args += ["--checkpoints", checkpoints]
    args += list(extra)
    full_env = {**os.environ, "OMP_NUM_THREADS": "1", **(env or {})}
    return subprocess.Popen(args, env=full_env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)


def stop_all(procs: Sequence[subprocess.Popen[bytes]]) -> None:
    for proc in procs:
        if proc.poll() is None:
            proc.kill()
        proc.wait(timeout=30)


def checkpoint_rows(storage: str, run: str) -> dict[str, tuple[int, str]]:
    """The checkpoint bookkeeping table: key -> (member, sha256)."""
    engine = sa.create_engine(storage)
    try:
        with engine.connect() as conn:
            rows = conn.execute(
                sa.select(schema.checkpoints.c.key, schema.checkpoints.c.member_id, schema.checkpoints.c.sha256)
                .where(schema.checkpoints.c.run == run)
            )
            return {r.key: (r.member_id, r.sha256) for r in rows}
    finally:
        engine.dispose()


def stored_objects(checkpoints: CheckpointStore, run: str) -> set[str]:
    """Keys of the committed checkpoint objects (no temporary ones) under the run's prefix."""
    fs, root = checkpoints.fs, checkpoints.root
    prefix = f"{root}/{run}"
    if not fs.exists(prefix):
        return set()
    found = set()
    for path in fs.find(prefix, withdirs=False):
        key = path[len(root) + 1:] if path.startswith(root + "/") else path.split(root.lstrip("/") + "/", 1)[-1]
        found.add(key)
    return found


def audit(store: PopulationStore, checkpoints: CheckpointStore, config: RunConfig) -> list[str]:
    """Everything wrong with a finished run (empty when it is sound).

    Checks: every member finished at its budget with a final score; every member's checkpoint
    exists and matches its checksum; every exploit's donor is a member of the run; no exploit
    copies from the member itself; every checkpoint row points at an existing object.
    """
    problems: list[str] = []
    members = store.list_members(config.name)
    ids = {m.member_id for m in members}
    if len(members) != config.population:
        problems.append(f"{len(members)} members, expected {config.population}")
    for m in members:
        if m.state is not MemberState.FINISHED or m.step != config.budget:
            problems.append(f"member {m.member_id} is {m.state.value} at step {m.step}")
        if m.checkpoint is None:
            problems.append(f"member {m.member_id} has no checkpoint")
            continue
        try:
            checkpoints.fetch(m.checkpoint, m.checkpoint_sha256 or "")
        except Exception as exc:  # noqa: BLE001 - collect every problem
            problems.append(f"member {m.member_id}: {type(exc).__name__}: {exc}")
    for e in store.events(config.name):
        if e.member_id not in ids:
            problems.append(f"event {e.id} names unknown member {e.member_id}")
        if e.kind == "exploit" and (e.donor_id not in ids or e.donor_id == e.member_id):
            problems.append(f"exploit event {e.id} of member {e.member_id} has donor {e.donor_id}")
    rows = checkpoint_rows(config.storage, config.name)
    for m in members:
        if m.checkpoint is not None and m.checkpoint not in rows:
            problems.append(f"member {m.member_id}'s checkpoint {m.checkpoint} has no bookkeeping row")
    for key in rows:
        if not checkpoints.exists(key):
            problems.append(f"checkpoint row {key} has no object")
    return problems
