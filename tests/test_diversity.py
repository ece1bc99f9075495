"""Diversity that survives: the per-round donor cap, and the measure in results and status."""

from __future__ import annotations

from pathlib import Path

from typer.testing import CliRunner

import pbtune
from pbtune.cli import app
from pbtune.config import RunConfig
from pbtune.diversity import diversity
from pbtune.round import ExploitPlan, plan_round
from pbtune.space import Float, Space
from pbtune.testing.trainables import Quadratic
from pbtune.types import EventRecord, MemberRecord, MemberState

SPACE = {"lr": {"type": "float", "low": 0.001, "high": 1.0, "log": True}}


def _population(n: int = 6) -> list[MemberRecord]:
    return [MemberRecord("r", i, MemberState.RUNNING, 4, {"lr": 0.01 * (i + 1)}, score=float(i), checkpoint=f"k{i}",
                         last_ready_step=0) for i in range(n)]


def _donors(max_copies: int | None, seed: int) -> list[int]:
    exploit = {"name": "truncation", "quantile": 0.5, "max_copies": max_copies}
    cfg = RunConfig(name="r", space=SPACE, population=6, exploit=exploit, seed=seed)
    plans = plan_round(cfg, _population(), [0, 1, 2])
    return [p.donor_id for p in plans.values() if isinstance(p, ExploitPlan)]


def test_a_donor_seeds_at_most_max_copies_members_of_a_round() -> None:
    collapsed = next(seed for seed in range(200) if len(set(_donors(None, seed))) == 1)  # all three copy one donor
    capped = _donors(1, collapsed)
    assert len(capped) == 3 and sorted(capped) == [3, 4, 5]  # the cap spreads them over the top half
    assert max(_donors(2, collapsed).count(d) for d in (3, 4, 5)) <= 2


def test_diversity_counts_the_lineages_that_live_on_and_the_spread() -> None:
    members = [MemberRecord("r", i, MemberState.RUNNING, 10, {"lr": lr}) for i, lr in enumerate([0.01, 0.01, 1.0])]
    members.append(MemberRecord("r", 3, MemberState.FAILED, 3, {"lr": 0.5}))
    events = [EventRecord(1, "r", 1, 4, "exploit", 0.0, donor_id=0, donor_step=4),  # 1 now trains 0's model
              EventRecord(2, "r", 2, 8, "exploit", 0.0, donor_id=1, donor_step=8)]  # 2 trains 1's, i.e. 0's
    found = diversity(members, events, Space({"lr": Float(0.001, 1.0, log=True)}))
    assert (found.lineages, found.roots, found.members) == (1, (0,), 4)
    assert abs(found.spread["lr"] - 0.9428) < 1e-3  # pstdev of log10 values -2, -2, 0
    assert found.summary().startswith("1/4 lineages alive; spread lr 0.943")


def test_results_and_status_report_diversity(tmp_path: Path) -> None:
    result = pbtune.run(Quadratic, name="d", space=SPACE, population=4, workers=1, budget=6, ready={"interval": 2},
                        storage=f"sqlite:///{tmp_path}/p.db", checkpoints=str(tmp_path / "ck"), progress=False)
    assert result.diversity is not None and 1 <= result.diversity.lineages <= 4
    assert set(result.diversity.spread) == {"lr"}
    shown = CliRunner().invoke(app, ["status", "d", "--storage", f"sqlite:///{tmp_path}/p.db"])
    assert shown.exit_code == 0 and f"{result.diversity.lineages}/4 lineages alive" in shown.output
