"""`pbtune worker`: plain processes that join a run through the stores."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from scaleout_helpers import audit, quadratic_config, start_worker, stop_all
from typer.testing import CliRunner

from pbtune.checkpoints import CheckpointStore
from pbtune.cli import app
from pbtune.errors import InvalidConfigError
from pbtune.member import Population
from pbtune.scaleout.commands import parse_options
from pbtune.store import open_store
from pbtune.types import MemberState


def _wait(procs: list, seconds: float) -> None:
    deadline = time.monotonic() + seconds
    for proc in procs:
        proc.wait(timeout=max(1.0, deadline - time.monotonic()))


def test_workers_on_postgres_and_s3_finish_the_run(pg_url: str, s3_bucket: str, moto_endpoint: str,
                                                    tmp_path: Path) -> None:
    """The multi-machine setup on loopback: PostgreSQL store, S3 checkpoints, two processes."""
    config = quadratic_config("ext", pg_url, s3_bucket, budget=15)
    ckpt = CheckpointStore(s3_bucket, endpoint_url=moto_endpoint, cache_dir=str(tmp_path / "cache"))
    population = Population(config, checkpoints=ckpt)
    procs = [start_worker("ext", pg_url, s3_bucket, "-o", f"endpoint_url={moto_endpoint}") for _ in range(2)]
    try:
        _wait(procs, 120)
    finally:
        stop_all(procs)
    assert [p.returncode for p in procs] == [0, 0], [p.stderr.read().decode()[-2000:] for p in procs if p.stderr]
    assert audit(population.store, ckpt, config) == []
    assert any(e.kind == "exploit" for e in population.store.events("ext"))


def test_a_late_worker_waits_for_the_run_and_leaves_when_it_is_done(tmp_path: Path) -> None:
    storage = f"sqlite:///{tmp_path}/pbt.db"
    config = quadratic_config("late", storage, str(tmp_path / "ck"), population=2, budget=10)
    early = start_worker("late", storage, None, "--wait", "30")
    time.sleep(0.5)  # the worker starts before the run exists
    population = Population(config)
    try:
        _wait([early], 60)
        late = start_worker("late", storage)  # joins a finished run: nothing to do, exit 0
        _wait([late], 60)
    finally:
        stop_all([early])
    assert early.returncode == 0 and late.returncode == 0
    assert audit(population.store, population.checkpoints, config) == []


def test_workers_started_from_one_config_file_create_the_run_once(tmp_path: Path) -> None:
    """No driver: every task of a SLURM job runs ``pbtune worker --config exp.json``."""
    config = quadratic_config("fromfile", f"sqlite:///{tmp_path}/pbt.db", str(tmp_path / "ck"), population=3,
                              budget=10)
    path = tmp_path / "exp.json"
    path.write_text(json.dumps(config.to_dict()))
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    procs = [subprocess.Popen([sys.executable, "-m", "pbtune.cli", "worker", "--config", str(path), "--poll", "0.1"],
                              env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE) for _ in range(2)]
    try:
        _wait(procs, 90)
    finally:
        stop_all(procs)
    assert [p.returncode for p in procs] == [0, 0], [p.stderr.read().decode()[-1500:] for p in procs if p.stderr]
    store = open_store(config.storage)
    assert [r.name for r in store.list_runs()] == ["fromfile"]
    assert audit(store, CheckpointStore(config.checkpoints), config) == []


def test_sigterm_gives_the_member_back_at_once(tmp_path: Path) -> None:
    """A stopped worker (SLURM preemption, pod eviction) frees its member without waiting for the lease."""
    storage = f"sqlite:///{tmp_path}/pbt.db"
    # segments of 200 steps x 50 ms: the member seen held at step 5 is still the worker's at SIGTERM
    # (with short segments the time-sharing worker may already have switched to the other member)
    config = quadratic_config("term", storage, str(tmp_path / "ck"), population=2, budget=400, lease_seconds=600,
                              ready={"interval": 200}, trainable_args={"step_seconds": 0.05})
    population = Population(config)
    proc = start_worker("term", storage)
    held: list = []
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and not held:
            held = [m for m in population.members() if m.lease_owner and m.step >= 5]
            time.sleep(0.1)
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=60)
    finally:
        stop_all([proc])
    assert held and proc.returncode == 128 + signal.SIGTERM
    # with a 600 s lease, only a lease given up at once lets new workers claim both members now
    claims = [population.store.claim("term", f"next{i}", 600, config.budget) for i in range(2)]
    taken = {m.member_id: m for m in claims if m is not None}
    resumed = taken.get(held[0].member_id)
    assert resumed is not None and resumed.state is MemberState.RUNNING
    assert resumed.step == (resumed.checkpoint_step or 0)  # rolled back to its last checkpoint
    assert population.store.events("term", resumed.member_id)[-1].kind == "resume"


def test_worker_errors_are_clear(tmp_path: Path) -> None:
    storage = f"sqlite:///{tmp_path}/pbt.db"
    runner = CliRunner()
    missing = runner.invoke(app, ["worker", "--run", "nope", "--storage", storage])
    assert missing.exit_code == 2 and "no run named 'nope'" in missing.output
    Population(quadratic_config("notrain", storage, str(tmp_path / "ck"), trainable=None))
    untrained = runner.invoke(app, ["worker", "--run", "notrain", "--storage", storage])
    assert untrained.exit_code == 2 and "--trainable" in untrained.output
    bad = runner.invoke(app, ["worker", "--run", "notrain", "--storage", storage, "-o", "novalue"])
    assert bad.exit_code == 2 and "KEY=VALUE" in bad.output


def test_parse_options_reads_json_values() -> None:
    assert parse_options(["a=1", "b=x", 'c={"d": true}'], "-o") == {"a": 1, "b": "x", "c": {"d": True}}
    with pytest.raises(InvalidConfigError):
        parse_options(["=1"], "-o")
