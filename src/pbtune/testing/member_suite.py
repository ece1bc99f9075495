"""Conformance suite for member handles: one set of tests for every transport.

Subclass :class:`MemberConformance` in a test module and implement ``open_population``;
pytest collects the inherited tests (the in-process Member, the HTTP PBTClient, ...).
"""

from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Any, Protocol

import pytest

from pbtune.config import RunConfig
from pbtune.errors import MemberFinishedError, PBTuneError
from pbtune.member import MemberProtocol

__all__ = ["MemberConformance", "PopulationLike", "suite_config"]


class PopulationLike(Protocol):
    def member(self, member_id: int) -> MemberProtocol: ...


def suite_config(tmp_path: Path, **overrides: Any) -> RunConfig:
    settings: dict[str, Any] = dict(
        name="suite", population=4, budget=100, ready={"interval": 2}, mode="max",
        space={"lr": {"type": "float", "low": 1e-4, "high": 1.0, "log": True},
               "layers": {"type": "int", "low": 1, "high": 8},
               "act": {"type": "choice", "values": ["relu", "tanh", "gelu"]}},
        exploit={"name": "truncation", "quantile": 0.25}, explore="perturb",
        storage=f"sqlite:///{tmp_path}/suite.db", checkpoints=str(tmp_path / "ckpts"), seed=3,
    )
    settings.update(overrides)
    return RunConfig(**settings)


def _write(path: Path, text: str) -> str:
    path.write_text(text)
    return str(path)


class MemberConformance:
    """Behaviour every member handle must show. Override :meth:`open_population`."""

    def open_population(self, config: RunConfig) -> PopulationLike:
        raise NotImplementedError

    @pytest.fixture
    def config(self, tmp_path: Path) -> RunConfig:
        return suite_config(tmp_path)

    @pytest.fixture
    def population(self, config: RunConfig) -> PopulationLike:
        return self.open_population(config)

    def _train_all(
        self, population: PopulationLike, tmp_path: Path, scores: dict[int, float], step: int
    ) -> dict[int, MemberProtocol]:
        members = {i: population.member(i) for i in scores}
        for i, m in members.items():
            m.report(step, scores[i], checkpoint=_write(tmp_path / f"w{i}-{step}.txt", f"weights of {i} at {step}"))
        return members

    def test_new_member_has_hparams_inside_the_space(self, population: PopulationLike, config: RunConfig) -> None:
        member = population.member(0)
        config.space.validate(member.hparams)
        assert member.step == 0
        assert member.parameters_path() is None

    def test_save_stores_a_checkpoint_that_parameters_path_returns(
        self, population: PopulationLike, tmp_path: Path
    ) -> None:
        member = population.member(1)
        member.save(_write(tmp_path / "a.txt", "first"), 0.5)
        member.save(_write(tmp_path / "b.txt", "second"), 0.7)
        assert member.step == 2
        path = member.parameters_path()
        assert path is not None and Path(path).read_text() == "second"

    def test_not_ready_means_no_exploit(self, population: PopulationLike, tmp_path: Path) -> None:
        members = self._train_all(population, tmp_path, {0: 1.0, 1: 2.0, 2: 3.0, 3: 4.0}, step=1)
        assert members[0].should_exploit() is False  # interval is 2, only 1 step done

    def test_worst_member_copies_weights_and_hparams_of_the_best(
        self, population: PopulationLike, tmp_path: Path
    ) -> None:
        members = self._train_all(population, tmp_path, {0: 1.0, 1: 2.0, 2: 3.0, 3: 4.0}, step=2)
        worst, best = members[0], members[3]
        assert worst.should_exploit() is True
        donor = worst.exploit()
        assert donor is not None and donor.member_id == 3
        assert worst.hparams == best.hparams
        path = worst.parameters_path()
        assert path is not None and Path(path).read_text() == "weights of 3 at 2"
        before = worst.hparams
        after = worst.explore()
        assert after != before
        assert after == worst.hparams
        population.member(0)  # a fresh handle sees the explored hparams
        assert population.member(0).hparams == after

    def test_best_member_does_not_exploit_and_waits_another_interval(
        self, population: PopulationLike, tmp_path: Path
    ) -> None:
        members = self._train_all(population, tmp_path, {0: 1.0, 1: 2.0, 2: 3.0, 3: 4.0}, step=2)
        assert members[3].should_exploit() is False
        members[3].report(3, 5.0)
        assert members[3].should_exploit() is False  # the ready interval restarted at step 2

    def test_exploit_without_a_decision_is_an_error(self, population: PopulationLike) -> None:
        with pytest.raises(PBTuneError):
            population.member(2).exploit()

    def test_nan_score_ranks_worst(self, population: PopulationLike, tmp_path: Path) -> None:
        members = self._train_all(population, tmp_path, {0: 1.0, 1: math.nan, 2: 3.0, 3: 4.0}, step=2)
        assert members[1].should_exploit() is True
        assert members[0].should_exploit() is False

    def test_rejoin_keeps_identity(self, population: PopulationLike, tmp_path: Path) -> None:
        first = population.member(2)
        first.save(_write(tmp_path / "c.txt", "third"), 0.1)
        again = population.member(2)
        assert again.hparams == first.hparams
        assert again.step == 1

    def test_finished_member_cannot_report(self, population: PopulationLike, tmp_path: Path) -> None:
        member = population.member(3)
        member.save(_write(tmp_path / "d.txt", "x"), 0.1)
        member.finish()
        with pytest.raises(MemberFinishedError):
            member.report(2, 0.2)

    def test_checkpoints_are_collected_to_the_keep_bound(
        self, population: PopulationLike, tmp_path: Path, config: RunConfig
    ) -> None:
        member = population.member(0)
        for step in range(1, 7):
            member.save(_write(tmp_path / f"e{step}.txt", f"v{step}"), float(step))
        root = Path(config.checkpoints) / config.name / "member-0000"
        if root.exists():  # transports that store checkpoints elsewhere check this in their own tests
            assert len(os.listdir(root)) == config.keep_checkpoints
