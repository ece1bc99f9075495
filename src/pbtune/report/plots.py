"""Matplotlib figures of a run: scores with exploit jumps, hyperparameters, lineage, best schedule.

Figures are built with matplotlib's object API (``Figure`` + Agg/SVG canvases), never pyplot, so
no global backend is set and no window opens. Each ``*_figure`` takes a :class:`RunData` and
returns a ``Figure`` whose artists carry ``gid`` tags (``score/3``, ``lr/3``, ...) so tests can
check the data drawn; :func:`plot_run` writes them all.

Example::

    from pbtune.store import open_store
    data = load_run(open_store("sqlite:///pbtune-runs/pbtune.db"), "exp")
    paths = plot_run(data, "plots", fmt="svg")
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from pbtune.errors import InvalidConfigError
from pbtune.report._files import atomic_file
from pbtune.report.data import (
    RunData,
    ancestry,
    ancestry_scores,
    best_member_id,
    exploit_marks,
    hparam_curves,
    lineage_edges,
    member_schedule,
    score_curves,
)
from pbtune.space import Choice, Float, Int

if TYPE_CHECKING:
    from matplotlib.figure import Figure

__all__ = [
    "FORMATS",
    "hparams_figure",
    "lineage_figure",
    "plot_run",
    "save_figure",
    "schedule_figure",
    "scores_figure",
]

FORMATS = ("png", "svg")
_BEST = "#d62728"


def _figure(width: float, height: float) -> Figure:
    try:
        from matplotlib.figure import Figure
    except ImportError as exc:  # pragma: no cover - depends on the environment
        raise ImportError("plots need matplotlib: pip install 'pbtune[report]'") from exc
    return Figure(figsize=(width, height), layout="constrained")


def _colors(member_ids: list[int]) -> dict[int, Any]:
    from matplotlib import colormaps

    cmap = colormaps["tab10" if len(member_ids) <= 10 else "tab20" if len(member_ids) <= 20 else "viridis"]
    n = max(len(member_ids), 1)
    if cmap.name == "viridis":
        return {m: cmap(i / max(n - 1, 1)) for i, m in enumerate(member_ids)}
    return {m: cmap(i % cmap.N) for i, m in enumerate(member_ids)}


def _finite(values: tuple[float, ...]) -> list[float]:
    return [v if math.isfinite(v) else math.nan for v in values]


def scores_figure(data: RunData) -> Figure:
    """Score of every member over its steps; exploits are marked where the curve jumps.

    Each exploit is drawn as a dotted line from the member's score at the exploit step to the
    donor's score it copied, with an ``x`` at the member's old score.
    """
    curves = score_curves(data.scores, data.events)
    best = best_member_id(data)
    colors = _colors([m.member_id for m in data.members])
    fig = _figure(9, 5)
    ax = fig.add_subplot()
    for member_id, curve in curves.items():
        is_best = member_id == best
        (line,) = ax.plot(
            curve.steps, _finite(curve.values), color=colors.get(member_id), lw=2.2 if is_best else 1.2,
            label=f"member {member_id}" + (" (best)" if is_best else ""), zorder=3 if is_best else 2,
        )
        line.set_gid(f"score/{member_id}")
    marks = exploit_marks(data.events, curves)
    for index, mark in enumerate(marks):
        if mark.score_before is None:
            continue
        target = mark.donor_score if mark.donor_score is not None else mark.score_before
        (jump,) = ax.plot(
            [mark.step, mark.step], [mark.score_before, target], ls=":", color=colors.get(mark.member_id), lw=1,
        )
        jump.set_gid(f"exploit/{mark.member_id}/{mark.step}")
        (cross,) = ax.plot(
            [mark.step], [mark.score_before], marker="x", color="black", ms=6, ls="none",
            label="exploit (copied a better member)" if index == 0 else None, zorder=4,
        )
        cross.set_gid(f"exploit-mark/{mark.member_id}/{mark.step}")
    ax.set_xlabel("member step")
    ax.set_ylabel(data.metric)
    ax.set_title(f"{data.run}: {data.metric} of every member ({'higher' if data.mode == 'max' else 'lower'} is better)")
    ax.grid(alpha=0.3)
    if curves:
        ax.legend(fontsize="small", ncols=2 if len(curves) > 8 else 1, loc="best")
    return fig


def _yaxis_for(ax: Any, domain: Any) -> None:
    if isinstance(domain, (Float, Int)) and domain.log:
        ax.set_yscale("log")
    elif isinstance(domain, Choice):
        ax.set_yticks(range(len(domain.values)), [str(v) for v in domain.values])


def hparams_figure(data: RunData) -> Figure:
    """Each hyperparameter over steps, one panel per hyperparameter, one line per member.

    Log domains get a log axis; choices are drawn at their index with the values as tick labels.
    """
    per_name = hparam_curves(data)
    space = data.space
    best = best_member_id(data)
    colors = _colors([m.member_id for m in data.members])
    names = list(per_name) or ["(none)"]
    fig = _figure(9, 2.6 * len(names) + 0.6)
    axes = fig.subplots(len(names), 1, sharex=True, squeeze=False)[:, 0]
    for ax, name in zip(axes, names, strict=True):
        for member_id, curve in per_name.get(name, {}).items():
            (line,) = ax.plot(
                curve.steps, curve.values, drawstyle="steps-post", color=colors.get(member_id),
                lw=2.2 if member_id == best else 1.1, label=f"member {member_id}",
            )
            line.set_gid(f"{name}/{member_id}")
        _yaxis_for(ax, space[name] if space is not None and name in space else None)
        ax.set_ylabel(name)
        ax.grid(alpha=0.3)
    axes[-1].set_xlabel("member step")
    axes[0].set_title(f"{data.run}: hyperparameters of every member (jumps are exploits and explores)")
    if len(data.members) <= 12 and per_name:
        axes[0].legend(fontsize="x-small", ncols=min(len(data.members), 6), loc="best")
    return fig


def lineage_figure(data: RunData, member_id: int | None = None) -> Figure:
    """Which member copied which, when: one row per member, an arrow per exploit.

    The ancestry of ``member_id`` (default: the best member) is drawn thick in red: the
    segments of training that produced its model and the copies between them.
    """
    target = best_member_id(data) if member_id is None else member_id
    edges = lineage_edges(data.events)
    fig = _figure(9, max(3.0, 0.45 * len(data.members) + 1.5))
    ax = fig.add_subplot()
    for member in data.members:
        (line,) = ax.plot([0, member.step], [member.member_id, member.member_id], color="0.6", lw=1.5)
        line.set_gid(f"member/{member.member_id}")
    for edge in edges:
        arrow = ax.annotate(
            "", xy=(edge.step, edge.member_id), xytext=(edge.donor_step, edge.donor_id),
            arrowprops={"arrowstyle": "->", "color": "0.35", "lw": 0.9, "shrinkA": 2, "shrinkB": 2},
        )
        arrow.set_gid(f"edge/{edge.member_id}/{edge.step}")
    if target is not None:
        chain = ancestry(data.events, target, data.member(target).step)
        for segment in chain:
            (line,) = ax.plot(
                [segment.start, segment.end], [segment.member_id, segment.member_id], color=_BEST, lw=3.5,
                solid_capstyle="butt", zorder=3,
            )
            line.set_gid(f"ancestry/{segment.member_id}/{segment.start}")
        for prev, nxt in zip(chain, chain[1:], strict=False):
            arrow = ax.annotate(
                "", xy=(nxt.start, nxt.member_id), xytext=(prev.end, prev.member_id),
                arrowprops={"arrowstyle": "-|>", "color": _BEST, "lw": 2.0, "shrinkA": 0, "shrinkB": 0},
                zorder=4,
            )
            arrow.set_gid(f"ancestry-edge/{nxt.member_id}/{nxt.start}")
        ax.plot([], [], color=_BEST, lw=3.5, label=f"ancestry of member {target} (best)" if member_id is None
                else f"ancestry of member {target}")
        ax.plot([], [], color="0.35", lw=0.9, label="exploit: donor step -> member step")
        fig.legend(fontsize="small", loc="outside lower center", ncols=2)
    ax.set_yticks([m.member_id for m in data.members])
    ax.set_ylim(-0.7, max((m.member_id for m in data.members), default=0) + 0.7)
    ax.set_xlabel("member step")
    ax.set_ylabel("member")
    ax.set_title(f"{data.run}: lineage ({len(edges)} exploits)")
    ax.grid(axis="x", alpha=0.3)
    return fig


def schedule_figure(data: RunData, member_id: int | None = None) -> Figure:
    """The schedule behind one member's model (default: the best) over the model's age.

    Top: the score of that model along its ancestry; below: one panel per hyperparameter.
    """
    target = best_member_id(data) if member_id is None else member_id
    space = data.space
    names = list(space) if space is not None else []
    fig = _figure(9, 2.4 * (len(names) + 1) + 0.6)
    axes = fig.subplots(len(names) + 1, 1, sharex=True, squeeze=False)[:, 0]
    if target is None:
        axes[0].set_title(f"{data.run}: no member has a score yet")
        return fig
    curve = ancestry_scores(data, target)
    (line,) = axes[0].plot(curve.steps, _finite(curve.values), color=_BEST, lw=1.8)
    line.set_gid("ancestry-score")
    axes[0].set_ylabel(data.metric)
    axes[0].set_title(f"{data.run}: schedule of member {target} over its model's age")
    entries = member_schedule(data, target)
    age = curve.steps[-1] if curve.steps else (entries[-1].step if entries else 0)
    for ax, name in zip(axes[1:], names, strict=True):
        domain = space[name] if space is not None else None
        xs = [e.step for e in entries] + [max(age, entries[-1].step if entries else 0)]
        values = [e.hparams.get(name) for e in entries]
        ys = [(domain.values.index(v) if isinstance(domain, Choice) and v in domain.values else v) for v in values]
        (line,) = ax.plot(xs, ys + ys[-1:], drawstyle="steps-post", color=_BEST, lw=1.8)
        line.set_gid(f"schedule/{name}")
        for entry in entries[1:]:
            ax.axvline(entry.step, color="0.8", lw=0.8, zorder=0)
        _yaxis_for(ax, domain)
        ax.set_ylabel(name)
    for ax in axes:
        ax.grid(alpha=0.3)
    axes[-1].set_xlabel("model age (steps, inherited ones included)")
    return fig


def save_figure(fig: Figure, path: str, *, dpi: int = 110) -> str:
    """Write ``fig`` to ``path`` atomically (the format follows the extension)."""
    fmt = os.path.splitext(path)[1].lstrip(".").lower()
    if fmt not in FORMATS:
        raise InvalidConfigError("format", "save_figure", f"one of {list(FORMATS)}", fmt)
    with atomic_file(path, "wb") as out:
        fig.savefig(out, format=fmt, dpi=dpi)
    return path


def figures(data: RunData) -> Mapping[str, Figure]:
    """Every figure of a run by name: ``scores``, ``hparams``, ``lineage``, ``schedule``."""
    return {
        "scores": scores_figure(data),
        "hparams": hparams_figure(data),
        "lineage": lineage_figure(data),
        "schedule": schedule_figure(data),
    }


def plot_run(data: RunData, out_dir: str, *, fmt: str = "png") -> dict[str, str]:
    """Write every figure of a run to ``out_dir/<run>-<name>.<fmt>``; return name -> path.

    Raises:
        InvalidConfigError: ``fmt`` is not png or svg.
    """
    if fmt not in FORMATS:
        raise InvalidConfigError("format", "plot", f"one of {list(FORMATS)}", fmt)
    return {
        name: save_figure(fig, os.path.join(out_dir, f"{data.run}-{name}.{fmt}"))
        for name, fig in figures(data).items()
    }
