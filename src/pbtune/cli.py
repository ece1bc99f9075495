"""The ``pbtune`` command line."""

from __future__ import annotations

import json
import os
import sys
import threading
import time
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

import typer

from pbtune.config import DEFAULT_DIR, RunConfig, budget_text, load_config
from pbtune.diversity import diversity
from pbtune.engine.local import run as run_population
from pbtune.errors import InvalidConfigError, NotFoundError, PBTuneError
from pbtune.launch import progress_display
from pbtune.lineage import schedule
from pbtune.ranking import Ranking, best_member, ranking_from_config
from pbtune.space import Space
from pbtune.store import open_store
from pbtune.strategies import Ready
from pbtune.types import MemberRecord, MemberState

if TYPE_CHECKING:
    from rich.table import Table

_app = typer.Typer(help="Population Based Training: run populations and inspect what they found.",
                  no_args_is_help=True, add_completion=False)


class _Console:
    """rich's Console, made on first use: ``pbtune run`` reaches its first step before rich is imported."""

    _made: Any = None

    def __getattr__(self, name: str) -> Any:
        if _Console._made is None:
            from rich.console import Console

            _Console._made = Console()
        return getattr(_Console._made, name)


def escape(text: str) -> str:
    from rich.markup import escape as rich_escape

    return rich_escape(text)


console: Any = _Console()
DEFAULT_STORAGE = f"sqlite:///{DEFAULT_DIR}/pbtune.db"

StorageOption = typer.Option(DEFAULT_STORAGE, "--storage", "-s", help="SQLAlchemy URL of the population store.")


def _fail(message: str) -> None:
    console.print(f"[bold red]error:[/] {escape(message)}")  # messages hold "[extra]" and paths
    raise typer.Exit(code=2)


def _program() -> str:
    """How the user reached this command (e.g. `.venv/bin/pbtune` after `make demo`), for hints."""
    invoked = sys.argv[0] if sys.argv else "pbtune"
    if os.path.basename(invoked) == "pbtune" and os.path.dirname(invoked):
        return os.path.relpath(invoked)
    return "pbtune"


def _fmt_hparams(hparams: Any) -> str:
    return ", ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in dict(hparams).items())


def _fmt_score(score: float | None) -> str:
    return "-" if score is None else f"{score:.6g}"


def _tensorboard_monitors(logdir: str | None) -> list[Any]:
    """``--tensorboard DIR``: the live TensorBoard monitor (tensorboardX checked now, not mid-run)."""
    if logdir is None:
        return []
    import importlib.util

    if importlib.util.find_spec("tensorboardX") is None:
        raise InvalidConfigError("--tensorboard", "pbtune run", "used with tensorboardX installed"
                                 " (pip install 'pbtune[report]')", logdir)
    from pbtune.report.tensorboard import TensorBoardMonitor

    console.print(escape(f"TensorBoard event files: {logdir}; view with: tensorboard --logdir {logdir}"
                         " (pip install 'pbtune[tensorboard]')"), highlight=False, soft_wrap=True)
    return [TensorBoardMonitor(logdir)]


@_app.command()
def run(
    config: str = typer.Argument(..., help="JSON or YAML run config."),
    workers: int | None = typer.Option(None, help="Override the number of worker processes."),
    storage: str | None = typer.Option(None, help="Override the population store URL."),
    checkpoints: str | None = typer.Option(None, help="Override the checkpoint folder/URL."),
    name: str | None = typer.Option(None, help="Override the run name."),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="Plain progress lines instead of a live view (CI logs)."),
    launcher: str = typer.Option("local", "--launcher", help="Where workers run: local (processes) or ray (actors)."),
    address: str | None = typer.Option(None, "--address", help="Ray cluster to join ('auto': the running one)."),
    resources: str | None = typer.Option(
        None, "--resources-per-worker", help='Ray resources per worker as JSON, e.g. \'{"cpu": 1, "gpu": 0.5}\'.'
    ),
    extend_budget: bool = typer.Option(
        False, "--extend-budget", help="The run exists with a smaller budget: train it (finished members too) on."
    ),
    retry_failed: bool = typer.Option(
        False, "--retry-failed", help="Failed members resume from their last checkpoint."
    ),
    tensorboard: str | None = typer.Option(
        None, "--tensorboard", help="Write TensorBoard event files to this folder while the run trains."
    ),
    mode: str = typer.Option("train", "--mode", "-m", help="train: train (or resume) it; test: evaluate the saved "
                             "best member (or one-model file) on the test split (the trainable's evaluate())."),
    member: str = typer.Option("best", "--member", help="With --mode test: 'best', 'all' or a member id."),
) -> None:
    """Run (or resume) the population described by CONFIG on local worker processes or Ray actors.

    A file with `hparams` instead of `space` (or a legacy fc.json/conv.json) trains one model here.
    """
    from pbtune._run_modes import handle_run_mode

    try:  # --mode test, and files that train one model
        overrides = {"workers": workers, "storage": storage, "checkpoints": checkpoints, "name": name}
        if handle_run_mode(config, mode, member, overrides, console, quiet=quiet):
            return
    except PBTuneError as exc:
        _fail(str(exc))
        return
    except KeyboardInterrupt:
        console.print("[bold yellow]stopped[/]")
        raise typer.Exit(code=130) from None
    try:
        cfg = load_config(config, workers=workers, storage=storage, checkpoints=checkpoints, name=name)
        progress = "quiet" if quiet else True
        monitors = _tensorboard_monitors(tensorboard)
        if launcher == "ray":
            from pbtune.scaleout.ray_launcher import launch_ray, parse_resources

            result = launch_ray(cfg, address=address, resources_per_worker=parse_resources(resources),
                                progress=progress, extend_budget=extend_budget, retry_failed=retry_failed,
                                monitors=monitors)
        elif launcher == "local":
            if address is not None or resources is not None:
                raise InvalidConfigError("--address/--resources-per-worker", "pbtune run", "used with --launcher ray",
                                         address or resources)
            result = run_population(config=cfg, display=progress_display(progress), extend_budget=extend_budget,
                                    retry_failed=retry_failed, monitors=monitors)
        else:
            raise InvalidConfigError("--launcher", "pbtune run", "'local' or 'ray'", launcher)
    except PBTuneError as exc:
        _fail(str(exc))
        return
    except KeyboardInterrupt:  # Ctrl-C or SIGTERM: the workers were stopped and their leases given back
        console.print(f"[bold yellow]stopped[/] run [bold]{cfg.name}[/]: its members were handed back; run the"
                      " same command to resume from their last checkpoints")
        raise typer.Exit(code=130) from None
    failed = [m for m in result.members if m.state is MemberState.FAILED]
    headline = "[bold yellow]done, with failures[/]" if failed else "[bold green]done[/]"
    console.print(f"{headline} run [bold]{cfg.name}[/]: best member {result.best.member_id} "
                  f"score {_fmt_score(result.best.score)} with {_fmt_hparams(result.best.hparams)}")
    console.print(f"  store:       {cfg.storage}")
    where = cfg.checkpoints if "://" in cfg.checkpoints else os.path.abspath(cfg.checkpoints)
    console.print(f"  checkpoints: {where}")
    console.print(f"  best checkpoint: {result.checkpoint_path}")
    console.print(f"  inspect: {_program()} status {cfg.name} --storage {cfg.storage}")
    if failed:  # a run with failed members is not a success: say so, and exit non-zero
        console.print(f"[bold red]{len(failed)} of {len(result.members)} members failed:[/]")
        for m in failed:
            last = (m.error or "").strip().splitlines()[-1:] or ["no traceback"]
            console.print(f"  member {m.member_id} at step {m.step}: {last[0]}")
        console.print(f"  tracebacks: {_program()} status {cfg.name} --storage {cfg.storage} --json")
        raise typer.Exit(code=1)


def _best(members: tuple[MemberRecord, ...], cfg: Mapping[str, Any]) -> MemberRecord | None:
    """The best member by the run's stored mode and ranking."""
    return best_member(members, cfg.get("mode", "max"), ranking_from_config(cfg.get("ranking")))


def _members_table(run_name: str, members: tuple[MemberRecord, ...], best_id: int | None, ranking: Ranking) -> Table:
    from rich.table import Table

    table = Table(title=f"run {run_name}")
    smoothed = ranking.window > 1
    columns = ("member", "state", "step", "score", *(["smoothed"] if smoothed else []), "hparams", "worker")
    for column in columns:
        table.add_column(column, justify="right" if column in ("member", "step", "score", "smoothed") else "left")
    now = time.time()
    for m in members:
        mark = " *" if m.member_id == best_id else ""
        scores = [_fmt_score(m.score), *([_fmt_score(ranking.score(m))] if smoothed else [])]
        gone = m.is_gone(now)  # a dead worker's name is not shown as if it still held the member
        table.add_row(f"{m.member_id}{mark}", m.shown_state(now), str(m.step), *scores, _fmt_hparams(m.hparams),
                      f"({m.lease_owner}: lease expired)" if gone else m.lease_owner or "")
    return table


@_app.command()
def status(
    run_name: str | None = typer.Argument(None, metavar="RUN"),
    storage: str = StorageOption,
    as_json: bool = typer.Option(False, "--json", help="Print JSON instead of a table."),
    server: str | None = typer.Option(None, "--server", help="Ask a running pbtune server (URL) instead."),
    auth_key_file: str | None = typer.Option(None, "--auth-key-file", envvar="PBTUNE_AUTH_KEY_FILE",
                                                help="File holding the server's key (with --server)."),
) -> None:
    """Table of the run's members: step, score, hyperparameters, state (* marks the best).

    With --server URL, the live population of a pbtune server (RUN is not needed).
    """
    if server is not None:
        if auth_key_file is None:
            _fail("--server needs --auth-key-file (or PBTUNE_AUTH_KEY_FILE)")
            return
        try:
            from pbtune.server.status import show_server_status

            show_server_status(server, auth_key_file, as_json=as_json, console=console)
        except (PBTuneError, ModuleNotFoundError) as exc:
            _fail(str(exc))
        return
    if run_name is None:
        _fail("RUN is required (or --server URL)")
        return
    try:
        store = open_store(storage, read_only=True)
        cfg = store.get_run(run_name).config
        members = store.list_members(run_name)
        events = store.events(run_name)
    except PBTuneError as exc:
        _fail(str(exc))
        return
    top = _best(members, cfg)
    best_id = top.member_id if top is not None else None
    space = cfg.get("space")
    spread = diversity(members, events, Space(space) if isinstance(space, dict) and space else None)
    if as_json:
        rank = ranking_from_config(cfg.get("ranking"))
        rows = [{"member": m.member_id, "state": m.state.value, "step": m.step, "score": m.score,
                 "smoothed_score": rank.score(m), "hparams": dict(m.hparams), "error": m.error} for m in members]
        typer.echo(json.dumps({"run": run_name, "best": best_id, "members": rows, "diversity": {
            "lineages": spread.lineages, "roots": list(spread.roots), "spread": dict(spread.spread)}},
            indent=2, default=str))
        return
    console.print(_members_table(run_name, members, best_id, ranking_from_config(cfg.get("ranking"))))
    finished = sum(m.state.is_final for m in members)
    console.print(f"{finished}/{len(members)} members done; {budget_text(cfg.get('budget'))}")
    console.print(f"diversity: {spread.summary()}")


@_app.command()
def best(run_name: str = typer.Argument(..., metavar="RUN"), storage: str = StorageOption) -> None:
    """The best member: score, hyperparameters, checkpoint and schedule."""
    try:
        store = open_store(storage, read_only=True)
        cfg = store.get_run(run_name).config
        member = _best(store.list_members(run_name), cfg)
        if member is None:
            raise PBTuneError(f"no member of run {run_name!r} has a finite score yet (failed members are never best)")
        entries = schedule(store.events(run_name), member.member_id)
    except PBTuneError as exc:
        _fail(str(exc))
        return
    typer.echo(json.dumps({
        "run": run_name, "member": member.member_id, "score": member.score, "step": member.step,
        "hparams": dict(member.hparams), "checkpoint": member.checkpoint, "checkpoints_root": cfg.get("checkpoints"),
        "schedule": [{"step": e.step, "hparams": dict(e.hparams), "from_member": e.member_id} for e in entries],
    }, indent=2))


@_app.command()
def lineage(run_name: str = typer.Argument(..., metavar="RUN"),
            member: str = typer.Argument("best", help="Member id, or 'best'."),
            storage: str = StorageOption) -> None:
    """The hyperparameter schedule that produced MEMBER, and the events along its ancestry."""
    try:
        store = open_store(storage, read_only=True)
        cfg = store.get_run(run_name).config
        members = store.list_members(run_name)
        if member == "best":
            top = _best(members, cfg)
            if top is None:
                raise PBTuneError(f"no member of run {run_name!r} has a finite score yet")
            member_id = top.member_id
        else:
            member_id = int(member)
        if member_id not in {m.member_id for m in members}:
            _fail(f"run {run_name!r} has no member {member_id}")
        events = store.events(run_name)
    except ValueError:
        _fail(f"MEMBER must be an integer id or 'best'; got {member!r}")
        return
    except PBTuneError as exc:
        _fail(str(exc))
        return
    from rich.table import Table

    table = Table(title=f"schedule of member {member_id} (steps are the model's age)")
    for column in ("from step", "hparams", "as member", "via"):
        table.add_column(column)
    for entry in schedule(events, member_id):
        table.add_row(str(entry.step), _fmt_hparams(entry.hparams), str(entry.member_id), entry.kind)
    console.print(table)
    for event in events:
        if event.member_id == member_id and event.kind in ("exploit", "explore", "resume", "fail"):
            console.print(f"  step {event.step:>6} {event.kind:<8} {event.summary}")


@_app.command()
def runs(storage: str = StorageOption) -> None:
    """List the runs in a store (opened read-only: a missing store is not created)."""
    try:
        found = open_store(storage, read_only=True).list_runs()
    except NotFoundError:  # no store there: a read never creates one
        found = ()
    except PBTuneError as exc:
        _fail(str(exc))
        return
    if not found:
        typer.echo(f"no runs in {storage}")
    for record in found:
        typer.echo(record.name)


@_app.command()
def demo(workers: int = typer.Option(2, help="Worker processes."),
         quiet: bool = typer.Option(False, "--quiet", "-q")) -> None:
    """A 30-second PBT job on the embedded default store (the paper's toy-style quadratic)."""
    name = time.strftime("demo-%Y%m%d-%H%M%S")
    cfg = RunConfig(
        name=name, space={"lr": {"type": "float", "low": 0.0005, "high": 0.05, "log": True}},
        population=8, workers=workers, budget=60, ready=Ready(interval=5),
        trainable="pbtune.testing.trainables:Quadratic", trainable_args={"step_seconds": 0.02},
    )
    try:
        result = run_population(config=cfg, display=progress_display("quiet" if quiet else True))
    except PBTuneError as exc:
        _fail(str(exc))
        return
    console.print(f"[bold green]demo done[/]: best member {result.best.member_id}, "
                  f"score {_fmt_score(result.best.score)}")
    console.print(f"  results store:    {cfg.storage}  (sqlite file {os.path.abspath(DEFAULT_DIR)}/pbtune.db)")
    console.print(f"  checkpoints:      {os.path.abspath(cfg.checkpoints)}")
    console.print(f"  best checkpoint:  {result.checkpoint_path}")
    prog = _program()
    console.print(f"  look at them:     {prog} status {name}; {prog} lineage {name} best")


# Commands of other subsystems register themselves: each module defines register(app).
_COMMAND_MODULES = (
    "pbtune.server.commands",
    "pbtune.report.commands",
    "pbtune.scaleout.commands",
    "pbtune.vectorized.commands",
)
CORE_COMMANDS = frozenset({"run", "status", "best", "lineage", "runs", "demo"})  # defined above
_registered = threading.Lock()
_plugins: list[str] = []


def _register_plugins() -> None:
    import importlib

    with _registered:
        if _plugins:
            return
        for module_name in _COMMAND_MODULES:
            _plugins.append(module_name)
            try:
                module = importlib.import_module(module_name)
            except ModuleNotFoundError as exc:
                if exc.name is not None and module_name.startswith(exc.name):
                    continue  # that subsystem is not part of this build
                raise
            module.register(_app)


def command_app(argv: Sequence[str]) -> typer.Typer:
    """The app to run ``argv`` with: a core command (``run`` ...) needs none of the other
    subsystems' commands, so their modules (and rich) are not imported before it starts."""
    if not (argv and argv[0] in CORE_COMMANDS):
        _register_plugins()
    return _app


def __getattr__(name: str) -> Any:
    if name == "app":  # ``from pbtune.cli import app``: every command
        _register_plugins()
        return _app
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def main() -> None:  # pragma: no cover - console entry point
    command_app(sys.argv[1:])()


if __name__ == "__main__":  # pragma: no cover
    sys.exit(command_app(sys.argv[1:])())
