"""A ready point against the store: one transaction, ranked in SQL, the same plan as the full snapshot."""

from __future__ import annotations

import random
from collections.abc import Sequence
from pathlib import Path

import pytest
import sqlalchemy as sa

from pbtune import ready_point
from pbtune.config import RunConfig
from pbtune.round import ExploitPlan, ReadyCheck, plan_member
from pbtune.store import SQLStore
from pbtune.store.base import PopulationStore
from pbtune.strategies._view import PopulationView
from pbtune.testing._store_rounds import ref
from pbtune.types import MemberRecord, MemberState

SPACE = {"lr": {"type": "float", "low": 0.001, "high": 1.0, "log": True}}


class _SnapshotStore(SQLStore):
    """The same store answering the view from a full read (the contract's default)."""

    def population_view(self, run: str, mode: str, known: Sequence[MemberRecord] = ()) -> PopulationView:
        return PopulationStore.population_view(self, run, mode, known)


def _config(**overrides: object) -> RunConfig:
    settings: dict = dict(name="r", space=SPACE, population=8, ready={"interval": 2}, seed=3)
    settings.update(overrides)
    return RunConfig(**settings)


def _fill(store: SQLStore, config: RunConfig, seed: int) -> None:
    """Members at step 2 with seeded scores (some ties, a NaN, a failed member); member 0 not yet reported."""
    rng = random.Random(seed)
    store.create_run(config.name, config.to_dict())
    for i in range(config.population):
        store.add_member(config.name, i, {"lr": rng.uniform(0.001, 1.0)})
    for i in range(1, config.population):
        score = float("nan") if rng.random() < 0.1 else float(rng.randint(0, 5))
        store.report(config.name, i, 2, score, checkpoint=ref(f"r/m{i}/2", 2))
    if rng.random() < 0.5:
        store.set_state(config.name, rng.randrange(1, config.population), MemberState.FAILED, error="boom")


@pytest.mark.parametrize("exploit", ["truncation", "tournament", {"name": "truncation", "quantile": 0.5}])
@pytest.mark.parametrize("mode", ["max", "min"])
def test_report_plans_as_the_full_snapshot_would(tmp_path: Path, exploit: object, mode: str) -> None:
    config = _config(exploit=exploit, mode=mode)
    for seed in range(6):
        stores = [SQLStore(f"sqlite:///{tmp_path}/sql{seed}.db"), _SnapshotStore(f"sqlite:///{tmp_path}/full{seed}.db")]
        plans = []
        for store in stores:
            _fill(store, config, seed)
            score = float(random.Random(seed).randint(0, 5))
            reported = ready_point.report(store, config, 0, 2, score, checkpoint=ref("r/m0/2", 2), decide=True)
            plans.append(reported.plan)
            if isinstance(reported.plan, ReadyCheck):  # a continue restarts the ready interval at once
                assert reported.record.last_ready_step == 2
            store.close()
        assert plans[0] == plans[1] and plans[0] is not None, seed


def test_a_continue_is_one_transaction_and_never_reads_the_population(tmp_path: Path,
                                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    config = _config()
    store = SQLStore(f"sqlite:///{tmp_path}/pbt.db")
    _fill(store, config, 0)
    begins: list[int] = []
    sa.event.listen(store._engine, "begin", lambda conn: begins.append(1))
    monkeypatch.setattr(store, "list_members", lambda run: pytest.fail("the ready point read every member"))
    reported = ready_point.report(store, config, 0, 2, 99.0, checkpoint=ref("r/m0/2", 2), decide=True)
    assert isinstance(reported.plan, ReadyCheck) and reported.plan.reason == "not in the bottom quantile"
    assert len(begins) == 1
    assert store.get_member("r", 0).last_ready_step == 2  # written in that transaction


def test_an_exploit_plan_is_decided_in_the_report_transaction(tmp_path: Path) -> None:
    config = _config()
    store = SQLStore(f"sqlite:///{tmp_path}/pbt.db")
    _fill(store, config, 0)
    begins: list[int] = []
    sa.event.listen(store._engine, "begin", lambda conn: begins.append(1))
    reported = ready_point.report(store, config, 0, 2, -1.0, checkpoint=ref("r/m0/2", 2), decide=True)
    assert isinstance(reported.plan, ExploitPlan) and len(begins) == 1
    assert store.get_member("r", 0).last_ready_step == 0  # an exploit is written when carried out
    snapshot = store.list_members("r")
    assert plan_member(config, snapshot, 0) == reported.plan


def test_without_decide_the_report_leaves_the_decision_to_should_exploit(tmp_path: Path) -> None:
    config = _config()
    store = SQLStore(f"sqlite:///{tmp_path}/pbt.db")
    _fill(store, config, 0)
    reported = ready_point.report(store, config, 0, 2, 99.0, checkpoint=ref("r/m0/2", 2))
    assert reported.plan is None and reported.record.last_ready_step == 0
    decided = ready_point.decide(store, config, reported.record)
    assert isinstance(decided.plan, ReadyCheck) and decided.record.last_ready_step == 2


@pytest.mark.parametrize("overrides", [{"sync": True}, {"ranking": {"window": 2}}])
def test_snapshot_rules_read_the_population_in_one_transaction(tmp_path: Path, overrides: dict) -> None:
    config = _config(**overrides)
    store = SQLStore(f"sqlite:///{tmp_path}/pbt.db")
    _fill(store, config, 1)
    record = store.report("r", 0, 2, -1.0, checkpoint=ref("r/m0/2", 2))
    expected = plan_member(config, store.list_members("r"), 0)
    begins: list[int] = []
    sa.event.listen(store._engine, "begin", lambda conn: begins.append(1))
    decided = ready_point.decide(store, config, record)
    assert len(begins) == 1
    assert decided.plan == expected and expected is not None
