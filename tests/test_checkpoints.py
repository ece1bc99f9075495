from __future__ import annotations

from pathlib import Path

import pytest

from pbtune.checkpoints import CheckpointStore
from pbtune.errors import CheckpointError, CorruptCheckpointError


@pytest.fixture(params=["local", "memory"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> CheckpointStore:
    if request.param == "local":
        return CheckpointStore(str(tmp_path / "ck"))
    return CheckpointStore(f"memory://pbtune-test-{tmp_path.name}", cache_dir=str(tmp_path / "cache"))


def test_put_fetch_round_trip_for_files_and_folders(store: CheckpointStore, tmp_path: Path) -> None:
    file = tmp_path / "w.bin"
    file.write_bytes(b"\x00\x01weights")
    ref = store.put(str(file), run="r", member_id=3, step=7)
    assert ref.size == 9 and len(ref.sha256) == 64 and "member-0003/step-00000007" in ref.key
    assert Path(store.fetch(ref.key, ref.sha256)).read_bytes() == b"\x00\x01weights"
    folder = tmp_path / "dir"
    (folder / "sub").mkdir(parents=True)
    (folder / "a.txt").write_text("a")
    (folder / "sub" / "b.txt").write_text("b")
    dref = store.put(str(folder), run="r", member_id=3, step=8)
    fetched = Path(store.fetch(dref.key, dref.sha256))
    assert (fetched / "sub" / "b.txt").read_text() == "b"


def test_copy_and_delete(store: CheckpointStore, tmp_path: Path) -> None:
    file = tmp_path / "w.txt"
    file.write_text("donor")
    ref = store.put(str(file), run="r", member_id=0, step=1)
    copy = store.copy(ref.key, ref.sha256, run="r", member_id=1, step=1)
    assert copy.key != ref.key and copy.sha256 == ref.sha256
    store.delete(ref.key)
    assert not store.exists(ref.key)
    assert Path(store.fetch(copy.key, copy.sha256)).read_text() == "donor"


def test_corruption_is_detected_not_loaded(tmp_path: Path) -> None:
    store = CheckpointStore(str(tmp_path / "ck"))
    file = tmp_path / "w.txt"
    file.write_text("good weights")
    ref = store.put(str(file), run="r", member_id=0, step=1)
    Path(tmp_path / "ck" / ref.key).write_text("flipped bits")
    with pytest.raises(CorruptCheckpointError, match="corrupt"):
        store.fetch(ref.key, ref.sha256)


def test_missing_and_traversal_keys_are_errors(store: CheckpointStore, tmp_path: Path) -> None:
    with pytest.raises(CheckpointError, match="missing"):
        store.fetch("r/none", "0" * 64)
    with pytest.raises(CheckpointError, match="inside the store"):
        store.fetch("../etc/passwd", "0" * 64)
    with pytest.raises(CheckpointError, match="does not exist"):
        store.put(str(tmp_path / "nope"), run="r", member_id=0, step=0)


def test_no_temporary_files_are_left_behind(tmp_path: Path) -> None:
    store = CheckpointStore(str(tmp_path / "ck"))
    file = tmp_path / "w.txt"
    file.write_text("x")
    for step in range(3):
        store.put(str(file), run="r", member_id=0, step=step)
    names = [p.name for p in (tmp_path / "ck" / "r" / "member-0000").iterdir()]
    assert len(names) == 3 and not any(".tmp-" in n for n in names)
