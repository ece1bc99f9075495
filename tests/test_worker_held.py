"""A worker trains members it already leases: after a restart under its id, or a claim whose
reply was lost (the store's retry then claimed another member)."""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any

from pbtune.config import RunConfig
from pbtune.engine.worker import Worker
from pbtune.member import Population
from pbtune.store import open_store
from pbtune.testing.trainables import Counter
from pbtune.types import MemberState


def _config(tmp_path: Path, **overrides: Any) -> RunConfig:
    settings: dict[str, Any] = dict(
        name="held", space={"x": {"type": "float", "low": 0.1, "high": 1.0}}, population=4, workers=1, budget=6,
        ready={"interval": 3}, storage=f"sqlite:///{tmp_path}/p.db", checkpoints=str(tmp_path / "ck"))
    settings.update(overrides)
    return RunConfig(**settings)


def _run_to_the_end(worker: Worker, timeout: float = 60.0) -> None:
    """Run ``worker``; fail (instead of hanging) if it is still going after ``timeout`` seconds."""
    thread = threading.Thread(target=worker.run, daemon=True)
    thread.start()
    thread.join(timeout)
    assert not thread.is_alive(), "the worker never trained a member it leases"


class LosesOneClaimReply:
    """The store, except that the first claim also leases a member whose reply never arrives."""

    def __init__(self, store: Any) -> None:
        self._store = store
        self.lost: int | None = None

    def __getattr__(self, name: str) -> Any:
        return getattr(self._store, name)

    def claim(self, run: str, worker: str, lease_seconds: float, budget: int, **kwargs: Any) -> Any:
        if self.lost is None:
            record = self._store.claim(run, worker, lease_seconds, budget, **kwargs)
            self.lost = record.member_id  # leased to this worker, but the worker never hears of it
        return self._store.claim(run, worker, lease_seconds, budget, **kwargs)


def test_a_worker_trains_the_member_it_leased_before_a_restart(tmp_path: Path) -> None:
    config = _config(tmp_path)
    population = Population(config)
    held = population.store.claim("held", "w-1", 60.0, config.budget)  # then the worker died
    assert held is not None
    _run_to_the_end(Worker(config, Counter, worker_id="w-1", time_share=True))
    members = open_store(config.storage).list_members("held")
    assert all(m.state is MemberState.FINISHED and m.step == 6 for m in members)
    assert not [e for e in open_store(config.storage).events("held") if e.kind == "resume"]  # not taken over


def test_a_member_whose_claim_reply_was_lost_is_trained_without_waiting_for_its_lease(tmp_path: Path) -> None:
    config = _config(tmp_path, lease_seconds=3600.0)  # waiting out the lease would take an hour
    population = Population(config)
    store = LosesOneClaimReply(population.store)
    _run_to_the_end(Worker(config, Counter, worker_id="w-1", time_share=True, store=store))
    assert store.lost is not None
    members = open_store(config.storage).list_members("held")
    assert all(m.state is MemberState.FINISHED and m.step == 6 for m in members)
