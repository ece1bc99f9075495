"""Export: the best checkpoint copied out with a JSON account of how it was made."""

from __future__ import annotations

import json
import os
from typing import Any

import pytest
from report_helpers import SmallRun

from pbtune.checkpoints import CheckpointStore
from pbtune.errors import CheckpointError, CorruptCheckpointError, InvalidConfigError
from pbtune.lineage import schedule
from pbtune.report.data import model_age, score_curves
from pbtune.report.export import export_member
from pbtune.testing.trainables import Quadratic


def test_export_best_copies_the_verified_checkpoint_and_writes_its_story(small_run: SmallRun, tmp_path: Any) -> None:
    data = small_run.data
    best = small_run.result.best
    out = str(tmp_path / "best")
    result = export_member(data, "best", out)
    assert result.member_id == best.member_id
    assert sorted(os.listdir(out)) == ["checkpoint.ckpt", "member.json"]
    source = CheckpointStore(small_run.config.checkpoints).fetch(best.checkpoint, best.checkpoint_sha256)
    with open(source, "rb") as a, open(result.checkpoint, "rb") as b:
        assert a.read() == b.read()
    # the checkpoint is the model that scored best.score: load it and evaluate
    model = Quadratic()
    model.setup(best.hparams)
    model.load(result.checkpoint)
    assert -((model.theta - model.target) ** 2) == best.score

    with open(result.manifest, encoding="utf-8") as handle:
        manifest = json.load(handle)
    assert manifest["member"] == best.member_id and manifest["score"] == best.score
    assert manifest["hparams"] == dict(best.hparams)
    assert manifest["model_age"] == model_age(data.events, best.member_id, best.step)
    assert manifest["schedule"] == [
        {"step": e.step, "hparams": dict(e.hparams), "from_member": e.member_id, "kind": e.kind}
        for e in schedule(data.events, best.member_id)
    ]
    curve = score_curves(data.scores, data.events)[best.member_id]
    assert [(p["step"], p["score"]) for p in manifest["scores"]] == list(zip(curve.steps, curve.values, strict=True))
    assert manifest["model_scores"][-1] == {"age": manifest["model_age"], "score": best.score}
    assert manifest["checkpoint"]["sha256"] == best.checkpoint_sha256
    assert manifest["config"]["name"] == "toy"


def test_export_refuses_to_overwrite_unless_forced(small_run: SmallRun, tmp_path: Any) -> None:
    out = tmp_path / "m1"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    with pytest.raises(InvalidConfigError, match="`out` of `export` must be a new or empty folder"):
        export_member(small_run.data, 1, str(out))
    assert os.listdir(out) == ["keep.txt"]  # nothing lost
    result = export_member(small_run.data, 1, str(out), overwrite=True)
    assert sorted(os.listdir(out)) == ["checkpoint.ckpt", "member.json"]
    assert result.member_id == 1
    assert [p for p in os.listdir(tmp_path) if p != "m1"] == []  # no staging folder or old copy left


def test_export_a_member_without_checkpoint_or_with_a_corrupt_one(small_run: SmallRun, tmp_path: Any) -> None:
    import dataclasses

    member = small_run.data.members[0]
    no_checkpoint = dataclasses.replace(
        small_run.data, members=(dataclasses.replace(member, checkpoint=None), *small_run.data.members[1:])
    )
    with pytest.raises(CheckpointError, match="has no checkpoint"):
        export_member(no_checkpoint, 0, str(tmp_path / "a"))
    corrupt = dataclasses.replace(
        small_run.data, members=(dataclasses.replace(member, checkpoint_sha256="0" * 64), *small_run.data.members[1:])
    )
    with pytest.raises(CorruptCheckpointError):
        export_member(corrupt, 0, str(tmp_path / "b"))
    assert os.listdir(tmp_path) == []
