"""Retried transactions whose first attempt committed (its answer lost with the connection)."""

from __future__ import annotations

from pathlib import Path

import pytest

from pbtune.store import SQLStore
from pbtune.store.base import CheckpointRef


@pytest.fixture(params=["sqlite", "postgresql"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> SQLStore:
    url = f"sqlite:///{tmp_path}/pbt.db" if request.param == "sqlite" else str(request.getfixturevalue("pg_url"))
    store = SQLStore(url)
    store.create_run("r", {})
    for member in range(2):
        store.add_member("r", member, {"lr": 0.1 * (member + 1)})
    return store


def test_a_retried_exploit_recognises_its_own_commit(store: SQLStore) -> None:
    """The Member deletes the copied checkpoint when apply_exploit returns None; a retry of a
    committed exploit must not return None, or the member would point at a deleted checkpoint."""
    store.report("r", 1, 4, 9.0, checkpoint=CheckpointRef("r/m1/4", 4, "a" * 64, 1))
    version = store.report("r", 0, 4, 1.0).version
    copy = CheckpointRef("r/m0/copy-4-0123456789", 4, "a" * 64, 1)
    args = dict(expected_version=version, donor_id=1, donor_step=4, hparams={"lr": 0.2}, checkpoint=copy,
                summary="copied 1")
    first = store.apply_exploit("r", 0, **args)  # type: ignore[arg-type]
    again = store.apply_exploit("r", 0, **args)  # what _transaction's retry runs
    assert first is not None and again is not None and again.checkpoint == copy.key
    assert sum(e.kind == "exploit" for e in store.events("r", 0)) == 1  # applied once
    other = CheckpointRef("r/m0/copy-4-other", 4, "a" * 64, 1)
    assert store.apply_exploit("r", 0, **{**args, "checkpoint": other}) is None  # a real lost race  # type: ignore[arg-type]
    store.close()
