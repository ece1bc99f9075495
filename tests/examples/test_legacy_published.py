"""The four published MNIST-PBT key sets (examples/mnist/legacy/): fc.json and conv.json train one
model, fc_PBT.json and conv_PBT.json run PBT; `--mode test` evaluates what was trained."""

from __future__ import annotations

import importlib.util
import json
import logging
import os
import subprocess
import sys
from typing import Any

import pytest

torch = pytest.importorskip("torch")

from conftest import example_path, run_config  # noqa: E402

import pbtune  # noqa: E402
from pbtune.engine.devices import worker_shares  # noqa: E402
from pbtune.evaluate import evaluate_run  # noqa: E402
from pbtune.legacy import is_legacy_config, is_legacy_vanilla_config  # noqa: E402
from pbtune.single import evaluate_single, load_single_config, train_single  # noqa: E402

TINY = {"train_size": 600, "val_size": 200, "test_size": 500, "batches_per_step": 3, "batch_size": 32}


def _published(name: str) -> dict[str, Any]:
    with open(example_path("mnist", "legacy", name), encoding="utf-8") as handle:
        return json.load(handle)


def _tiny_copy(tmp_path: Any, name: str, **train: Any) -> str:
    """The published file with a tiny budget, its trainable by absolute path, stores in tmp_path."""
    data = _published(name)
    data["trainable"] = example_path("mnist", "mnist_pbt.py") + ":MNISTTrainable"
    data["trainable_args"].update(TINY)
    data["train"].update(train)
    data["checkpoints"] = str(tmp_path / "ck")
    if "PBT_lr" in data["train"]:
        data["storage"] = f"sqlite:///{tmp_path}/pbtune.db"
    path = tmp_path / name
    path.write_text(json.dumps(data))
    return str(path)


def _mnist_module() -> Any:
    spec = importlib.util.spec_from_file_location("mnist_pbt_legacy", example_path("mnist", "mnist_pbt.py"))
    module = importlib.util.module_from_spec(spec)  # type: ignore[arg-type]
    sys.modules[spec.name] = module  # type: ignore[union-attr]
    spec.loader.exec_module(module)  # type: ignore[union-attr]
    return module


@pytest.mark.parametrize("name, model, extra", [("fc.json", "fc", {"n_hiddens": "256,256"}),
                                                ("conv.json", "conv", {"n_filters": "16,32"})])
def test_vanilla_files_convert_to_one_model_with_the_files_values(name, model, extra):
    data = _published(name)
    assert is_legacy_vanilla_config(data) and not is_legacy_config(data)
    config = load_single_config(example_path("mnist", "legacy", name))
    train = data["train"]
    assert config.hparams == {"lr": 0.01, "keep_prob": 0.8, "weight_decay": train["weight_decay"]}
    assert config.budget == train["num_epochs"] and config.name == name[:-5] and config.seed == 117
    assert config.devices == [int(train["gpus"])] and config.gpus_per_worker == 1  # train.gpus, not test.gpus
    assert {"model": model, "optimizer": "adam", "batch_size": 200, **extra}.items() <= config.trainable_args.items()
    assert config.trainable.endswith(os.path.join("examples", "mnist", "mnist_pbt.py") + ":MNISTTrainable")


@pytest.mark.parametrize("name", ["fc_PBT.json", "conv_PBT.json"])
def test_pbt_files_convert_with_the_published_selection_and_gpus(name):
    config = pbtune.load_config(example_path("mnist", "legacy", name))
    assert set(config.space) == {"lr", "keep_prob"}
    assert config.exploit.rounding == "ceil" and config.exploit.quantile == 0.2  # ceil(n / 5), as published
    assert config.exploit.tail(config.population) == 2  # 6 members: floor would take 1
    assert config.explore.factors == (0.8, 1.2) and config.mode == "max"
    # the file's fixed lr/keep_prob are the baseline (what a vanilla run of this config trains with)
    assert config.trainable_args["baseline"] == {"lr": 0.01, "keep_prob": 0.8}
    assert config.trainable_args["optimizer"] == "adam" and "lr" not in config.trainable_args
    assert config.devices == [0, 1] and config.gpus_per_worker is None
    assert worker_shares(config.workers, config.gpus_per_worker, config.devices) == ["0", "1"]
    assert worker_shares(10, None, config.devices) == ["0"] * 5 + ["1"] * 5  # the published 10 workers on 2 GPUs


def test_vanilla_mode_of_the_example_uses_the_files_lr_and_keep_prob():
    mnist = _mnist_module()
    pbt = pbtune.load_config(example_path("mnist", "legacy", "fc_PBT.json"))
    hparams = mnist._parse_hparams(None, pbt)
    assert hparams == {"lr": 0.01, "keep_prob": 0.8}  # not the example's default lr 0.05
    single = load_single_config(example_path("mnist", "legacy", "fc.json"))
    trainable = mnist.MNISTTrainable(**{**single.trainable_args, **TINY})
    trainable.setup(single.hparams)
    assert isinstance(trainable.optimizer, torch.optim.Adam)
    assert trainable.optimizer.param_groups[0]["lr"] == 0.01
    assert trainable.optimizer.param_groups[0]["weight_decay"] == 0.0001
    assert {round(m.p, 6) for m in trainable.model.modules() if isinstance(m, torch.nn.Dropout)} == {0.2}


def test_a_missing_data_dir_falls_back_to_the_bundled_mnist_with_a_warning(tmp_path, caplog):
    mnist = _mnist_module()
    with caplog.at_level(logging.WARNING, logger="mnist_pbt"):
        name, train, _, _ = mnist.load_data("auto", str(tmp_path / "not-there"))
    assert "does not exist" in caplog.text and "not-there" in caplog.text
    assert name in ("mnist", "digits") and len(train[0]) > 0
    with pytest.raises(pbtune.InvalidConfigError) as info:  # a folder that exists but holds no MNIST
        mnist.load_data("auto", str(tmp_path))
    assert info.value.field == "data_dir" and "idx files" in str(info.value)


@pytest.mark.parametrize("name", ["fc.json", "conv.json"])
def test_vanilla_files_train_and_test_in_process(tmp_path, name):
    config = load_single_config(_tiny_copy(tmp_path, name, num_epochs=2))
    lines: list[str] = []
    result = train_single(config, echo=lines.append)
    assert len(result.scores) == 2 and len(lines) == 2 and 0.0 <= result.score <= 1.0
    assert os.path.exists(result.checkpoint_path) and result.hparams["lr"] == 0.01
    saved, metrics = evaluate_single(config)
    assert saved.scores == result.scores and 0.0 <= metrics["test_accuracy"] <= 1.0


@pytest.mark.parametrize("name", ["fc_PBT.json", "conv_PBT.json"])
def test_pbt_files_train_and_test_in_process(tmp_path, name):
    path = _tiny_copy(tmp_path, name, num_worker_tot=3, num_workers_paral=1, num_epochs_tot=2)
    out = run_config(pbtune.load_config(path))
    assert set(out.final) == {0, 1, 2}
    best = evaluate_run(out.config, "best")
    assert len(best) == 1 and best[0].best and 0.0 <= best[0].metrics["test_accuracy"] <= 1.0
    assert best[0].score == max(out.final.values())
    every = evaluate_run(out.config, "all")
    assert sorted(r.member_id for r in every) == [0, 1, 2] and sum(r.best for r in every) == 1
    one = evaluate_run(out.config, "2")
    assert [r.member_id for r in one] == [2]
    with pytest.raises(pbtune.InvalidConfigError, match="`member` of `--mode test` must be 'best', 'all'"):
        evaluate_run(out.config, "7")


def _cli(tmp_path: Any, *args: str) -> str:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run([sys.executable, "-m", "pbtune.cli", "run", *args], capture_output=True, text=True,
                          timeout=300, env=env, cwd=tmp_path)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return proc.stdout + proc.stderr


def test_cli_vanilla_train_then_test(tmp_path):
    path = _tiny_copy(tmp_path, "fc.json", num_epochs=1)
    trained = _cli(tmp_path, path)
    assert "done model fc" in trained and "lr=0.01, keep_prob=0.8" in trained
    assert "does not exist: using the bundled MNIST" in trained  # the published data_dir
    tested = _cli(tmp_path, path, "--mode", "test")
    assert "model fc: score" in tested and "test: test_accuracy" in tested


def test_cli_test_before_training_and_bad_mode_say_what_to_do(tmp_path):
    path = _tiny_copy(tmp_path, "fc_PBT.json")
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    for args, expected in [((path, "-m", "test"), "is not in"), ((path, "-m", "eval"), "`--mode` of `pbtune run`"),
                           ((_tiny_copy(tmp_path, "conv.json"), "-m", "test"), "train it first")]:
        proc = subprocess.run([sys.executable, "-m", "pbtune.cli", "run", *args], capture_output=True, text=True,
                              timeout=120, env=env, cwd=tmp_path)
        said = " ".join(proc.stdout.split())  # the console wraps long lines (a long tmp path)
        assert proc.returncode == 2 and expected in said, proc.stdout + proc.stderr


@pytest.mark.slow
def test_cli_pbt_train_then_test_every_member(tmp_path):
    path = _tiny_copy(tmp_path, "conv_PBT.json", num_worker_tot=3, num_workers_paral=2, num_epochs_tot=2)
    trained = _cli(tmp_path, path, "-q")
    assert "done run conv_PBT" in trained
    tested = _cli(tmp_path, path, "-m", "test", "--member", "all")
    assert "test_accuracy" in tested and tested.count(" * ") + tested.count("* │") >= 1
