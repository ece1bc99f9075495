"""MLflow monitor (optional extra): every member's metrics land in a nested MLflow run."""

from __future__ import annotations

from typing import Any

import pytest
from report_helpers import SmallRun

from pbtune.report.data import hparam_history, hparams_at, score_curves


@pytest.mark.slow  # MLflow creates its SQLite schema with ~40 migrations: ~10 s
def test_mlflow_monitor_logs_every_member(small_run: SmallRun, tmp_path: Any) -> None:
    pytest.importorskip("mlflow", reason="mlflow is not installed (pip install 'pbtune[mlflow]')")
    from mlflow.tracking import MlflowClient

    from pbtune.report.mlflow_monitor import MLflowMonitor

    uri = f"sqlite:///{tmp_path}/mlflow.db"
    monitor = MLflowMonitor(tracking_uri=uri, min_interval=0.0)
    monitor.update(small_run.store, small_run.config)
    monitor.close()

    client = MlflowClient(tracking_uri=uri)
    data = small_run.data
    curves = score_curves(data.scores, data.events)
    assert sorted(monitor.member_runs) == [m.member_id for m in data.members]
    parent = client.get_run(monitor.parent_run_id)
    assert parent.data.params["population"] == "4" and parent.info.status == "FINISHED"
    for member in data.members:
        run = client.get_run(monitor.member_runs[member.member_id])
        assert run.data.tags["mlflow.parentRunId"] == monitor.parent_run_id
        assert run.info.status == "FINISHED"
        history = sorted(client.get_metric_history(run.info.run_id, "score"), key=lambda m: m.step)
        curve = curves[member.member_id]
        assert [(m.step, m.value) for m in history] == list(zip(curve.steps, curve.values, strict=True))
        lr = {m.step: m.value for m in client.get_metric_history(run.info.run_id, "hparams/lr")}
        events = hparam_history(data.events, member.member_id)
        assert all(value == hparams_at(events, step)["lr"] for step, value in lr.items())
        assert run.data.params["init/lr"] == str(events[0][1]["lr"])
