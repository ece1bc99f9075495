"""The server's read-only views of its run: a member, its checkpoint, the run's info, the
live population (a base class of :class:`~pbtune.server.service.PopulationService`)."""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Any

from pbtune.config import RunConfig, is_unbounded
from pbtune.member import Population
from pbtune.ranking import best_member
from pbtune.server._wire import PROTOCOL_VERSION, member_to_wire
from pbtune.server.uploads import UploadArea
from pbtune.store import PopulationStore
from pbtune.types import MemberRecord

__all__ = ["CheckpointInfo", "ServiceReads"]

CheckpointInfo = dict[str, Any]


class ServiceReads:
    """Reads of the run; the service sets these attributes."""

    store: PopulationStore
    run_name: str
    template: dict[str, Any]
    config: RunConfig | None
    shared_roots: tuple[str, ...]
    uploads: UploadArea
    _clock: Callable[[], float]

    def _check_member_id(self, member_id: int) -> Population:
        raise NotImplementedError

    def member(self, member_id: int) -> MemberRecord:
        self._check_member_id(member_id)
        return self.store.get_member(self.run_name, member_id)

    def checkpoint(self, member_id: int) -> CheckpointInfo | None:
        """The member's current checkpoint as a verified local path (what parameters_path loads)."""
        population = self._check_member_id(member_id)
        record = self.store.get_member(self.run_name, member_id)
        if record.checkpoint is None:
            return None
        path = population.checkpoints.fetch(record.checkpoint, record.checkpoint_sha256 or "")
        is_dir = os.path.isdir(path)
        return {
            "path": path, "sha256": record.checkpoint_sha256, "step": record.checkpoint_step, "is_dir": is_dir,
            "size": None if is_dir else os.path.getsize(path),
        }

    def info(self) -> dict[str, Any]:
        config = self.config
        return {
            "protocol": PROTOCOL_VERSION,
            "run": self.run_name,
            "created": config is not None,
            "mode": config.mode if config else self.template.get("mode"),
            "population": config.population if config else self.template.get("population"),
            "budget": _budget(config.budget if config else self.template.get("budget")),
            "ready_interval": config.ready.interval if config else None,
            "lease_seconds": config.lease_seconds if config else self.template.get("lease_seconds"),
            "space": config.space.to_config() if config else None,
            "shared_roots": list(self.shared_roots),
            "max_upload_bytes": self.uploads.max_bytes,
        }

    def population_view(self) -> dict[str, Any]:
        """The live population: every member's state, step, score and hyperparameters."""
        if self.config is None:
            return {"run": self.run_name, "created": False, "members": [], "best": None}
        members = self.store.list_members(self.run_name)
        top = best_member(members, self.config.mode, self.config.ranking)
        best = top.member_id if top is not None else None
        now = self._clock()
        return {
            "run": self.run_name,
            "created": True,
            "mode": self.config.mode,
            "population": self.config.population,
            "budget": _budget(self.config.budget),
            "best": best,
            "time": now,
            "members": [member_to_wire(m, now) for m in members],
        }


def _budget(budget: Any) -> int | None:
    """None for a run whose clients decide when to stop (never the internal placeholder)."""
    return None if is_unbounded(budget) else int(budget)
