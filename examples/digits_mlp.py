"""PBT on a PyTorch MLP (64-128-10) over scikit-learn's bundled digits data set.

Tunes lr, momentum and weight decay of SGD. Run it with the CLI:

    pbtune run examples/digits_mlp.yaml

or as a script (same thing, from Python): ``python examples/digits_mlp.py``.
"""

from __future__ import annotations

import io
import os
from collections.abc import Mapping
from functools import lru_cache
from typing import Any

import torch
from sklearn.datasets import load_digits  # at the top: the engine's zygote imports it once for every worker
from torch import nn

import pbtune


@lru_cache(maxsize=1)
def digits_split(seed: int = 0) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Train/validation tensors (80/20), features scaled to [0, 1]; deterministic."""
    data = load_digits()
    x = torch.tensor(data.data, dtype=torch.float32) / 16.0
    y = torch.tensor(data.target, dtype=torch.long)
    order = torch.randperm(len(x), generator=torch.Generator().manual_seed(seed))
    cut = int(0.8 * len(x))
    train, val = order[:cut], order[cut:]
    return x[train], y[train], x[val], y[val]


def make_mlp(hidden: int = 128) -> nn.Module:
    return nn.Sequential(nn.Linear(64, hidden), nn.ReLU(), nn.Linear(hidden, 10))


def pick_device(name: Any = "auto") -> torch.device:
    """``auto``: CUDA when torch sees a GPU (a worker sees its ``gpus_per_worker`` share), else CPU."""
    if name in (None, "auto"):
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(str(name))


class DigitsMLP(pbtune.Trainable):
    """One PBT step = ``batches_per_step`` SGD minibatches of ``batch_size``; score = validation accuracy.

    ``device``: ``auto`` (CUDA when present), ``cpu`` or ``cuda``.
    """

    def setup(self, hparams: Mapping[str, Any]) -> None:
        torch.set_num_threads(1)
        self.device = pick_device(self.args.get("device", "auto"))
        self.batch_size = int(self.args.get("batch_size", 64))
        self.batches_per_step = int(self.args.get("batches_per_step", 10))
        self.x, self.y, self.x_val, self.y_val = (t.to(self.device) for t in digits_split())
        # The runner gives each member its own seed (self.seed): own initial weights, own data order.
        seed = self.seed if self.seed is not None else int(self.args.get("seed", 0))
        with torch.random.fork_rng():
            torch.manual_seed(seed)
            self.model = make_mlp(int(self.args.get("hidden", 128))).to(self.device)
        self.optimizer = torch.optim.SGD(self.model.parameters(), lr=0.1)
        self.set_hparams(hparams)
        self.generator = torch.Generator().manual_seed(seed)
        self.loss_fn = nn.CrossEntropyLoss()

    def set_hparams(self, hparams: Mapping[str, Any]) -> None:
        self.hparams = dict(hparams)
        for group in self.optimizer.param_groups:
            group["lr"] = float(hparams["lr"])
            group["momentum"] = float(hparams.get("momentum", 0.0))
            group["weight_decay"] = float(hparams.get("weight_decay", 0.0))

    def step(self) -> Mapping[str, float]:
        self.model.train()
        for _ in range(self.batches_per_step):
            index = torch.randint(len(self.x), (self.batch_size,), generator=self.generator).to(self.device)
            self.optimizer.zero_grad(set_to_none=True)
            loss = self.loss_fn(self.model(self.x[index]), self.y[index])
            loss.backward()
            self.optimizer.step()
        return {"score": self.accuracy(), "loss": float(loss.detach())}

    @torch.no_grad()
    def accuracy(self) -> float:
        self.model.eval()
        return float((self.model(self.x_val).argmax(dim=1) == self.y_val).float().mean())

    def save(self, path: str) -> None:
        buffer = io.BytesIO()
        state = {"model": self.model.state_dict(), "optimizer": self.optimizer.state_dict(),
                 "rng": self.generator.get_state(), "member": self.member_id}
        torch.save(state, buffer)
        with open(path, "wb") as handle:
            handle.write(buffer.getvalue())

    def load(self, path: str) -> None:
        # never unpickle arbitrary objects; a checkpoint saved on a GPU loads on our device
        state = torch.load(path, weights_only=True, map_location=self.device)
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])  # this brings back the saver's lr...
        self.set_hparams(self.hparams)  # ...so re-apply ours (after an exploit: the explored ones)
        if state.get("member") == self.member_id:  # our own checkpoint (a resume): the same data order goes on
            self.generator.set_state(state["rng"].cpu())  # the generator is a CPU one
        elif self.seed is not None:  # a donor's (an exploit): our own new seed, so we draw other batches
            self.generator.manual_seed(self.seed)


if __name__ == "__main__":
    config = pbtune.load_config(os.path.join(os.path.dirname(__file__), "digits_mlp.yaml"))
    result = pbtune.run(config=config)
    print(f"best member {result.best.member_id}: validation accuracy {result.best.score:.4f}")
    print(f"hparams {dict(result.best.hparams)}; checkpoint {result.checkpoint_path}")
