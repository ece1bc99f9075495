from __future__ import annotations

from pbtune.config import RunConfig
from pbtune.member import Population
from pbtune.testing.member_suite import MemberConformance, PopulationLike


class TestInProcessMember(MemberConformance):
    def open_population(self, config: RunConfig) -> PopulationLike:
        return Population(config)
