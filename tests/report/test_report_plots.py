"""Figures of a real run: the files exist, and what each figure draws is the store's data."""

from __future__ import annotations

import os
import xml.etree.ElementTree as ET
from typing import Any

import pytest
from report_helpers import SmallRun

from pbtune.errors import InvalidConfigError
from pbtune.report.data import (
    ancestry,
    ancestry_scores,
    best_member_id,
    exploit_marks,
    hparam_curves,
    lineage_edges,
    score_curves,
)
from pbtune.report.plots import (
    hparams_figure,
    lineage_figure,
    plot_run,
    save_figure,
    schedule_figure,
    scores_figure,
)


def _artists(fig: Any, prefix: str) -> dict[str, Any]:
    found = {}
    for ax in fig.axes:
        for artist in [*ax.lines, *ax.texts]:
            gid = artist.get_gid()
            if gid and gid.startswith(prefix):
                found[gid] = artist
    return found


@pytest.mark.parametrize("fmt", ["png", "svg"])
def test_plot_run_writes_every_figure(small_run: SmallRun, tmp_path: Any, fmt: str) -> None:
    paths = plot_run(small_run.data, str(tmp_path), fmt=fmt)
    assert sorted(paths) == ["hparams", "lineage", "schedule", "scores"]
    for name, path in paths.items():
        assert path == os.path.join(str(tmp_path), f"toy-{name}.{fmt}")
        assert os.path.getsize(path) > 1000
        with open(path, "rb") as handle:
            head = handle.read()
        if fmt == "png":
            assert head.startswith(b"\x89PNG\r\n\x1a\n")
        else:
            assert ET.fromstring(head).tag.endswith("svg")
    assert not [f for f in os.listdir(tmp_path) if f.startswith(".")]  # no temporary files left


def test_scores_figure_draws_each_members_scores_and_marks_every_exploit(small_run: SmallRun) -> None:
    data = small_run.data
    fig = scores_figure(data)
    curves = score_curves(data.scores, data.events)
    lines = _artists(fig, "score/")
    assert sorted(lines) == sorted(f"score/{m}" for m in curves)
    for member_id, curve in curves.items():
        line = lines[f"score/{member_id}"]
        assert list(line.get_xdata()) == list(curve.steps)
        assert list(line.get_ydata()) == list(curve.values)
    marks = exploit_marks(data.events, curves)
    crosses = _artists(fig, "exploit-mark/")
    assert len(crosses) == len(marks) > 0
    for mark in marks:
        cross = crosses[f"exploit-mark/{mark.member_id}/{mark.step}"]
        assert list(cross.get_xdata()) == [mark.step] and list(cross.get_ydata()) == [mark.score_before]
        jump = _artists(fig, f"exploit/{mark.member_id}/{mark.step}")[f"exploit/{mark.member_id}/{mark.step}"]
        assert list(jump.get_ydata()) == [mark.score_before, mark.donor_score]


def test_hparams_figure_has_a_panel_per_hparam_with_log_axes_for_log_domains(small_run: SmallRun) -> None:
    data = small_run.data
    fig = hparams_figure(data)
    panels = {ax.get_ylabel(): ax for ax in fig.axes}
    assert sorted(panels) == ["act", "batch", "lr"]
    assert panels["lr"].get_yscale() == "log"
    assert panels["batch"].get_yscale() == "linear"
    assert [t.get_text() for t in panels["act"].get_yticklabels()] == ["relu", "tanh", "gelu"]
    curves = hparam_curves(data)
    lines = _artists(fig, "")
    for name, by_member in curves.items():
        for member_id, curve in by_member.items():
            line = lines[f"{name}/{member_id}"]
            assert line.get_drawstyle() == "steps-post"
            assert list(line.get_xdata()) == list(curve.steps)
            assert list(line.get_ydata()) == list(curve.values)


def test_lineage_figure_draws_every_exploit_and_the_best_members_ancestry(small_run: SmallRun) -> None:
    data = small_run.data
    fig = lineage_figure(data)
    edges = lineage_edges(data.events)
    arrows = _artists(fig, "edge/")
    assert len(arrows) == len(edges) > 0
    for edge in edges:
        arrow = arrows[f"edge/{edge.member_id}/{edge.step}"]
        assert arrow.xy == (edge.step, edge.member_id)
        assert arrow.xyann == (edge.donor_step, edge.donor_id)
    best = best_member_id(data)
    assert best is not None
    chain = ancestry(data.events, best, data.member(best).step)
    drawn = _artists(fig, "ancestry/")
    assert sorted(drawn) == sorted(f"ancestry/{s.member_id}/{s.start}" for s in chain)
    for segment in chain:
        line = drawn[f"ancestry/{segment.member_id}/{segment.start}"]
        assert list(line.get_xdata()) == [segment.start, segment.end]
    # any member's ancestry can be highlighted; one with a donor shows the copy as an arrow
    inherited = next(m.member_id for m in data.members if len(ancestry(data.events, m.member_id, m.step)) > 1)
    other = lineage_figure(data, inherited)
    chain = ancestry(data.events, inherited, data.member(inherited).step)
    assert len(_artists(other, "ancestry-edge/")) == len(chain) - 1


def test_schedule_figure_draws_the_model_score_over_its_age(small_run: SmallRun) -> None:
    data = small_run.data
    best = best_member_id(data)
    assert best is not None
    fig = schedule_figure(data)
    line = _artists(fig, "ancestry-score")["ancestry-score"]
    curve = ancestry_scores(data, best)
    assert list(line.get_xdata()) == list(curve.steps)
    assert list(line.get_ydata()) == list(curve.values)
    assert set(_artists(fig, "schedule/")) == {"schedule/lr", "schedule/batch", "schedule/act"}


def test_unknown_formats_are_refused(small_run: SmallRun, tmp_path: Any) -> None:
    with pytest.raises(InvalidConfigError, match="`format` of `plot` must be one of \\['png', 'svg'\\]; got 'jpg'"):
        plot_run(small_run.data, str(tmp_path), fmt="jpg")
    with pytest.raises(InvalidConfigError, match="format"):
        save_figure(scores_figure(small_run.data), os.path.join(str(tmp_path), "x.gif"))
    assert os.listdir(tmp_path) == []
