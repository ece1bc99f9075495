"""MLflow logging of a population (optional extra: ``pip install 'pbtune[mlflow]'``).

One parent MLflow run per PBT run, one nested run per member. Each member's run gets its first
hyperparameters as params and, per reported step, the score, the numeric metrics
(``metrics/<k>``) and the hyperparameters that trained the step (``hparams/<k>``) as metrics,
so their schedules show as curves. Lineage events are tags (``pbtune.last_event``).

Example::

    pbtune.run(MyTrainable, config=cfg, monitors=[MLflowMonitor(tracking_uri="sqlite:///mlflow.db")])
"""

from __future__ import annotations

from typing import Any

from pbtune.config import RunConfig
from pbtune.report._throttle import Throttle
from pbtune.report.data import RunData, load_run, scalar_points
from pbtune.store.base import PopulationStore

__all__ = ["MLflowMonitor"]

_BATCH = 900  # MLflow accepts at most 1000 metrics per log_batch call


def _client(tracking_uri: str | None) -> Any:
    try:
        from mlflow.tracking import MlflowClient
    except ImportError as exc:
        raise ImportError("MLflow logging needs mlflow: pip install 'pbtune[mlflow]'") from exc
    return MlflowClient(tracking_uri=tracking_uri)


class MLflowMonitor:
    """A :func:`pbtune.run` monitor that logs every member as a nested MLflow run.

    Args:
        tracking_uri: MLflow tracking URI (default: MLflow's own default / ``MLFLOW_TRACKING_URI``).
        experiment: experiment name (default: the PBT run's name); created if missing.
        min_interval: seconds between two reads of the store (also spaced so that reading
            takes at most a tenth of the time).
    """

    def __init__(self, *, tracking_uri: str | None = None, experiment: str | None = None,
                 min_interval: float = 2.0) -> None:
        self.tracking_uri = tracking_uri
        self.experiment = experiment
        self.min_interval = min_interval
        self._client: Any = None
        self.parent_run_id: str | None = None
        self.member_runs: dict[int, str] = {}
        self._last_step: dict[int, int] = {}
        self._seen_events: set[int] = set()
        self._throttle = Throttle(min_interval)
        self._source: tuple[PopulationStore, str] | None = None

    def _start(self, data: RunData) -> None:
        client = _client(self.tracking_uri)
        name = self.experiment or data.run
        found = client.get_experiment_by_name(name)
        experiment_id = found.experiment_id if found is not None else client.create_experiment(name)
        parent = client.create_run(experiment_id, run_name=data.run, tags={"pbtune.run": data.run})
        for key, value in _flat_params(data.config).items():
            client.log_param(parent.info.run_id, key, value)
        self._client, self._experiment_id, self.parent_run_id = client, experiment_id, parent.info.run_id

    def _member_run(self, data: RunData, member_id: int) -> str:
        if member_id not in self.member_runs:
            run = self._client.create_run(
                self._experiment_id, run_name=f"{data.run}/member-{member_id}",
                tags={"mlflow.parentRunId": self.parent_run_id, "pbtune.run": data.run,
                      "pbtune.member": str(member_id)},
            )
            self.member_runs[member_id] = run.info.run_id
            first = data.member(member_id).hparams
            for event in data.events:  # the first hyperparameters, not the current ones
                if event.member_id == member_id and event.kind == "init" and event.new_hparams:
                    first = event.new_hparams
                    break
            for key, value in dict(first).items():
                self._client.log_param(run.info.run_id, f"init/{key}", value)
        return self.member_runs[member_id]

    def sync(self, data: RunData) -> int:
        """Log what is new since the last call; return the number of (member, step) points."""
        from mlflow.entities import Metric

        if self._client is None:
            self._start(data)
        points = scalar_points(data, self._last_step)
        batches: dict[str, list[Any]] = {}
        for point in points:
            run_id = self._member_run(data, point.member_id)
            stamp = int(point.time * 1000)
            batches.setdefault(run_id, []).extend(
                Metric(key, value, stamp, point.step) for key, value in point.values.items()
            )
            self._last_step[point.member_id] = point.step
        for run_id, metrics in batches.items():
            for start in range(0, len(metrics), _BATCH):
                self._client.log_batch(run_id, metrics=metrics[start:start + _BATCH])
        for event in data.events:
            if event.id in self._seen_events or event.kind not in ("exploit", "explore", "resume", "fail"):
                continue
            self._seen_events.add(event.id)
            run_id = self._member_run(data, event.member_id)
            self._client.set_tag(run_id, "pbtune.last_event", f"step {event.step} {event.kind}: {event.summary}"[:5000])
        return len(points)

    def update(self, store: PopulationStore, config: RunConfig) -> None:
        self._source = (store, config.name)
        if self._throttle.due():
            self._throttle.run(lambda: self.sync(load_run(store, config.name)))

    def close(self) -> None:
        """Log what the last throttled update skipped and end the MLflow runs."""
        if self._source is None:
            return
        store, run = self._source
        data = load_run(store, run)
        self.sync(data)
        for member in data.members:
            if member.member_id in self.member_runs:
                status = "FINISHED" if member.state.is_final else "KILLED"  # KILLED: the run stopped early
                if member.state.value == "failed":
                    status = "FAILED"
                self._client.set_terminated(self.member_runs[member.member_id], status=status)
        if self.parent_run_id is not None:
            self._client.set_terminated(self.parent_run_id, status="FINISHED")


def _flat_params(config: Any, prefix: str = "") -> dict[str, str]:
    """The run config as flat MLflow params (``space.lr.low`` = ``0.001``)."""
    out: dict[str, str] = {}
    for key, value in dict(config).items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            out.update(_flat_params(value, f"{name}."))
        else:
            out[name] = str(value)[:500]
    return out
