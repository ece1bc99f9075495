"""See and reuse what PBT found: plots, TensorBoard, HTML report, live display, schedule replay, export.

Everything is computed from the store's scores and lineage events. The light parts (data,
replay, export) import eagerly; the ones that need matplotlib, tensorboardX or rich load on
first use, so ``import pbtune.report`` stays cheap.

Example::

    from pbtune.report import load_run, plot_run, write_report, replay_member
    data = load_run(open_store("sqlite:///pbtune-runs/pbtune.db"), "exp")
    plot_run(data, "plots"); write_report(data, "exp.html")
"""

from __future__ import annotations

import importlib
from typing import Any

from pbtune.report.data import RunData, load_run, model_age
from pbtune.report.export import ExportResult, export_member, member_summary
from pbtune.report.replay import ReplayResult, replay, replay_member

_LAZY = {
    "plot_run": "pbtune.report.plots",
    "save_figure": "pbtune.report.plots",
    "scores_figure": "pbtune.report.plots",
    "hparams_figure": "pbtune.report.plots",
    "lineage_figure": "pbtune.report.plots",
    "schedule_figure": "pbtune.report.plots",
    "render_report": "pbtune.report.html",
    "write_report": "pbtune.report.html",
    "TensorBoardMonitor": "pbtune.report.tensorboard",
    "write_tensorboard": "pbtune.report.tensorboard",
    "MLflowMonitor": "pbtune.report.mlflow_monitor",
    "LiveDisplay": "pbtune.report.live",
}

__all__ = [
    "ExportResult",
    "ReplayResult",
    "RunData",
    "export_member",
    "load_run",
    "member_summary",
    "model_age",
    "replay",
    "replay_member",
    *sorted(_LAZY),
]


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'pbtune.report' has no attribute {name!r}")
    return getattr(importlib.import_module(module), name)
