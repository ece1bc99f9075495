from __future__ import annotations

import subprocess
import sys

import pytest

import pbtune


def test_import_pbtune_leaves_the_stores_and_the_cli_unimported() -> None:
    code = (
        "import sys, pbtune\n"
        "heavy = {'sqlalchemy', 'fsspec', 'typer', 'rich', 'torch', 'fastapi'} & set(sys.modules)\n"
        "print(sorted(heavy))\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert done.stdout.strip() == "[]"


def test_lazy_public_names_resolve_to_their_modules() -> None:
    from pbtune.checkpoints import CheckpointStore
    from pbtune.launch import run
    from pbtune.member import Member, Population
    from pbtune.store import open_store

    assert pbtune.run is run and pbtune.open_store is open_store
    assert pbtune.CheckpointStore is CheckpointStore and pbtune.Member is Member
    from pbtune import Population as lazy_population

    assert lazy_population is Population
    assert set(pbtune.__all__) <= set(dir(pbtune))
    for name in pbtune.__all__:
        if name not in ("PBTServer", "PBTClient"):  # the server extra may be absent
            assert getattr(pbtune, name) is not None


def test_unknown_names_raise_attribute_error() -> None:
    import pbtune.engine as engine

    with pytest.raises(AttributeError, match="no_such_name"):
        pbtune.no_such_name  # noqa: B018
    with pytest.raises(AttributeError, match="nothing_here"):
        engine.nothing_here  # noqa: B018


def test_pbtune_run_gets_to_its_workers_without_rich_or_other_subsystems_commands() -> None:
    code = (
        "import sys\n"
        "from pbtune.cli import CORE_COMMANDS, _app, command_app\n"
        "from pbtune.launch import progress_display\n"
        "names = {c.name or c.callback.__name__ for c in _app.registered_commands}\n"
        "assert names == CORE_COMMANDS, names  # the commands cli.py defines, before any plugin\n"
        "command_app(['run', 'x.yaml']); progress_display('quiet'); progress_display(True)\n"
        "print(sorted(m for m in sys.modules if m.split('.')[0] == 'rich' or m.endswith('.commands')))\n"
        "command_app(['report', 'x'])\n"
        "print(sorted(m for m in sys.modules if m.endswith('.commands')))\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    before, after = done.stdout.splitlines()
    assert before == "[]"
    assert "pbtune.report.commands" in after


def test_from_pbtune_cli_import_app_has_every_command() -> None:
    code = "from pbtune.cli import app\nprint(*(c.name or c.callback.__name__ for c in app.registered_commands))"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert {"run", "report", "server", "worker"} <= set(done.stdout.split())
