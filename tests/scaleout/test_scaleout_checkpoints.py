"""Checkpoints over fsspec: a real S3-compatible server (moto), memory:// and a local folder."""

from __future__ import annotations

import os
import uuid
from pathlib import Path

import pytest
from scaleout_helpers import audit, checkpoint_rows, quadratic_config, stored_objects

from pbtune.checkpoints import CheckpointStore
from pbtune.engine.worker import Worker
from pbtune.errors import CheckpointError, CorruptCheckpointError
from pbtune.member import Population
from pbtune.testing.trainables import Quadratic


@pytest.fixture(params=["s3", "memory", "local"])
def ckpt(request: pytest.FixtureRequest, tmp_path: Path) -> CheckpointStore:
    if request.param == "s3":
        url = request.getfixturevalue("s3_bucket")
        endpoint = request.getfixturevalue("moto_endpoint")
        return CheckpointStore(url, cache_dir=str(tmp_path / "cache"), endpoint_url=endpoint)
    if request.param == "memory":
        return CheckpointStore(f"memory://pbtune-{uuid.uuid4().hex[:8]}/ck", cache_dir=str(tmp_path / "cache"))
    return CheckpointStore(str(tmp_path / "ck"))


def _write(path: Path, text: str) -> str:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return str(path)


def test_put_fetch_copy_delete_round_trip(ckpt: CheckpointStore, tmp_path: Path) -> None:
    ref = ckpt.put(_write(tmp_path / "src" / "w.json", '{"w": 1}'), run="r", member_id=0, step=5)
    assert ref.key.endswith(".json") and ref.size == 8
    assert Path(ckpt.fetch(ref.key, ref.sha256)).read_text() == '{"w": 1}'
    copy = ckpt.copy(ref.key, ref.sha256, run="r", member_id=1, step=5)
    assert copy.key != ref.key and copy.sha256 == ref.sha256 and "member-0001" in copy.key
    assert Path(ckpt.fetch(copy.key, copy.sha256)).read_text() == '{"w": 1}'
    ckpt.delete(ref.key)
    assert not ckpt.exists(ref.key) and ckpt.exists(copy.key)
    ckpt.delete(ref.key)  # deleting twice is not an error
    assert stored_objects(ckpt, "r") == {copy.key}  # no temporary objects left behind


def test_folder_checkpoints_keep_their_layout(ckpt: CheckpointStore, tmp_path: Path) -> None:
    folder = tmp_path / "model"
    _write(folder / "weights.bin", "abc")
    _write(folder / "opt" / "state.txt", "xyz")
    ref = ckpt.put(str(folder), run="r", member_id=2, step=1)
    local = Path(ckpt.fetch(ref.key, ref.sha256))
    assert (local / "weights.bin").read_text() == "abc" and (local / "opt" / "state.txt").read_text() == "xyz"


def test_corrupt_and_missing_checkpoints_are_refused(ckpt: CheckpointStore, tmp_path: Path) -> None:
    ref = ckpt.put(_write(tmp_path / "w.txt", "good bytes"), run="r", member_id=0, step=1)
    with ckpt.fs.open(f"{ckpt.root}/{ref.key}", "wb") as handle:  # bit rot / a torn upload
        handle.write(b"bad bytes!")
    with pytest.raises(CorruptCheckpointError, match="corrupt"):
        ckpt.fetch(ref.key, ref.sha256)
    with pytest.raises(CheckpointError, match="missing"):
        ckpt.fetch("r/member-0000/nothing-here", ref.sha256)


def test_whole_pbt_flow_through_the_checkpoint_store(ckpt: CheckpointStore, tmp_path: Path) -> None:
    """put at every ready point, copy on exploit, fetch on resume, gc of old checkpoints."""
    config = quadratic_config("flow", f"sqlite:///{tmp_path}/pbt.db", ckpt.url, workers=1,
                              keep_checkpoints=1, trainable_args={})
    population = Population(config, checkpoints=ckpt)
    Worker(config, Quadratic, store=population.store, checkpoints=ckpt).run()

    assert audit(population.store, ckpt, config) == []
    events = population.store.events(config.name)
    assert any(e.kind == "exploit" for e in events), "truncation over 4 members must exploit"
    # gc: exactly the bookkept checkpoints exist, at most keep_checkpoints per member
    rows = checkpoint_rows(config.storage, config.name)
    assert stored_objects(ckpt, config.name) == set(rows)
    per_member = [sum(1 for m, _ in rows.values() if m == i) for i in range(config.population)]
    assert max(per_member) <= config.keep_checkpoints
    # an exploited member's current checkpoint is a copy under its own prefix with the donor's bytes
    exploit = next(e for e in events if e.kind == "exploit")
    assert f"member-{exploit.member_id:04d}" in population.store.get_member(config.name, exploit.member_id).checkpoint


def test_fsspec_configuration_reaches_the_store_without_code(
    moto_endpoint: str, s3_bucket: str, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """fsspec's own config (``FSSPEC_S3_ENDPOINT_URL`` in the environment) is all a config needs."""
    import fsspec.config

    monkeypatch.setitem(fsspec.config.conf, "s3", {"endpoint_url": moto_endpoint})
    store = CheckpointStore(s3_bucket, cache_dir=str(tmp_path / "c"))
    ref = store.put(_write(tmp_path / "x.txt", "via config"), run="r", member_id=0, step=1)
    assert Path(store.fetch(ref.key, ref.sha256)).read_text() == "via config"
    assert os.path.basename(ref.key).startswith("step-00000001")
