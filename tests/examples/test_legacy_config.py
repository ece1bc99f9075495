"""The converter for legacy MNIST-PBT JSON configs (src/pbtune/legacy.py)."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
from conftest import example_path, run_config  # noqa: E402

import pbtune
from pbtune.legacy import convert_legacy_config, is_legacy_config

SECTIONED = {
    "general": {"model": "conv", "n_filters": "16,32", "seed": 117, "gpus": "0", "train_dir": "/x"},
    "train": {"PBT_lr": "0.1,0.0001", "PBT_keep_prob": "0.5,0.99", "PBT_batch_size": "32,64,128",
              "mutation": "0.8,1.2", "num_epochs": 2, "num_epochs_tot": 5, "num_worker_tot": 10,
              "num_workers_paral": 4, "lr": 0.01, "batch_size": 200, "version": "train_MPL"},
    "test": {"batch_size": 1, "gpus": "0,1", "sleep_time_sec": 20},
}


def test_mapping_of_every_legacy_key():
    out = convert_legacy_config(SECTIONED, trainable="m.py:T", name="conv")
    assert out["space"] == {
        "lr": {"type": "float", "low": 0.0001, "high": 0.1},
        "keep_prob": {"type": "float", "low": 0.5, "high": 0.99},
        "batch_size": {"type": "choice", "values": [32, 64, 128]},
    }
    assert (out["population"], out["workers"], out["ready"], out["budget"]) == (10, 4, {"interval": 2}, 6)
    assert out["explore"] == {"name": "perturb", "factors": [0.8, 1.2]}
    assert out["exploit"] == {"name": "truncation", "quantile": 0.2, "rounding": "ceil"}  # the old ceil(n / 5)
    assert out["seed"] == 117 and out["name"] == "conv" and out["trainable"] == "m.py:T"
    # model settings pass through with the old trainer's Adam; the old program's paths are dropped; tuned
    # keys win over fixed ones, whose values become the baseline (what a vanilla run trains with)
    assert out["trainable_args"] == {"model": "conv", "n_filters": "16,32", "seed": 117, "optimizer": "adam",
                                     "baseline": {"lr": 0.01, "batch_size": 200}}
    assert out["devices"] == [0]  # gpus -> device placement (the test section's gpus are ignored)
    config = pbtune.RunConfig.from_dict(out)
    assert config.population == 10 and config.explore.factors == (0.8, 1.2)


def test_detection():
    assert is_legacy_config(SECTIONED) and is_legacy_config({"PBT_lr": "0,1"})
    assert not is_legacy_config({"name": "x", "space": {"lr": [1, 2]}, "PBT_lr": "0,1"})
    assert not is_legacy_config({"train": {"lr": 0.1}}) and not is_legacy_config([1])


@pytest.mark.parametrize("patch, field, fragment", [
    ({"PBT_lr": "0.1"}, "PBT_lr", "two numbers"),
    ({"PBT_lr": "0.1,0.1"}, "PBT_lr", "two different"),
    ({"PBT_lr": "a,b"}, "PBT_lr", "three or more"),
    ({"PBT_lr": "1,2,2"}, "PBT_lr", "without duplicates"),
    ({"PBT_lr": 0.5}, "PBT_lr", "'low,high'"),
    ({"num_workers_paral": 11}, "num_workers_paral", "<= num_worker_tot (10)"),
    ({"num_worker_tot": 1}, "num_worker_tot", "integer >= 2"),
    ({"num_epochs": "x"}, "num_epochs", "integer >= 1"),
    ({"mutation": "0.8,-1"}, "mutation", "positive factors"),
    ({"lerning_rate": 0.1}, "lerning_rate", "'PBT_<name>' or one of"),
])
def test_clear_errors(patch, field, fragment):
    data = {**SECTIONED, "train": {**SECTIONED["train"], **patch}}
    with pytest.raises(pbtune.InvalidConfigError) as info:
        convert_legacy_config(data, trainable="m.py:T")
    assert info.value.field == field and fragment in str(info.value) and "legacy config" in str(info.value)


@pytest.mark.parametrize("gpus, expected", [("0,1", {"devices": [0, 1]}), ("", {"gpus_per_worker": 0}),
                                             (1, {"devices": [1]})])
def test_gpus_map_to_device_placement(gpus, expected):
    data = {**SECTIONED, "general": {**SECTIONED["general"], "gpus": gpus}}
    out = convert_legacy_config(data, trainable="m.py:T")
    assert {k: out[k] for k in ("devices", "gpus_per_worker") if k in out} == expected
    for bad in ("0,x", "-1", True, [0]):
        with pytest.raises(pbtune.InvalidConfigError, match="`gpus` of `legacy config` must be device ids"):
            convert_legacy_config({**SECTIONED, "general": {**SECTIONED["general"], "gpus": bad}}, trainable="m.py:T")


def test_missing_trainable_and_keys():
    with pytest.raises(pbtune.InvalidConfigError, match="trainable.*mnist_pbt.py"):
        convert_legacy_config(SECTIONED)
    flat = {"PBT_lr": "0.01,0.1", "num_epochs": 1, "num_epochs_tot": 3}
    with pytest.raises(pbtune.InvalidConfigError, match="num_worker_tot"):
        convert_legacy_config(flat, trainable="m.py:T")


def _shipped(tmp_path, **train):
    with open(example_path("mnist", "legacy.json"), encoding="utf-8") as handle:
        data = json.load(handle)
    data["train"].update(train)
    data["trainable_args"].update({"train_size": 2000, "val_size": 500, "batches_per_step": 10})
    data["storage"] = f"sqlite:///{tmp_path}/pbtune.db"
    data["checkpoints"] = str(tmp_path / "ck")
    return data


def test_shipped_legacy_json_runs_and_improves(tmp_path):
    pytest.importorskip("torch")
    data = _shipped(tmp_path, num_epochs_tot=4, num_worker_tot=3)
    converted = convert_legacy_config(data, name="legacy")
    config = pbtune.RunConfig.from_dict(converted, base_dir=example_path("mnist"))
    out = run_config(config)
    assert out.better(out.best_final, out.best_initial)
    assert set(out.final) == {0, 1, 2}
    assert all(0.5 <= m.hparams["keep_prob"] <= 0.99 for m in out.store.list_members("legacy"))


def test_cli_runs_legacy_json(tmp_path):
    pytest.importorskip("torch")
    path = tmp_path / "legacy.json"
    data = _shipped(tmp_path, num_epochs_tot=2, num_worker_tot=2, num_workers_paral=1)
    data["trainable"] = example_path("mnist", "mnist_pbt.py") + ":MNISTTrainable"
    path.write_text(json.dumps(data))
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run([sys.executable, "-m", "pbtune.cli", "run", str(path), "-q"], capture_output=True,
                          text=True, timeout=120, env=env, cwd=tmp_path)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "best member" in proc.stdout
