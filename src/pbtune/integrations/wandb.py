"""Weights & Biases logging of a population (optional extra: ``pip install 'pbtune[wandb]'``).

One W&B run per member, grouped under the PBT run's name, so W&B's charts overlay the whole
population. Per reported step: the score (the config's metric), ``metrics/<k>`` and the
hyperparameters that trained the step (``hparams/<k>``). Lineage: at an exploit's step the
history gets ``lineage/donor`` (the donor's member id); every exploit, explore, resume and
failure is a row of the ``pbtune/lineage`` table (logged when the monitor closes) and the
latest is ``pbtune/last_event`` in the run summary. Works offline (``WANDB_MODE=offline``).

Example::

    pbtune.run(MyTrainable, config=cfg, monitors=[WandbMonitor(project="my-pbt")])
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from pbtune.config import RunConfig
from pbtune.integrations._core import require
from pbtune.report._throttle import Throttle
from pbtune.report.data import RunData, load_run, scalar_points
from pbtune.store.base import PopulationStore

__all__ = ["WandbMonitor"]

_NOTABLE = ("exploit", "explore", "resume", "fail")
_COLUMNS = ["step", "kind", "donor", "donor_step", "summary"]


class WandbMonitor:
    """A :func:`pbtune.run` monitor (``update(store, config)`` / ``close()``) that logs to W&B.

    Args:
        project / entity: where the runs go (W&B's defaults when None).
        group: the W&B group of the members' runs (default: the PBT run's name).
        mode: ``"online"``, ``"offline"`` or ``"disabled"`` (default: W&B's, e.g. ``WANDB_MODE``).
        dir: where W&B writes its local files.
        tags: added to every member's run.
        min_interval: seconds between two reads of the store (also spaced so that reading
            takes at most a tenth of the time).
        init: the function that starts a run (default ``wandb.init``); tests pass a recorder.

    After :meth:`close`, ``member_runs`` maps member ids to the W&B runs (finished).
    """

    def __init__(
        self,
        *,
        project: str | None = None,
        entity: str | None = None,
        group: str | None = None,
        mode: str | None = None,
        dir: str | None = None,
        tags: tuple[str, ...] = (),
        min_interval: float = 2.0,
        init: Callable[..., Any] | None = None,
    ) -> None:
        self.project, self.entity, self.group, self.mode, self.dir = project, entity, group, mode, dir
        self.tags = tuple(tags)
        self.min_interval = min_interval
        self._init = init
        self.member_runs: dict[int, Any] = {}
        self._last_step: dict[int, int] = {}  # member -> last step logged to its history
        self._seen_events: set[int] = set()
        self._lineage: dict[int, list[list[Any]]] = {}
        self._throttle = Throttle(min_interval)
        self._source: tuple[PopulationStore, str] | None = None
        self._closed = False

    def _start(self, data: RunData, member_id: int) -> Any:
        if member_id not in self.member_runs:
            init = self._init or require("wandb", "wandb", "W&B logging").init
            first = dict(data.member(member_id).hparams)
            for event in data.events:  # the first hyperparameters, not the current ones
                if event.member_id == member_id and event.kind == "init" and event.new_hparams:
                    first = dict(event.new_hparams)
                    break
            self.member_runs[member_id] = init(
                project=self.project, entity=self.entity, group=self.group or data.run, mode=self.mode,
                dir=self.dir, name=f"{data.run}/member-{member_id}", job_type="pbt-member",
                tags=["pbtune", *self.tags], reinit="create_new",
                config={"pbtune_run": data.run, "pbtune_member": member_id, "metric": data.metric,
                        "mode": data.mode, **{f"init/{k}": v for k, v in first.items()}},
            )
        return self.member_runs[member_id]

    def sync(self, data: RunData) -> int:
        """Log what is new since the last call; return the number of (member, step) points."""
        rows: dict[int, dict[int, dict[str, Any]]] = {}
        points = scalar_points(data, self._last_step)
        for point in points:
            rows.setdefault(point.member_id, {})[point.step] = dict(point.values)
        for event in data.events:
            if event.id in self._seen_events or event.kind not in _NOTABLE:
                continue
            self._seen_events.add(event.id)
            self._lineage.setdefault(event.member_id, []).append(
                [event.step, event.kind, event.donor_id, event.donor_step, event.summary])
            run = self._start(data, event.member_id)
            run.summary["pbtune/last_event"] = f"step {event.step} {event.kind}: {event.summary}"
            if event.kind == "exploit" and event.donor_id is not None:
                # W&B drops history rows older than the run's current step: such marks stay in the table
                if event.step >= self._last_step.get(event.member_id, 0):
                    rows.setdefault(event.member_id, {}).setdefault(event.step, {})["lineage/donor"] = event.donor_id
        for member_id in sorted(rows):
            run = self._start(data, member_id)
            for step in sorted(rows[member_id]):
                run.log(rows[member_id][step], step=step)
                self._last_step[member_id] = max(self._last_step.get(member_id, 0), step)
        return len(points)

    def update(self, store: PopulationStore, config: RunConfig) -> None:
        self._source = (store, config.name)
        if self._throttle.due():
            self._throttle.run(lambda: self.sync(load_run(store, config.name)))

    def close(self) -> None:
        """Log what the last throttled update skipped, the lineage tables, and finish the runs."""
        if self._source is None or self._closed:
            return
        self._closed = True
        store, run_name = self._source
        data = load_run(store, run_name)
        self.sync(data)
        for member in data.members:
            run = self._start(data, member.member_id)
            run.summary["pbtune/state"] = member.state.value
            run.summary["pbtune/final_hparams"] = dict(member.hparams)
            rows = self._lineage.get(member.member_id, [])
            if rows:
                table = require("wandb", "wandb", "W&B logging").Table(columns=_COLUMNS, data=rows)
                run.log({"pbtune/lineage": table}, step=self._last_step.get(member.member_id, 0))
            run.finish(exit_code=1 if member.state.value == "failed" else 0)
