"""``pbtune vectorized info|extract``: look into a population checkpoint without any model code.

Registered by ``pbtune.cli``; torch is imported only when a command runs.
"""

from __future__ import annotations

from typing import Any

import typer
from rich.console import Console
from rich.table import Table

__all__ = ["register"]

console = Console()


def _load(path: str) -> dict[str, Any]:
    try:
        from pbtune.vectorized.population import load_checkpoint
    except ImportError as exc:
        console.print(f"[bold red]error:[/] {exc}; install PyTorch: pip install 'pbtune[torch]'")
        raise typer.Exit(code=2) from exc
    from pbtune.errors import CheckpointError

    try:
        return load_checkpoint(path)
    except (CheckpointError, FileNotFoundError) as exc:
        console.print(f"[bold red]error:[/] {exc}")
        raise typer.Exit(code=2) from exc


def _ranked(data: dict[str, Any]) -> list[int]:
    """Member ids, best score first (missing and non-finite scores last, ties by id)."""
    from pbtune.ranking import fitness

    scores, mode = data["engine"]["scores"], data["engine"].get("mode", "max")
    return sorted(range(len(scores)), key=lambda i: (-fitness(scores[i], mode), i))


def info(checkpoint: str = typer.Argument(..., help="A population checkpoint (population.pt).")) -> None:
    """Run, step and every member's score and hyperparameters, best first."""
    data = _load(checkpoint)
    engine, population = data["engine"], data["population"]
    table = Table(title=f"run {data['run']}: step {engine['step']}, {population['size']} members")
    for column in ("member", "score", "hparams"):
        table.add_column(column, justify="right" if column != "hparams" else "left")
    for i in _ranked(data):
        score = engine["scores"][i]
        hp = ", ".join(
            f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in population["hparams"][i].items()
        )
        table.add_row(str(i), "-" if score is None else f"{score:.6g}", hp)
    console.print(table)


def extract(
    checkpoint: str = typer.Argument(..., help="A population checkpoint (population.pt)."),
    member: str = typer.Option("best", "--member", "-m", help="Member id, or 'best'."),
    out: str = typer.Option(..., "--out", "-o", help="Where to write the member's state_dict (torch.save)."),
) -> None:
    """Write one member as a plain state_dict: ``model.load_state_dict(torch.load(OUT))``."""
    from pbtune.vectorized.population import atomic_save, extract_member

    data = _load(checkpoint)
    try:
        index = _ranked(data)[0] if member == "best" else int(member)
        state = extract_member(data["population"], index)
    except (ValueError, IndexError):
        console.print(
            f"[bold red]error:[/] MEMBER must be 'best' or an id in [0, {data['population']['size']}); got {member!r}"
        )
        raise typer.Exit(code=2) from None
    atomic_save(state, out)
    console.print(f"member {index} of run {data['run']} (step {data['engine']['step']}) -> {out}")


def register(app: typer.Typer) -> None:
    """Add ``pbtune vectorized ...`` to the CLI."""
    group = typer.Typer(help="Population checkpoints of the vectorized engine.", no_args_is_help=True)
    group.command("info")(info)
    group.command("extract")(extract)
    app.add_typer(group, name="vectorized")
