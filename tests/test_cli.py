from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from pbtune.cli import app
from pbtune.errors import PBTuneError

runner = CliRunner()


def _config(tmp_path: Path, **extra: object) -> Path:
    data = {
        "name": "cli", "trainable": "pbtune.testing.trainables:Quadratic", "population": 4, "workers": 2,
        "budget": 10, "ready": {"interval": 5},
        "space": {"lr": {"type": "float", "low": 0.001, "high": 0.3, "log": True}},
        "storage": f"sqlite:///{tmp_path}/cli.db", "checkpoints": str(tmp_path / "ck"), **extra,
    }
    path = tmp_path / "config.json"
    path.write_text(json.dumps(data))
    return path


def test_run_status_best_lineage(tmp_path: Path) -> None:
    storage = f"sqlite:///{tmp_path}/cli.db"
    result = runner.invoke(app, ["run", str(_config(tmp_path)), "--quiet"])
    assert result.exit_code == 0, result.output
    assert "best member" in result.output and "cli.db" in result.output

    status = runner.invoke(app, ["status", "cli", "--storage", storage, "--json"])
    assert status.exit_code == 0, status.output
    rows = json.loads(status.output)["members"]
    assert len(rows) == 4 and all(r["state"] == "finished" and r["step"] == 10 for r in rows)

    table = runner.invoke(app, ["status", "cli", "--storage", storage])
    assert "finished" in table.output and "4/4 members done" in table.output

    best = json.loads(runner.invoke(app, ["best", "cli", "--storage", storage]).output)
    assert best["score"] == max(r["score"] for r in rows)
    assert best["schedule"][0]["step"] == 0

    lineage = runner.invoke(app, ["lineage", "cli", "best", "--storage", storage])
    assert lineage.exit_code == 0 and "schedule of member" in lineage.output

    assert runner.invoke(app, ["runs", "--storage", storage]).output.strip() == "cli"


def test_bad_config_field_is_a_clear_error(tmp_path: Path) -> None:
    result = runner.invoke(app, ["run", str(_config(tmp_path, population=1)), "--quiet"])
    assert result.exit_code == 2
    assert "`population` of `config` must be an integer >= 2; got 1" in " ".join(result.output.split())


def test_invalid_yaml_and_unknown_store_scheme_are_clear_errors_not_tracebacks(tmp_path: Path) -> None:
    bad_yaml = tmp_path / "bad.yaml"
    bad_yaml.write_text("name: x\nspace: {lr: [1, 2\n")
    result = runner.invoke(app, ["run", str(bad_yaml), "--quiet"])
    assert result.exit_code == 2
    assert "must be valid YAML" in " ".join(result.output.split()) and "Traceback" not in result.output
    scheme = runner.invoke(app, ["run", str(_config(tmp_path)), "--quiet", "--storage", "foo://db"])
    assert scheme.exit_code == 2 and "`storage` of `config` must be a database URL" in " ".join(scheme.output.split())
    for command in (["runs"], ["status", "x"], ["best", "x"]):
        read = runner.invoke(app, [*command, "--storage", "foo://db"])
        assert read.exit_code == 2, (command, read.output)
        assert "must be a database URL" in " ".join(read.output.split()), read.output


def test_read_commands_in_an_empty_folder_create_nothing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """issue 14 item 11: `pbtune runs` / `status X` created pbtune-runs/pbtune.db."""
    monkeypatch.chdir(tmp_path)
    listed = runner.invoke(app, ["runs"])
    assert listed.exit_code == 0 and "no runs in sqlite:///pbtune-runs/pbtune.db" in listed.output
    status = runner.invoke(app, ["status", "X"])
    assert status.exit_code == 2 and "no runs in sqlite:///pbtune-runs/pbtune.db" in " ".join(status.output.split())
    assert runner.invoke(app, ["best", "X"]).exit_code == 2
    assert list(tmp_path.iterdir()) == []


_READ_ONLY_STATUS = """
import os, sys
from typer.testing import CliRunner
from pbtune.cli import app
if os.getuid() == 0:  # root ignores permissions: read as nobody, after loading every module as root
    CliRunner().invoke(app, ["status", "cli", "--storage", sys.argv[2], "--json"])
    os.setgid(65534); os.setuid(65534)
result = CliRunner().invoke(app, ["status", "cli", "--storage", sys.argv[1], "--json"])
print(result.exit_code); print(result.output)
import traceback
if result.exc_info and result.exit_code == 1: traceback.print_exception(*result.exc_info)
"""


def test_status_works_on_a_read_only_folder(tmp_path: Path) -> None:
    """issue 14 item 11: on a read-only file system even `status` failed (it opened for writing)."""
    import os
    import stat
    import subprocess
    import sys
    import tempfile

    from pbtune.store import SQLStore

    folder = Path(tempfile.mkdtemp(prefix="pbtune-ro-"))  # outside pytest's 0700 folders: nobody can enter
    try:
        db = folder / "pbt.db"
        writer = SQLStore(f"sqlite:///{db}")
        writer.create_run("cli", {"mode": "max"})
        writer.add_member("cli", 0, {"lr": 0.1})
        writer.close()
        db.chmod(stat.S_IRUSR | stat.S_IRGRP | stat.S_IROTH)
        folder.chmod(stat.S_IRUSR | stat.S_IXUSR | stat.S_IRGRP | stat.S_IXGRP | stat.S_IROTH | stat.S_IXOTH)
        env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
        warm = tmp_path / "warm.db"  # the same command as root first (loads every module nobody may not read)
        SQLStore(f"sqlite:///{warm}").create_run("cli", {})
        done = subprocess.run([sys.executable, "-c", _READ_ONLY_STATUS, f"sqlite:///{db}", f"sqlite:///{warm}"],
                              capture_output=True,
                              text=True, timeout=60, env=env, cwd="/")
        code, _, output = done.stdout.partition("\n")
        assert code == "0", done.stdout + done.stderr
        assert json.loads(output)["members"][0]["hparams"] == {"lr": 0.1}
        assert sorted(p.name for p in folder.iterdir()) == ["pbt.db"]  # nothing written next to it
    finally:
        folder.chmod(0o755)
        for path in folder.iterdir():
            path.unlink()
        folder.rmdir()


def test_run_with_failed_members_exits_non_zero_and_names_them(tmp_path: Path) -> None:
    """issue 14 item 5: `pbtune run` exited 0 and showed 100% done when members failed."""
    space = {"lr": {"type": "float", "low": 0.001, "high": 0.3, "log": True},
             "tag": {"type": "choice", "values": ["ok", "boom"]}}
    config = _config(tmp_path, trainable="pbtune.testing.trainables:Flaky", space=space, seed=3,
                     ready={"interval": 100})  # no exploit within the budget: the boom members stay boom
    result = runner.invoke(app, ["run", str(config), "--quiet"])
    output = " ".join(result.output.split())
    from pbtune.store import SQLStore

    members = SQLStore(f"sqlite:///{tmp_path}/cli.db").list_members("cli")
    failed = [m.member_id for m in members if m.state.value == "failed"]
    assert 0 < len(failed) < len(members), "the seed must give both kinds of member"
    assert result.exit_code == 1, result.output
    assert f"{len(failed)} of 4 members failed" in output and "this member always fails" in output
    for member_id in failed:
        assert f"member {member_id} at step" in output
    assert f"{len(failed)} FAILED" in output  # the progress line says so too
    assert "(100%)" not in output


@pytest.mark.parametrize("signame", ["SIGINT", "SIGTERM"])
def test_stopping_pbtune_run_gives_the_leases_back(tmp_path: Path, signame: str) -> None:
    """issue 14 item 6: after Ctrl-C the resumed run waited ~lease_seconds for its first step."""
    import os
    import signal
    import subprocess
    import sys
    import time

    from pbtune.store import SQLStore

    config = _config(tmp_path, budget=10_000, lease_seconds=600,
                     trainable_args={"step_seconds": 0.01})  # leases that would outlive the test
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    proc = subprocess.Popen([sys.executable, "-m", "pbtune.cli", "run", str(config), "--quiet"], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    store = None
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            held = []
            try:
                store = store or SQLStore(f"sqlite:///{tmp_path}/cli.db", read_only=True)
                held = [m for m in store.list_members("cli") if m.lease_owner and m.step > 0]
            except PBTuneError:  # the store or the run is still being created
                pass
            if len(held) == 2:  # both workers hold a member and train
                break
            time.sleep(0.1)
        else:
            pytest.fail("the workers never started training")
        proc.send_signal(getattr(signal, signame))
        output, _ = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 130, output
    assert "run the same command to resume" in " ".join(output.split())
    assert store is not None
    now = time.time()
    members = store.list_members("cli")
    assert all((m.lease_expires or 0.0) <= now for m in members), [(m.member_id, m.lease_expires) for m in members]
    store.close()
    # every member, the ones the stopped workers held included, can be claimed at once (not in 600 s);
    # which one a single claim takes depends on how far each got (the least advanced goes first)
    heirs = SQLStore(f"sqlite:///{tmp_path}/cli.db")
    claimed = {heir.member_id for i in range(len(members))
               if (heir := heirs.claim("cli", f"resumed-{i}", 60, 10_000)) is not None}
    held = {m.member_id for m in members if m.lease_owner}
    assert held and held <= claimed, (held, claimed)


def test_unknown_run_and_member(tmp_path: Path) -> None:
    storage = f"sqlite:///{tmp_path}/empty.db"
    from pbtune.store import SQLStore

    SQLStore(storage).close()  # a store without that run (a missing store: see the test above)
    result = runner.invoke(app, ["status", "nope", "--storage", storage])
    assert result.exit_code == 2 and "no run named 'nope'" in result.output
    bad = runner.invoke(app, ["lineage", "nope", "x", "--storage", storage])
    assert bad.exit_code == 2


def test_launcher_options_are_checked(tmp_path: Path) -> None:
    bad = runner.invoke(app, ["run", str(_config(tmp_path)), "--quiet", "--launcher", "slurm"])
    assert bad.exit_code == 2
    assert "`--launcher` of `pbtune run` must be 'local' or 'ray'" in " ".join(bad.output.split())
    mixed = runner.invoke(app, ["run", str(_config(tmp_path)), "--quiet", "--address", "auto"])
    assert mixed.exit_code == 2 and "used with --launcher ray" in " ".join(mixed.output.split())


@pytest.mark.slow
def test_run_on_ray_from_the_cli(tmp_path: Path) -> None:
    pytest.importorskip("ray", reason="Ray is an optional extra: pip install 'pbtune[ray]'")
    result = runner.invoke(app, ["run", str(_config(tmp_path)), "--quiet", "--launcher", "ray",
                                 "--resources-per-worker", '{"cpu": 0.5}'])
    assert result.exit_code == 0, result.output
    status = json.loads(runner.invoke(app, ["status", "cli", "--storage", f"sqlite:///{tmp_path}/cli.db",
                                            "--json"]).output)
    assert all(m["state"] == "finished" and m["step"] == 10 for m in status["members"])
