"""PBT of a Lightning MLP on scikit-learn's bundled digits, two ways.

* default: one process per member, each running its own ``Trainer.fit`` with
  :class:`pbtune.integrations.lightning.PBTCallback` (what a SLURM array or a PBTClient job does);
* ``--engine``: :func:`pbtune.run` drives :class:`~pbtune.integrations.lightning.LightningTrainable`
  on local worker processes (``pbtune worker`` runs the same trainable from a config).

Tunes Adam's lr and the dropout rate; the score is the validation loss (mode ``min``)::

    python examples/integrations/lightning_digits.py --population 4 --epochs 8
    python examples/integrations/lightning_digits.py --engine
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import os
import tempfile
from collections.abc import Mapping
from typing import Any

import lightning.pytorch as L
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

import pbtune
from pbtune.integrations.lightning import LightningTrainable, PBTCallback


def loaders(seed: int = 0) -> tuple[DataLoader, DataLoader]:
    from sklearn.datasets import load_digits

    data = load_digits()
    x = torch.tensor(data.data, dtype=torch.float32) / 16.0
    y = torch.tensor(data.target, dtype=torch.long)
    order = torch.randperm(len(x), generator=torch.Generator().manual_seed(seed))
    train, val = order[:1400], order[1400:]
    return (DataLoader(TensorDataset(x[train], y[train]), batch_size=64, shuffle=True,
                       generator=torch.Generator().manual_seed(seed)),
            DataLoader(TensorDataset(x[val], y[val]), batch_size=256))


class DigitsModule(L.LightningModule):
    def __init__(self, lr: float = 1e-3, dropout: float = 0.1) -> None:
        super().__init__()
        self.lr = lr
        self.net = nn.Sequential(nn.Linear(64, 128), nn.ReLU(), nn.Dropout(dropout), nn.Linear(128, 10))

    def training_step(self, batch: Any, _: int) -> torch.Tensor:
        x, y = batch
        return nn.functional.cross_entropy(self.net(x), y)

    def validation_step(self, batch: Any, _: int) -> None:
        x, y = batch
        logits = self.net(x)
        self.log("val_loss", nn.functional.cross_entropy(logits, y))
        self.log("val_acc", (logits.argmax(1) == y).float().mean())

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.Adam(self.parameters(), lr=self.lr)


DROPOUT = {"dropout": "net.2.p"}  # the hyperparameter -> the module attribute it sets


class DigitsTrainable(LightningTrainable):
    """For ``pbtune.run`` / ``pbtune worker``: one step = one epoch of a fresh Trainer."""

    attributes = DROPOUT

    def build(self, hparams: Mapping[str, Any]) -> DigitsModule:
        return DigitsModule(lr=hparams["lr"], dropout=hparams["dropout"])

    def data(self) -> Mapping[str, Any]:
        train, val = loaders()
        return {"train_dataloaders": train, "val_dataloaders": val}

    def trainer_kwargs(self) -> dict[str, Any]:
        return {"accelerator": "auto", "devices": 1}  # a GPU when the worker sees one; one process, no DDP


def make_config(root: str, population: int, epochs: int, **overrides: Any) -> pbtune.RunConfig:
    settings: dict[str, Any] = dict(
        name="lightning-digits", population=population, budget=epochs, mode="min", metric="val_loss",
        space={"lr": pbtune.Float(1e-4, 1e-1, log=True), "dropout": pbtune.Float(0.0, 0.5)},
        ready={"interval": 2}, exploit={"name": "truncation", "quantile": 0.25}, seed=0,
        storage=f"sqlite:///{root}/pbtune.db", checkpoints=os.path.join(root, "checkpoints"),
    )
    settings.update(overrides)
    return pbtune.RunConfig(**settings)


def train_member(config_dict: Mapping[str, Any], member_id: int, epochs: int) -> None:
    """One member's own fit (another machine would use PBTClient(server, ...) as the member)."""
    torch.set_num_threads(1)
    member = pbtune.Population(pbtune.RunConfig.from_dict(config_dict)).member(member_id)
    trainer = L.Trainer(max_epochs=epochs, accelerator="auto", devices=1, logger=False, enable_checkpointing=False,
                        enable_progress_bar=False, enable_model_summary=False,
                        callbacks=[PBTCallback(member, monitor="val_loss", attributes=DROPOUT)])
    train, val = loaders()
    trainer.fit(DigitsModule(**member.hparams), train, val)


def main(argv: list[str] | None = None) -> pbtune.RunResult:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--population", type=int, default=4)
    parser.add_argument("--epochs", type=int, default=8)
    parser.add_argument("--engine", action="store_true", help="pbtune.run with LightningTrainable")
    parser.add_argument("--dir", default=None, help="where the store and checkpoints go (default: a temp dir)")
    args = parser.parse_args(argv)
    root = args.dir or tempfile.mkdtemp(prefix="pbtune-lightning-")
    if args.engine:
        config = make_config(root, args.population, args.epochs,
                             trainable=f"{os.path.abspath(__file__)}:DigitsTrainable")
        result = pbtune.run(config=config, progress="quiet")
    else:
        config = make_config(root, args.population, args.epochs)
        population = pbtune.Population(config)
        context = mp.get_context("spawn")
        procs = [context.Process(target=train_member, args=(config.to_dict(), i, args.epochs))
                 for i in range(args.population)]
        for proc in procs:
            proc.start()
        for proc in procs:
            proc.join()
        from pbtune.engine.local import summarize

        result = summarize(config, population.store, population.checkpoints)
    print(f"best member {result.best.member_id}: val_loss {result.best_score:.4f} with {result.best.hparams}")
    for entry in result.schedule:
        print(f"  from step {entry.step}: {entry.hparams} ({entry.kind} as member {entry.member_id})")
    return result


if __name__ == "__main__":
    main()
