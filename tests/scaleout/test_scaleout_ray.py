"""The Ray launcher on a local Ray instance (``ray.init(num_cpus=2)``)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from scaleout_helpers import audit, quadratic_config

from pbtune.checkpoints import CheckpointStore
from pbtune.errors import InvalidConfigError
from pbtune.scaleout.ray_launcher import launch_ray, parse_resources, ray_options
from pbtune.store import open_store

PROBES = Path(__file__).with_name("scaleout_ray_trainable.py")


def test_resources_per_worker_become_actor_options() -> None:
    assert ray_options(None) == {"num_cpus": 1.0}
    assert ray_options({"cpu": 2, "GPU": 0.5, "memory": 2e9, "slot": 1}) == {
        "num_cpus": 2.0, "num_gpus": 0.5, "memory": 2_000_000_000, "resources": {"slot": 1.0}}
    assert ray_options({"gpu": 1}) == {"num_gpus": 1.0, "num_cpus": 1.0}
    with pytest.raises(InvalidConfigError, match=r"resources_per_worker.gpu"):
        ray_options({"gpu": -1})
    with pytest.raises(InvalidConfigError, match="resources_per_worker"):
        ray_options({"cpu": "two"})  # type: ignore[dict-item]


def test_resources_from_the_command_line() -> None:
    assert parse_resources(None) is None
    assert parse_resources('{"cpu": 1, "gpu": 0.5}') == {"cpu": 1, "gpu": 0.5}
    for bad in ("x", "[1]", '{"gpu": "all"}'):
        with pytest.raises(InvalidConfigError, match="resources-per-worker|resources_per_worker"):
            parse_resources(bad)


@pytest.fixture(scope="module")
def local_ray() -> Iterator[object]:
    ray = pytest.importorskip("ray", reason="the Ray launcher needs pip install 'pbtune[ray]'")
    ray.init(num_cpus=2, resources={"slot": 2}, include_dashboard=False, log_to_driver=False,
             configure_logging=False)
    yield ray
    ray.shutdown()


def test_actors_train_the_population_with_the_requested_resources(local_ray: object, tmp_path: Path) -> None:
    config = quadratic_config("ray", f"sqlite:///{tmp_path}/pbt.db", str(tmp_path / "ck"),
                              trainable=f"{PROBES}:ResourceProbe", workers=2)
    result = launch_ray(config, resources_per_worker={"cpu": 0.5, "slot": 1}, progress=False)
    store = open_store(config.storage)
    assert audit(store, CheckpointStore(config.checkpoints), config) == []
    assert result.best.step == config.budget and result.checkpoint_path is not None
    reported = {(s.metrics["cpu"], s.metrics["slot"]) for s in store.scores("ray")}
    assert reported == {(0.5, 1.0)}  # every step ran in an actor holding exactly what was asked
    assert any(e.kind == "exploit" for e in store.events("ray"))


@pytest.mark.slow
def test_a_dead_actor_is_replaced_and_its_member_resumed(local_ray: object, tmp_path: Path) -> None:
    config = quadratic_config("ray-dies", f"sqlite:///{tmp_path}/pbt.db", str(tmp_path / "ck"),
                              trainable=f"{PROBES}:DiesOnce", lease_seconds=2.0,
                              trainable_args={"marker": str(tmp_path / "died")})
    result = launch_ray(config, progress=False)
    assert (tmp_path / "died").exists()
    store = open_store(config.storage)
    assert audit(store, CheckpointStore(config.checkpoints), config) == []
    assert any(e.kind == "resume" for e in store.events("ray-dies"))
    assert all(m.step == config.budget for m in result.members)
