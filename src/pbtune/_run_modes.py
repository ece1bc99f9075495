"""``pbtune run CONFIG --mode train|test`` beyond training a population (the CLI's glue).

* a single-model file (``hparams`` instead of ``space``, or a legacy ``fc.json``/``conv.json``):
  ``train`` trains it (:func:`pbtune.single.train_single`), ``test`` evaluates the saved model;
* a population file with ``--mode test``: the best member (``--member all``: every member with a
  checkpoint, or one id) on the test split (:func:`pbtune.evaluate.evaluate_run`).

A population file with ``--mode train`` is the CLI's own ``run``: :func:`handle_run_mode` says
False and leaves it to it.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from rich.console import Console
from rich.markup import escape
from rich.table import Table

from pbtune.config import load_config, read_config_file
from pbtune.errors import InvalidConfigError

__all__ = ["MODES", "handle_run_mode"]

MODES = ("train", "test")


def _fmt(values: Mapping[str, Any]) -> str:
    return ", ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in values.items())


def _metrics(values: Mapping[str, float]) -> str:
    return "  ".join(f"{k} {v:.6g}" for k, v in values.items())


def handle_run_mode(path: str, mode: str, member: str, overrides: Mapping[str, Any], console: Console, *,
                    quiet: bool = False) -> bool:
    """Carry out ``--mode`` for CONFIG unless it is a population to train; True when it did.

    Raises:
        InvalidConfigError: a bad ``--mode`` or ``--member``, or a bad config.
        NotFoundError: testing what was not trained yet.
    """
    if mode not in MODES:
        raise InvalidConfigError("--mode", "pbtune run", f"one of {list(MODES)}", mode)
    from pbtune.single import is_single_model_config

    if is_single_model_config(read_config_file(path)):
        _single(path, mode, overrides, console, quiet=quiet)
        return True
    if mode == "train":
        if member != "best":
            raise InvalidConfigError("--member", "pbtune run", "used with --mode test", member)
        return False
    from pbtune.evaluate import evaluate_run

    config = load_config(path, **overrides)
    rows = evaluate_run(config, member)
    if member != "all" and len(rows) == 1:
        row = rows[0]
        role = "best member" if row.best else "member"
        console.print(escape(f"run {config.name}: {role} {row.member_id} (score {row.score} at step {row.step}; "
                             f"{_fmt(row.hparams)})"), highlight=False, soft_wrap=True)
        console.print(f"  test: {_metrics(row.metrics)}", highlight=False)
        return True
    table = Table(title=f"run {config.name}: test metrics (* marks the best member)")
    keys = sorted({k for row in rows for k in row.metrics})
    for column in ("member", "step", "score", *keys, "hparams"):
        table.add_column(column, justify="left" if column == "hparams" else "right")
    for row in rows:
        table.add_row(f"{row.member_id}{' *' if row.best else ''}", str(row.step),
                      "-" if row.score is None else f"{row.score:.6g}",
                      *[f"{row.metrics[k]:.6g}" if k in row.metrics else "-" for k in keys], _fmt(row.hparams))
    console.print(table)
    return True


def _single(path: str, mode: str, overrides: Mapping[str, Any], console: Console, *, quiet: bool) -> None:
    from pbtune.single import evaluate_single, load_single_config, train_single

    known = {k: overrides.get(k) for k in ("name", "checkpoints")}
    ignored = sorted(k for k, v in overrides.items() if v is not None and k not in known)
    if ignored:
        raise InvalidConfigError(f"--{ignored[0]}", "pbtune run", "left out for a single-model file (one model, "
                                 "in this process, no store)", overrides[ignored[0]])
    config = load_single_config(path, **known)
    if mode == "train":
        echo = None if quiet else (lambda line: console.print(line, highlight=False))
        result = train_single(config, echo=echo)
        console.print(escape(f"done model {config.name}: score {result.score:.6g} after {config.budget} steps "
                             f"with {_fmt(result.hparams)}"), highlight=False, soft_wrap=True)
        console.print(escape(f"  checkpoint: {result.checkpoint_path}"), highlight=False, soft_wrap=True)
        console.print(escape(f"  test it:    pbtune run {path} --mode test"), highlight=False, soft_wrap=True)
        return
    saved, metrics = evaluate_single(config)
    console.print(escape(f"model {config.name}: score {saved.score:.6g} after {len(saved.scores)} steps "
                         f"with {_fmt(saved.hparams)}"), highlight=False, soft_wrap=True)
    console.print(f"  test: {_metrics(metrics)}", highlight=False)
