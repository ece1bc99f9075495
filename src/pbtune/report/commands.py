"""``pbtune`` commands of the report subsystem: plot, report, schedule, replay, export, tensorboard, watch."""

from __future__ import annotations

import enum
import json
import os
import time
from typing import Any

import typer
from rich.console import Console

from pbtune.config import DEFAULT_DIR, RunConfig
from pbtune.errors import InvalidConfigError, PBTuneError
from pbtune.report.data import (
    RunData,
    load_run,
    member_schedule,
    resolve_member,
    schedule_csv,
    schedule_records,
)
from pbtune.store import open_store

__all__ = ["register"]

DEFAULT_STORAGE = f"sqlite:///{DEFAULT_DIR}/pbtune.db"
_out = Console()
_err = Console(stderr=True)


class FigureFormat(str, enum.Enum):
    png = "png"
    svg = "svg"


class ScheduleFormat(str, enum.Enum):
    json = "json"
    csv = "csv"


StorageOption = typer.Option(DEFAULT_STORAGE, "--storage", "-s", help="SQLAlchemy URL of the population store.")


def _fail(message: str) -> None:
    _err.print(f"[bold red]error:[/] {message}", highlight=False, soft_wrap=True)
    raise typer.Exit(code=2)


def _load(storage: str, run_name: str) -> RunData:
    try:
        return load_run(open_store(storage, read_only=True), run_name)  # a read never creates a store
    except PBTuneError as exc:
        _fail(str(exc))
        raise  # unreachable: _fail exits


def _parse_args(pairs: list[str]) -> dict[str, Any] | None:
    """``key=value`` pairs; values are JSON when they parse as JSON, else strings."""
    if not pairs:
        return None
    out: dict[str, Any] = {}
    for pair in pairs:
        key, sep, raw = pair.partition("=")
        if not sep or not key:
            raise InvalidConfigError("--arg", "replay", "KEY=VALUE", pair)
        try:
            out[key] = json.loads(raw)
        except json.JSONDecodeError:
            out[key] = raw
    return out


def plot(
    run_name: str = typer.Argument(..., metavar="RUN"),
    out: str = typer.Option("pbtune-plots", "--out", "-o", help="Folder for the figures."),
    fmt: FigureFormat = typer.Option(FigureFormat.png, "--format", "-f", help="Image format."),  # noqa: B008 - typer idiom
    storage: str = StorageOption,
) -> None:
    """Figures of RUN: scores with exploit jumps, hyperparameters, lineage tree, best schedule."""
    from pbtune.report.plots import plot_run

    data = _load(storage, run_name)
    try:
        paths = plot_run(data, out, fmt=fmt.value)
    except PBTuneError as exc:
        _fail(str(exc))
        return
    for name, path in paths.items():
        typer.echo(f"{name:<9} {path}")


def report(
    run_name: str = typer.Argument(..., metavar="RUN"),
    out: str | None = typer.Option(None, "--out", "-o", help="HTML file to write (default RUN-report.html)."),
    storage: str = StorageOption,
) -> None:
    """One self-contained HTML report of RUN (figures, sortable member table, best schedule, config)."""
    from pbtune.report.html import write_report

    data = _load(storage, run_name)
    path = write_report(data, out or f"{run_name}-report.html")
    typer.echo(os.path.abspath(path))


def schedule(
    run_name: str = typer.Argument(..., metavar="RUN"),
    member: str = typer.Argument("best", help="Member id, or 'best'."),
    fmt: ScheduleFormat = typer.Option(ScheduleFormat.json, "--format", "-f", help="Output format."),  # noqa: B008
    out: str | None = typer.Option(None, "--out", "-o", help="Write to this file instead of stdout."),
    storage: str = StorageOption,
) -> None:
    """The hyperparameter schedule behind MEMBER's model (steps are the model's age; donors' steps first)."""
    from pbtune.report._files import atomic_file

    data = _load(storage, run_name)
    try:
        member_id = resolve_member(data, member)
    except PBTuneError as exc:
        _fail(str(exc))
        return
    entries = member_schedule(data, member_id)
    if fmt is ScheduleFormat.csv:
        text = schedule_csv(entries)
    else:
        text = json.dumps(schedule_records(entries), indent=2) + "\n"
    if out is None:
        typer.echo(text, nl=False)
        return
    with atomic_file(out, "w", encoding="utf-8") as handle:
        handle.write(text)
    _err.print(f"schedule of member {member_id} written to {out}", highlight=False)


def replay(
    run_name: str = typer.Argument(..., metavar="RUN"),
    member: str = typer.Option("best", "--member", "-m", help="Member id, or 'best'."),
    steps: int | None = typer.Option(None, "--steps", "-n", min=0,
                                        help="Training steps (default: the age of the member's model)."),
    trainable: str | None = typer.Option(None, "--trainable", "-t",
                                            help="module:Class or file.py:Class (default: the run's)."),
    arg: list[str] = typer.Option([], "--arg", "-a", help="Override a trainable argument: KEY=VALUE (repeat)."),  # noqa: B008
    save: str | None = typer.Option(None, "--save", help="Save the retrained model to this file."),
    as_json: bool = typer.Option(False, "--json", help="Print JSON."),
    storage: str = StorageOption,
) -> None:
    """Retrain MEMBER's model from scratch following its schedule, with the run's trainable."""
    from pbtune.report.replay import replay_member

    data = _load(storage, run_name)
    try:
        member_id = resolve_member(data, member)
        overrides = _parse_args(arg)
        args = None if overrides is None else {**dict(data.config.get("trainable_args") or {}), **overrides}
        result = replay_member(
            open_store(storage, read_only=True), run_name, member_id, trainable=trainable, steps=steps,
            trainable_args=args, save_to=save,
        )
    except PBTuneError as exc:
        _fail(str(exc))
        return
    recorded = data.member(member_id).score
    if as_json:
        typer.echo(json.dumps({
            "run": run_name, "member": member_id, "steps": result.steps, "score": result.score,
            "member_score": recorded, "metrics": dict(result.metrics), "saved": result.checkpoint,
        }, indent=2, default=str))
        return
    same = "identical to" if result.score == recorded else "vs."
    typer.echo(f"replayed member {member_id} of run {run_name}: {result.steps} steps, "
               f"{data.metric} {result.score!r} ({same} the member's {recorded!r} in PBT)")
    if result.checkpoint:
        typer.echo(f"saved to {result.checkpoint}")


def export(
    run_name: str = typer.Argument(..., metavar="RUN"),
    member: str = typer.Option("best", "--member", "-m", help="Member id, or 'best'."),
    out: str = typer.Option(..., "--out", "-o", help="Folder to create: checkpoint + member.json."),
    checkpoints: str | None = typer.Option(None, "--checkpoints", "-c",
                                              help="Checkpoint store URL (default: the run's)."),
    force: bool = typer.Option(False, "--force", help="Replace OUT if it exists."),
    storage: str = StorageOption,
) -> None:
    """Copy MEMBER's checkpoint out of the run, with a JSON of its hyperparameters, schedule and scores."""
    from pbtune.report.export import export_member

    data = _load(storage, run_name)
    try:
        result = export_member(data, member, out, checkpoints=checkpoints, overwrite=force)
    except PBTuneError as exc:
        _fail(str(exc))
        return
    typer.echo(f"member {result.member_id}: {result.checkpoint}")
    typer.echo(f"          {result.manifest}")


def tensorboard(
    run_name: str = typer.Argument(..., metavar="RUN"),
    logdir: str = typer.Option(os.path.join(DEFAULT_DIR, "tensorboard"), "--logdir", "-l",
                               help="TensorBoard log folder (the run goes to LOGDIR/RUN)."),
    storage: str = StorageOption,
) -> None:
    """Write RUN's scores, metrics and hyperparameters as TensorBoard event files (one folder per member)."""
    from pbtune.report.tensorboard import write_tensorboard

    folder = write_tensorboard(_load(storage, run_name), logdir)
    typer.echo(f"{folder}\nview with: tensorboard --logdir {logdir}")


def watch(
    run_name: str = typer.Argument(..., metavar="RUN"),
    interval: float = typer.Option(1.0, "--interval", "-i", min=0.1, help="Seconds between refreshes."),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="Plain progress lines (for CI logs)."),
    storage: str = StorageOption,
) -> None:
    """Follow a run in the terminal (members table and progress bar) until every member is done."""
    from pbtune.report.live import LiveDisplay

    data = _load(storage, run_name)
    try:
        config = RunConfig.from_dict(data.config)
        store = open_store(storage, read_only=True)
    except PBTuneError as exc:
        _fail(str(exc))
        return
    display = LiveDisplay(quiet=quiet, min_interval=0.0, log_every=max(interval, 10.0) if quiet else interval)
    try:
        while True:
            display.update(store, config)
            if all(m.state.is_final for m in store.list_members(run_name)):
                break
            time.sleep(interval)
    except KeyboardInterrupt:
        pass
    finally:
        display.close()


def register(app: typer.Typer) -> None:
    """Add the report commands to the ``pbtune`` command."""
    for command in (plot, report, schedule, replay, export, tensorboard, watch):
        app.command()(command)
