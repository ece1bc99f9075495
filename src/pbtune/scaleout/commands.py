"""CLI commands of the scale-out subsystem: ``pbtune worker`` and ``pbtune store upgrade``."""

from __future__ import annotations

import json
import logging
from typing import Any

import typer
from rich.console import Console

from pbtune.errors import InvalidConfigError, PBTuneError

__all__ = ["register", "parse_options"]

console = Console(stderr=True)


def parse_options(pairs: list[str], where: str) -> dict[str, Any]:
    """``["endpoint_url=http://h:9000", "anon=false"]`` -> options; values are JSON when they parse.

    Example:
        >>> parse_options(["key=abc", "use_ssl=false", "client_kwargs={\\"region_name\\": \\"x\\"}"], "--opt")
        {'key': 'abc', 'use_ssl': False, 'client_kwargs': {'region_name': 'x'}}
    """
    options: dict[str, Any] = {}
    for pair in pairs:
        key, sep, raw = pair.partition("=")
        if not sep or not key:
            raise InvalidConfigError(where, "pbtune worker", "KEY=VALUE", pair)
        try:
            options[key] = json.loads(raw)
        except json.JSONDecodeError:
            options[key] = raw
    return options


def _fail(message: str) -> None:
    console.print(f"[bold red]error:[/] {message}")
    raise typer.Exit(code=2)


def worker(
    run: str | None = typer.Option(None, "--run", "-r", help="Name of a run in the store to join."),
    config: str | None = typer.Option(
        None, "--config", help="Run config (JSON/YAML): create the run if the store lacks it, then join."),
    storage: str | None = typer.Option(
        None, "--storage", "-s", help="SQLAlchemy URL of the population store (default with --config: its own)."),
    checkpoints: str | None = typer.Option(
        None, "--checkpoints", "-c", help="Checkpoint folder or fsspec URL (default: the run's)."),
    trainable: str | None = typer.Option(
        None, "--trainable", "-t", help="module:Class or file.py:Class (default: the run's)."),
    checkpoint_option: list[str] | None = typer.Option(  # noqa: B008 - typer idiom
        None, "--checkpoint-option", "-o",
        help="fsspec option KEY=VALUE for the checkpoint store (repeatable), e.g. endpoint_url=http://minio:9000."),
    worker_id: str | None = typer.Option(None, "--worker-id", help="Unique worker name (default host-pid-random)."),
    wait: float = typer.Option(0.0, "--wait", help="Seconds to wait for the run to be created."),
    poll: float = typer.Option(0.5, "--poll", help="Seconds between claims while no member is free."),
    verbose: bool = typer.Option(False, "--verbose", "-v", help="Log lease and exploit activity."),
) -> None:
    """Train members of a run until the whole population is done (start as many as you like, anywhere)."""
    from pbtune.config import load_config
    from pbtune.scaleout.worker import Stopped, run_worker

    logging.basicConfig(level=logging.INFO if verbose else logging.WARNING,
                        format="%(asctime)s %(name)s %(levelname)s %(message)s")
    try:
        options = parse_options(checkpoint_option or [], "--checkpoint-option")
        create = None
        if config is not None:
            create = load_config(config, storage=storage, checkpoints=checkpoints, name=run)
            run, storage = create.name, create.storage
        if run is None or storage is None:
            raise InvalidConfigError("--run/--storage", "pbtune worker", "given (or use --config FILE)",
                                     run if storage else storage)
        stats = run_worker(run, storage, checkpoints=checkpoints, trainable=trainable, worker_id=worker_id,
                           storage_options=options, wait_seconds=wait, poll_seconds=poll, create_from=create)
    except Stopped as stop:
        console.print(f"worker stopped by signal {stop.signum}; its members are free for other workers")
        raise typer.Exit(code=128 + stop.signum) from None
    except PBTuneError as exc:
        _fail(str(exc))
        return
    console.print(f"run {run!r} is done: this worker trained {stats.steps} steps in {stats.segments} segments"
                  f" ({stats.failures} member failures)")


store_app = typer.Typer(help="Maintain population stores.", no_args_is_help=True)


@store_app.command("upgrade")
def store_upgrade(url: str = typer.Argument(..., help="SQLAlchemy URL of the population store.")) -> None:
    """Create the pbtune tables in an empty database, or upgrade them to this pbtune's schema."""
    from pbtune.scaleout.migrations import upgrade

    try:
        done = upgrade(url)
    except PBTuneError as exc:
        _fail(str(exc))
        return
    if done.found is None:
        typer.echo(f"created pbtune schema version {done.now}")
    elif done.changed:
        typer.echo(f"upgraded pbtune schema from version {done.found} to {done.now}")
    else:
        typer.echo(f"pbtune schema is already at version {done.now}; nothing to do")


@store_app.command("version")
def store_version(url: str = typer.Argument(..., help="SQLAlchemy URL of the population store.")) -> None:
    """Print the schema version of a store and the one this pbtune uses."""
    from pbtune.scaleout.migrations import current_version
    from pbtune.store._schema import SCHEMA_VERSION

    try:
        found = current_version(url)
    except Exception as exc:  # noqa: BLE001 - report the driver's message, not a traceback
        import sqlalchemy as sa

        _fail(f"could not read {sa.engine.make_url(url).render_as_string(hide_password=True)}: {exc}")
        return
    typer.echo(json.dumps({"database": found, "pbtune": SCHEMA_VERSION}))


def register(app: typer.Typer) -> None:
    """Add ``pbtune worker`` and ``pbtune store ...`` to the ``pbtune`` command."""
    app.command("worker")(worker)
    app.add_typer(store_app, name="store")
