"""How a server's population and run name follow the clients (a base class of
:class:`~pbtune.server.service.PopulationService`): a population that grows with the clients
that join, a fresh run name for a second experiment, and the message of a full population."""

from __future__ import annotations

import logging
import threading
from typing import Any

from pbtune.config import RunConfig
from pbtune.initial import first_hparams
from pbtune.member import Population
from pbtune.store import PopulationStore
from pbtune.types import MemberRecord

__all__ = ["PopulationGrowth"]

log = logging.getLogger("pbtune.server.service")


class PopulationGrowth:
    """Growth of the run; the service sets these attributes."""

    store: PopulationStore
    run_name: str
    config: RunConfig | None
    _population: Population | None
    _create_lock: threading.Lock
    _write_gate: Any
    _locks: dict[int, threading.Lock]

    def _free_name(self, base: str) -> str:
        taken = {run.name for run in self.store.list_runs()}
        if base not in taken:
            return base
        name = next(f"{base}-{n}" for n in range(2, len(taken) + 3) if f"{base}-{n}" not in taken)
        log.warning("the store already holds a run %r: this server serves a new run %r (pass run=%r to"
                    " continue the old one)", base, name, base)
        return name

    def _grow(self, token: str) -> MemberRecord | None:
        """Add a member for ``token`` (the population grows with its clients); lease it to it."""
        with self._create_lock:
            assert self.config is not None and self._population is not None
            config = self.config
            with self._write_gate:  # a member freed (or added) while we waited for the lock
                claimed = self.store.claim(self.run_name, token, config.lease_seconds, config.budget)
                if claimed is not None:
                    return claimed
                new_id = max((m.member_id for m in self.store.list_members(self.run_name)), default=-1) + 1
                grown = RunConfig.from_dict({**config.to_dict(), "population": new_id + 1})
                hparams = first_hparams(config.space, new_id + 1, config.seed, config.init)[new_id]

                def add() -> None:  # the stored config and the member in one transaction
                    self.store.reopen_members(self.run_name, [], config=grown.to_dict(),
                                              summary="the population grew with a joining client")
                    self.store.add_member(self.run_name, new_id, hparams)

                self.store.batch(add)
                self._locks.setdefault(new_id, threading.Lock())
                self._population.config = grown
                self.config = grown
                claimed = self.store.claim(self.run_name, token, config.lease_seconds, config.budget,
                                           member_id=new_id)
            if claimed is not None:
                log.info("the population of run %r grew to %d members for client %s", self.run_name,
                         new_id + 1, token)
            return claimed

    def _full_message(self) -> str:
        assert self.config is not None
        members = self.store.list_members(self.run_name)
        done = sum(m.state.is_final or m.step >= self.config.budget for m in members)
        return (
            f"no free member in run {self.run_name!r}: all {len(members)} members are held by live clients"
            f" or done ({done} finished or at the budget of {self.config.budget} steps). Start the server with"
            f" a larger population, or rejoin as a member id; a member whose client stops heartbeating is"
            f" free again after lease_seconds={self.config.lease_seconds:g}"
        )
