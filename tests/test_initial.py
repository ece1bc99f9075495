"""Random search and grid search as first-class methods: exploit none, init grid."""

from __future__ import annotations

import math
import random
from pathlib import Path

import pytest

import pbtune
from pbtune.config import RunConfig
from pbtune.errors import InvalidConfigError
from pbtune.initial import first_hparams, grid
from pbtune.space import Choice, Float, Int, Space
from pbtune.strategies import Continue, NoExploit
from pbtune.testing.trainables import Quadratic
from pbtune.types import MemberRecord, MemberState


def test_grid_spreads_every_hyperparameter_over_its_domain() -> None:
    space = Space({"lr": Float(1e-4, 1e-1, log=True), "depth": Int(1, 9), "act": Choice(["relu", "tanh", "gelu"])})
    points = grid(space, 27)
    assert len(points) == 27 and len({tuple(sorted(p.items())) for p in points}) == 27
    assert sorted({round(math.log10(p["lr"]), 6) for p in points}) == [-4.0, -2.5, -1.0]
    assert sorted({p["depth"] for p in points}) == [1, 5, 9] and {p["act"] for p in points} == {"relu", "tanh", "gelu"}
    few = grid(Space({"x": Float(0.0, 1.0)}), 5)
    assert [p["x"] for p in few] == [0.0, 0.25, 0.5, 0.75, 1.0]
    two_ints = grid(Space({"n": Int(1, 2)}), 4)  # fewer distinct points than members: repeats
    assert [p["n"] for p in two_ints] == [1, 2, 1, 2]
    for point in grid(space, 7):  # fewer members than the full grid: still inside the space
        space.validate(point, where="grid")


def test_random_init_is_what_the_seed_draws() -> None:
    space = Space({"x": Float(0.0, 1.0)})
    rng = random.Random("3:init")
    assert first_hparams(space, 4, 3, "random") == [space.sample(rng) for _ in range(4)]
    with pytest.raises(InvalidConfigError, match="`init` of `config` must be one of"):
        RunConfig(name="r", space={"x": {"type": "float", "low": 0, "high": 1}}, init="sobol")


def test_exploit_none_always_continues() -> None:
    members = [MemberRecord("r", i, MemberState.RUNNING, 5, {}, score=float(i), checkpoint="k") for i in range(4)]
    decision = NoExploit().decide(members, 0, random.Random(0), mode="max")
    assert isinstance(decision, Continue)
    cfg = RunConfig(name="r", space={"x": {"type": "float", "low": 0, "high": 1}}, exploit="none", init="grid")
    assert cfg.to_dict()["exploit"] == {"name": "none"} and RunConfig.from_dict(cfg.to_dict()).exploit == NoExploit()


def test_random_search_run_never_exploits_and_keeps_first_hparams(tmp_path: Path) -> None:
    result = pbtune.run(Quadratic, name="rs", space={"lr": {"type": "float", "low": 0.001, "high": 0.3, "log": True}},
                        population=3, workers=1, budget=6, ready={"interval": 2}, exploit="none", init="grid",
                        storage=f"sqlite:///{tmp_path}/p.db", checkpoints=str(tmp_path / "ck"), progress=False)
    store = pbtune.open_store(f"sqlite:///{tmp_path}/p.db")
    assert {e.kind for e in store.events("rs")} == {"init"}
    assert sorted(round(m.hparams["lr"], 6) for m in result.members) == [0.001, round(math.sqrt(0.0003), 6), 0.3]
