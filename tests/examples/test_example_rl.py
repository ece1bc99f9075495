"""The reinforcement-learning example (A2C on gymnasium)."""

from __future__ import annotations

import importlib.util
import sys

import pytest

pytest.importorskip("torch")
pytest.importorskip("gymnasium")

from conftest import example_path  # noqa: E402

import pbtune  # noqa: E402


def _module():
    spec = importlib.util.spec_from_file_location("rl_pbt_example", example_path("rl", "rl_pbt.py"))
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


def test_cartpole_small_improves_over_initial_population(run_small):
    out = run_small("rl", "cartpole_small.yaml")
    assert out.better(out.best_final, out.best_initial)
    assert out.best_final > 30  # a random policy averages ~22 on CartPole
    assert out.events("exploit")


def test_checkpoint_carries_weights_and_recent_returns(tmp_path):
    rl = _module()
    a = rl.A2C(updates_per_step=2)
    a.setup({"lr": 1e-3, "entropy_cost": 0.01, "discount": 0.99})
    a.step()
    a.save(str(tmp_path / "a.pt"))
    b = rl.A2C(updates_per_step=2)
    b.setup({"lr": 5e-3, "entropy_cost": 0.0, "discount": 0.9})
    b.load(str(tmp_path / "a.pt"))
    assert list(b.returns) == list(a.returns) and b.env_steps == a.env_steps == 256
    for p, q in zip(a.model.parameters(), b.model.parameters(), strict=True):
        assert bool((p == q).all())
    assert b.evaluate(episodes=1)["greedy_return"] >= 1.0


def test_the_lunarlander_config_runs_end_to_end(run_small):
    pytest.importorskip("Box2D", reason="LunarLander-v3 needs Box2D: pip install 'gymnasium[box2d]'")
    full = pbtune.load_config(example_path("rl", "lunarlander.yaml"))
    # The full config's agent and space, cut to 2 members x 3 steps of 2 updates (1536 env steps each).
    out = run_small(
        "rl",
        "lunarlander.yaml",
        population=2,
        workers=1,
        budget=3,
        ready={"interval": 1},
        trainable_args={**full.trainable_args, "updates_per_step": 2, "window": 5},
    )
    assert out.config.trainable_args["env"] == "LunarLander-v3"
    assert len(out.final) == 2  # both members finished with a finite score
    assert all(-1000.0 < score < 400.0 for score in out.final.values())  # LunarLander's return range
    assert out.events("exploit")  # the lower-scoring member copied the other
