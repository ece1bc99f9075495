"""CLI commands of the server subsystem: ``pbtune server`` and ``pbtune server-status``.

Heavy imports (FastAPI, uvicorn, httpx) happen inside the commands, so ``pbtune`` starts fast
and works without the ``server`` extra.
"""

from __future__ import annotations

import os
import stat
from typing import TYPE_CHECKING

import typer
from rich.console import Console
from rich.markup import escape

from pbtune.errors import PBTuneError

if TYPE_CHECKING:
    from pbtune.server.runner import PBTServer

__all__ = ["register", "server", "server_status"]

console = Console()


_SHARED_ROOT = typer.Option(
    None, "--shared-root", help="Folder on a shared filesystem whose files clients may name (repeatable).")


def _fail(message: str) -> None:
    console.print(f"[bold red]error:[/] {escape(message)}")  # messages hold "[extra]" and paths
    raise typer.Exit(code=2)


def _key(path: str) -> str:
    from pbtune.server.status import read_key_file

    key = read_key_file(path)
    if os.name == "posix" and os.stat(path).st_mode & (stat.S_IRWXG | stat.S_IRWXO):
        console.print(f"[yellow]warning:[/] {path} is readable by other users; chmod 600 it")
    return key


def server(
    port: int = typer.Option(8000, help="TCP port to listen on."),
    auth_key_file: str = typer.Option(..., "--auth-key-file", envvar="PBTUNE_AUTH_KEY_FILE",
                                      help="File holding the shared key clients must send."),
    storage: str | None = typer.Option(None, help="SQLAlchemy URL of the population store."),
    checkpoints: str | None = typer.Option(None, help="Checkpoint folder or fsspec URL."),
    config: str | None = typer.Option(None, help="JSON/YAML run config (space, population, strategies)."),
    run: str = typer.Option("pbt", help="Run name when --config is not given."),
    host: str = typer.Option("127.0.0.1", help="Interface to listen on (0.0.0.0: every interface)."),
    population: int | None = typer.Option(
        None, help="Members in the population (without --config; default: grows with the clients that join)."),
    mode: str | None = typer.Option(None, help="max or min: the direction of the metric."),
    ready_interval: int = typer.Option(1, help="Saves between exploit decisions (without --config)."),
    budget: int | None = typer.Option(None, help="Steps per member (default: unbounded)."),
    lease_seconds: float = typer.Option(60.0, help="A client silent this long frees its member."),
    sync: bool = typer.Option(False, "--sync", help="Generational PBT (without --config): should_exploit()"
                              " waits until the member's whole generation reached its step."),
    shared_root: list[str] | None = _SHARED_ROOT,
    upload_dir: str | None = typer.Option(None, help="Where uploaded checkpoints are staged."),
    max_upload_mb: float = typer.Option(1024.0, help="Largest checkpoint upload, in MiB."),
    ssl_certfile: str | None = typer.Option(None, help="TLS certificate (PEM): serve HTTPS."),
    ssl_keyfile: str | None = typer.Option(None, help="TLS private key (PEM)."),
    log_level: str = typer.Option("warning", help="uvicorn log level."),
    tensorboard: str | None = typer.Option(
        None, "--tensorboard", help="Write TensorBoard event files to this folder while serving."),
) -> None:
    """Serve a PBT population over HTTP to PBTClient members on other processes and machines."""
    from pbtune.server import require_extra

    if mode not in (None, "max", "min"):
        _fail(f"--mode must be max or min; got {mode!r}")
    try:
        runner = require_extra("pbtune.server.runner")
        key = _key(auth_key_file)
        instance = runner.PBTServer(
            port, key, None if mode is None else mode == "max", host=host, config=config, run=run,
            storage=storage, checkpoints=checkpoints, population=population, budget=budget,
            ready_interval=ready_interval, lease_seconds=lease_seconds, sync=sync,
            shared_roots=tuple(shared_root or ()),
            upload_dir=upload_dir, max_upload_bytes=max(1, int(max_upload_mb * (1 << 20))),
            ssl_certfile=ssl_certfile, ssl_keyfile=ssl_keyfile, log_level=log_level, background=False,
            tensorboard=tensorboard,
        )
        instance.serve(announce=lambda url: _announce(instance, url))
    except (PBTuneError, ModuleNotFoundError, OSError) as exc:
        _fail(str(exc))


def _announce(instance: PBTServer, url: str) -> None:
    template = instance.template
    console.print(f"[bold]pbtune server[/] run [bold]{template['name']}[/] (store {template['storage']})"
                  f" listening on {url}", highlight=False)
    service = instance.service
    if instance.tensorboard is not None:
        console.print(escape(f"TensorBoard event files: {instance.tensorboard}; view with: tensorboard --logdir"
                             f" {instance.tensorboard} (pip install 'pbtune[tensorboard]')"), highlight=False,
                      soft_wrap=True)
    if service is not None and service.reopened:  # never continue an old experiment silently
        console.print(f"continuing run {template['name']!r} already in the store; pass --run NAME (or another"
                      " --storage) for a new experiment", highlight=False)


def server_status(
    url: str = typer.Argument(..., help="The server's URL, e.g. http://10.0.0.5:8000."),
    auth_key_file: str = typer.Option(..., "--auth-key-file", envvar="PBTUNE_AUTH_KEY_FILE",
                                      help="File holding the server's shared key."),
    as_json: bool = typer.Option(False, "--json", help="Print JSON instead of a table."),
    cacert: str | None = typer.Option(None, help="CA bundle that signed the server's certificate."),
) -> None:
    """The live population of a running server (GET /population)."""
    from pbtune.server.status import show_server_status

    try:
        show_server_status(url, auth_key_file, as_json=as_json, cacert=cacert, console=console)
    except (PBTuneError, ModuleNotFoundError) as exc:
        _fail(str(exc))


def register(app: typer.Typer) -> None:
    """Add ``server`` and ``server-status`` to the ``pbtune`` command."""
    app.command("server")(server)
    app.command("server-status")(server_status)
