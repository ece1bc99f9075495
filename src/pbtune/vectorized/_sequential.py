"""A batched forward without ``vmap`` for plain ``nn.Sequential`` MLPs (Linear, activations, dropout).

``vmap`` + ``functional_call`` cost about 0.4 ms per call on a CPU whatever the model size
(pytree handling, parameter swapping, batching rules), which is 15-20 % of a step of the
digits MLP at population 32. For a stack of ``nn.Linear`` layers and element-wise modules the
batched computation is simple to write directly: a member's ``x @ W.T + b`` over a leading
member dimension is one ``baddbmm``. Any other model (or input that is not ``[c, B, features]``)
goes through the generic ``vmap`` path, which computes the same values (a test compares them).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import nn

from pbtune.vectorized._functional import LossFn, MemberDropout, _cross_entropy, mean_cross_entropy

__all__ = ["sequential_layers", "make_sequential_loss_fn", "make_sequential_forward_fn"]

# Modules without tensors that act on each element alone: a member dimension in front changes nothing.
_ELEMENTWISE = (
    nn.ReLU,
    nn.ReLU6,
    nn.LeakyReLU,
    nn.ELU,
    nn.SELU,
    nn.CELU,
    nn.GELU,
    nn.SiLU,
    nn.Mish,
    nn.Tanh,
    nn.Sigmoid,
    nn.Softplus,
    nn.Hardtanh,
    nn.Hardswish,
    nn.Hardsigmoid,
    nn.Identity,
)

Layer = tuple[str, str, nn.Module]  # (kind, module name in the template, module)


def sequential_layers(template: nn.Module) -> list[Layer] | None:
    """The layers of ``template`` if the fast path can run it, else ``None``."""
    if type(template) is not nn.Sequential or len(template) == 0:
        return None
    if len(list(template.named_children())) != len(template):  # one module used twice (tied)
        return None
    layers: list[Layer] = []
    for name, module in template.named_children():
        if type(module) is nn.Linear:
            layers.append(("linear", name, module))
        elif type(module) is MemberDropout:
            layers.append(("member_dropout", name, module))
        elif type(module) is nn.Dropout:
            layers.append(("dropout", name, module))
        elif type(module) in _ELEMENTWISE and not list(module.parameters()) and not list(module.buffers()):
            layers.append(("elementwise", name, module))
        else:
            return None
    if not any(kind == "linear" for kind, _, _ in layers):
        return None
    return layers


def _run(layers: list[Layer], params: dict[str, torch.Tensor], constants: dict[str, torch.Tensor], x: Any) -> Any:
    """Outputs ``[c, B, out]`` for ``x`` of ``[c, B, in]`` (per member) or ``[B, in]`` (shared)."""
    for kind, name, module in layers:
        if kind == "linear":
            weight = params[f"{name}.weight"] if f"{name}.weight" in params else constants[f"{name}.weight"]
            bias = params.get(f"{name}.bias", constants.get(f"{name}.bias"))
            if x.dim() == 2:  # shared input: the same rows for every member (5x faster than matmul's broadcast)
                x = x.expand(weight.shape[0], *x.shape)
            if bias is None:
                x = torch.bmm(x, weight.transpose(1, 2))
            else:
                x = torch.baddbmm(bias.unsqueeze(1), x, weight.transpose(1, 2))
        elif kind == "member_dropout":
            if module.training:
                keep = (1.0 - constants[f"{name}.rate"]).to(x.dtype).view(-1, *([1] * (x.dim() - 1)))
                x = x * (torch.rand_like(x) < keep).to(x.dtype) / keep
        elif kind == "dropout":
            assert isinstance(module, nn.Dropout)
            x = torch.nn.functional.dropout(x, module.p, module.training, module.inplace)
        else:
            x = module(x)
    return x


def make_sequential_loss_fn(
    layers: list[Layer], loss: LossFn, loss_takes_hparams: bool, fallback: Callable[..., Any]
) -> Callable[..., Any]:
    """Same contract as :func:`~pbtune.vectorized._functional.make_loss_fn`; ``fallback`` takes other inputs."""
    def one_member(outputs: torch.Tensor, targets: Any, hparams: dict[str, Any]) -> torch.Tensor:
        return loss(outputs, targets, hparams=hparams) if loss_takes_hparams else loss(outputs, targets)

    member_loss: Callable[..., torch.Tensor] = torch.vmap(one_member, randomness="different")

    def losses(
        params: dict[str, torch.Tensor], constants: dict[str, torch.Tensor], hparams: dict[str, Any], x: Any, y: Any
    ) -> torch.Tensor:
        if not isinstance(x, torch.Tensor) or x.dim() != 3:
            return fallback(params, constants, hparams, x, y)  # type: ignore[no-any-return]
        outputs = _run(layers, params, constants, x)
        # The built-in loss has a batched form; any other loss runs per member under vmap.
        if loss is _cross_entropy and outputs.dim() == 3 and y.dim() == 2 and not y.is_floating_point():
            return mean_cross_entropy(outputs, y)  # every member's at once
        return member_loss(outputs, y, hparams)

    return losses


def make_sequential_forward_fn(layers: list[Layer], fallback: Callable[..., Any]) -> Callable[..., Any]:
    """Same contract as :func:`~pbtune.vectorized._functional.make_forward_fn` (``x`` shared by the members)."""

    def forward(params: dict[str, torch.Tensor], constants: dict[str, torch.Tensor], x: Any) -> Any:
        if not isinstance(x, torch.Tensor) or x.dim() != 2:
            return fallback(params, constants, x)
        return _run(layers, params, constants, x)

    return forward
