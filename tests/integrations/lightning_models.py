"""A tiny Lightning regression model for the integration tests (also run as a script: resume check)."""

from __future__ import annotations

import json
import sys
from collections.abc import Mapping
from typing import Any

import lightning.pytorch as L
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from pbtune.integrations.lightning import LightningTrainable, PBTCallback


def loaders(seed: int = 0) -> tuple[DataLoader, DataLoader]:
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(64, 4, generator=g)
    y = x @ torch.tensor([[1.0], [-2.0], [0.5], [3.0]]) + 0.1 * torch.randn(64, 1, generator=g)
    return (DataLoader(TensorDataset(x[:48], y[:48]), batch_size=16),
            DataLoader(TensorDataset(x[48:], y[48:]), batch_size=16))


class TinyModule(L.LightningModule):
    def __init__(self, lr: float = 0.01, dropout: float = 0.0, scheduler: bool = False, seed: int = 0) -> None:
        super().__init__()
        torch.manual_seed(seed)
        self.lr = lr
        self.net = nn.Linear(4, 8)
        self.drop = nn.Dropout(dropout)
        self.out = nn.Linear(8, 1)
        self.use_scheduler = scheduler

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.out(self.drop(torch.relu(self.net(x))))

    def training_step(self, batch: Any, _: int) -> torch.Tensor:
        x, y = batch
        loss = nn.functional.mse_loss(self(x), y)
        self.log("train_loss", loss, on_epoch=True, on_step=False)
        return loss

    def validation_step(self, batch: Any, _: int) -> None:
        x, y = batch
        self.log("val_loss", nn.functional.mse_loss(self(x), y))

    def configure_optimizers(self) -> Any:
        optimizer = torch.optim.Adam(self.parameters(), lr=self.lr)
        if not self.use_scheduler:
            return optimizer
        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda epoch: 0.5 ** epoch)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "epoch"}}


def quiet_trainer(**kwargs: Any) -> L.Trainer:
    settings: dict[str, Any] = dict(logger=False, enable_checkpointing=False, enable_progress_bar=False,
                                    enable_model_summary=False, num_sanity_val_steps=0, max_epochs=1,
                                    accelerator="cpu")
    settings.update(kwargs)
    return L.Trainer(**settings)


class TinyTrainable(LightningTrainable):
    attributes = {"dropout": "drop.p"}

    def build(self, hparams: Mapping[str, Any]) -> L.LightningModule:
        return TinyModule(lr=hparams["lr"], dropout=hparams["dropout"], seed=int(self.args.get("seed", 0)))

    def data(self) -> Mapping[str, Any]:
        train, val = loaders()
        return {"train_dataloaders": train, "val_dataloaders": val}

    def trainer_kwargs(self) -> dict[str, Any]:
        return {"accelerator": "cpu"}


class Probe(L.Callback):
    """Records the state PBTCallback left at train start (it runs before this callback)."""

    def __init__(self) -> None:
        self.seen: dict[str, Any] = {}

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        optimizer = trainer.optimizers[0]
        self.seen = {
            "weight": pl_module.net.weight.detach().clone(),
            "lr": optimizer.param_groups[0]["lr"],
            "dropout": pl_module.drop.p,
            "exp_avg": optimizer.state[pl_module.net.weight]["exp_avg"].clone()
            if pl_module.net.weight in optimizer.state else None,
        }


def resume(config_json: str, member_id: int, out: str) -> None:
    """Rejoin ``member_id`` in a fresh process and save what training started from."""
    from pbtune import Population, RunConfig

    member = Population(RunConfig.from_dict(json.loads(config_json))).member(member_id)
    probe = Probe()
    module = TinyModule(lr=0.5, dropout=0.0, seed=123)  # deliberately not the member's state
    trainer = quiet_trainer(callbacks=[PBTCallback(member, attributes={"dropout": "drop.p"}, finish=False), probe])
    train, val = loaders()
    trainer.fit(module, train, val)
    torch.save({**probe.seen, "step": member.step}, out)


if __name__ == "__main__":
    resume(sys.argv[1], int(sys.argv[2]), sys.argv[3])
