"""The MNIST example: small configs end to end, vanilla/test/plot modes."""

from __future__ import annotations

import importlib.util
import os
import sys

import pytest

torch = pytest.importorskip("torch")

from conftest import example_path  # noqa: E402


def _module():
    spec = importlib.util.spec_from_file_location("mnist_pbt_example", example_path("mnist", "mnist_pbt.py"))
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


def test_fc_small_improves_over_initial_population(run_small):
    out = run_small("mnist", "mnist_fc_small.yaml")
    assert out.better(out.best_final, out.best_initial)
    assert sum(out.final.values()) / len(out.final) > sum(out.initial.values()) / len(out.initial)
    assert out.events("exploit"), "PBT never exploited in the small config"


def test_conv_small_improves_over_initial_population(run_small):
    out = run_small("mnist", "mnist_conv_small.yaml", budget=4, population=3)
    assert out.better(out.best_final, out.best_initial)


def test_vanilla_test_and_plot_modes(tmp_path, run_small):
    mnist = _module()
    out = run_small("mnist", "mnist_fc_small.yaml", budget=4)
    config = out.config
    score, path = mnist.train_vanilla(config, {"lr": 0.05, "dropout": 0.2}, out=str(tmp_path / "v.pt"))
    assert os.path.exists(path) and 0.5 < score <= 1.0
    rows = mnist.test_members(config, "all")
    assert sorted(r[0] for r in rows) == sorted(out.final)
    for _, _, val, test_acc in rows:  # the test split agrees with the validation score it was chosen by
        assert 0.0 <= test_acc <= 1.0 and abs(test_acc - val) < 0.1
    best = mnist.test_members(config, "best")
    assert len(best) == 1 and best[0][3] > 0.7
    paths = mnist.plot_run(config, str(tmp_path / "plots"))
    assert [os.path.getsize(p) > 5000 for p in paths] == [True, True]


def test_data_sources(tmp_path):
    mnist = _module()
    name, train, val, test = mnist.load_data("digits")
    assert name == "digits" and train[0].shape[1] == 64 and float(train[0].max()) <= 1.0
    assert len(train[0]) + len(val[0]) + len(test[0]) == 1797
    # A tiny folder of standard idx files is read like the real thing.
    import gzip

    import numpy as np

    def write(stem, array):
        header = bytes([0, 0, 8, array.ndim]) + b"".join(int(d).to_bytes(4, "big") for d in array.shape)
        with gzip.open(tmp_path / f"{stem}.gz", "wb") as handle:
            handle.write(header + array.astype(np.uint8).tobytes())

    rng = np.random.default_rng(0)
    write("train-images-idx3-ubyte", rng.integers(0, 256, (600, 28, 28)))
    write("train-labels-idx1-ubyte", rng.integers(0, 10, 600))
    write("t10k-images-idx3-ubyte", rng.integers(0, 256, (7, 28, 28)))
    write("t10k-labels-idx1-ubyte", np.arange(7))
    name, train, val, test = mnist.load_data("auto", str(tmp_path))
    assert name == "mnist-idx" and train[0].shape == (500, 784) and len(val[0]) == 100
    assert test[1].tolist() == list(range(7))
    with pytest.raises(pbtune_error()):
        mnist.load_data("nope")


def pbtune_error():
    import pbtune

    return pbtune.InvalidConfigError


def test_package_pickle_loader_refuses_code(tmp_path):
    import pickle

    mnist = _module()
    with pytest.raises(pickle.UnpicklingError, match="refusing"):
        mnist._ArraysOnly(open(_pickled_os_system(tmp_path), "rb")).load()


def _pickled_os_system(tmp_path):
    import pickle

    class Evil:
        def __reduce__(self):
            return (os.system, ("true",))

    path = tmp_path / "evil.pkl"
    path.write_bytes(pickle.dumps(Evil()))
    return str(path)
