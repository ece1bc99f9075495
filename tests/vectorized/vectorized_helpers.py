"""Shared pieces of the vectorized-engine tests: tiny models, data, and a plain torch.optim reference.

Test modules import it after ``pytest.importorskip("torch")``.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Sequence

import pytest
import torch
from torch import nn

import pbtune.vectorized as pv
from pbtune.vectorized._functional import resolve_loss

CUDA = pytest.mark.skipif(
    not torch.cuda.is_available(),
    reason="CUDA test: torch.cuda.is_available() is False on this machine (no GPU)",
)


def mlp() -> nn.Module:
    return nn.Sequential(nn.Linear(6, 16), nn.Tanh(), nn.Linear(16, 3))


def bn_mlp() -> nn.Module:
    return nn.Sequential(nn.Linear(6, 16), nn.BatchNorm1d(16), nn.ReLU(), nn.Linear(16, 3))


def dropout_mlp() -> nn.Module:
    return nn.Sequential(nn.Linear(6, 16), nn.ReLU(), nn.Dropout(0.3), nn.Linear(16, 3))


def blobs(n: int = 96, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Three Gaussian blobs in 6-D: learnable in a few steps, deterministic."""
    g = torch.Generator().manual_seed(seed)
    y = torch.randint(0, 3, (n,), generator=g)
    centers = torch.randn(3, 6, generator=g) * 2
    x = centers[y] + torch.randn(n, 6, generator=g)
    return x, y


def build_population(
    models: Sequence[nn.Module],
    optimizer: object,
    hparams: Sequence[dict],
    *,
    loss: str = "cross_entropy",
    tensor_hparams: Sequence[str] = (),
    device: str = "cpu",
) -> pv.StackedPopulation:
    pop = pv.StackedPopulation(
        [copy.deepcopy(m) for m in models], optimizer, device=device, tensor_hparams=tensor_hparams
    )
    for i, hp in enumerate(hparams):
        pop.set_hparams(i, hp)
    pop.set_loss(*resolve_loss(loss, label_smoothing="label_smoothing" in tensor_hparams))
    return pop


def batches(steps: int, members: int, n: int, batch: int, seed: int = 1) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return [torch.randint(0, n, (members, batch), generator=g) for _ in range(steps)]


def train_alone(
    model: nn.Module,
    make_optimizer: Callable[[list[nn.Parameter]], torch.optim.Optimizer],
    x: torch.Tensor,
    y: torch.Tensor,
    indices: Sequence[torch.Tensor],
    loss_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
) -> list[dict[str, torch.Tensor]]:
    """Plain training loop; returns the state_dict after every step."""
    opt = make_optimizer(list(model.parameters()))
    model.train()
    states = []
    for index in indices:
        opt.zero_grad(set_to_none=True)
        loss_fn(model(x[index]), y[index]).backward()
        opt.step()
        states.append({k: v.detach().clone() for k, v in model.state_dict().items()})
    return states
