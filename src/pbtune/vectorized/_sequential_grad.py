"""Gradients of the ``nn.Sequential`` fast path written out by hand: no autograd graph.

A step of a small MLP is a dozen batched kernels; recording and replaying them through
autograd costs about a quarter of the step on a CPU (1.96 ms -> 1.51 ms at population 32 on the
digits MLP). Activations are kept feature-major (``[c, features, B]``): with the few outputs of a
classifier (10 classes), ``[c, B, 10]`` matmuls and a softmax over a 10-long contiguous
dimension are 3x and 15x slower on a CPU than their feature-major forms.

Only what has a closed-form backward is handled here: ``nn.Linear``, the activations in
:data:`_ACTIVATIONS`, dropout, and the built-in losses (cross-entropy with class indices, with
or without per-member label smoothing; MSE). Anything else returns ``None`` from
:func:`make_sequential_grad_fn` and the step goes through autograd; tests compare the two.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from pbtune.vectorized._functional import LossFn, MemberDropout, _cross_entropy, _cross_entropy_smoothed, _mse
from pbtune.vectorized._sequential import Layer

__all__ = ["make_sequential_grad_fn", "GradFn"]

aten = torch.ops.aten

# type -> (forward, backward(module, grad, input, output)); exact types only (subclasses may differ).
# Backwards write into ``grad`` (``grad_input=``): it is always a temporary of this step, and a fresh
# 1 MiB result cost twice the time (threshold_backward 108 vs 47 us at population 32).
_Activation = tuple[Callable[[Any, torch.Tensor], torch.Tensor], Callable[..., torch.Tensor]]
_ACTIVATIONS: dict[type, _Activation] = {
    nn.Identity: (lambda m, x: x, lambda m, g, x, y: g),
    nn.ReLU: (
        lambda m, x: torch.relu(x),
        lambda m, g, x, y: aten.threshold_backward.grad_input(g, y, 0.0, grad_input=g),
    ),
    nn.Tanh: (lambda m, x: torch.tanh(x), lambda m, g, x, y: aten.tanh_backward.grad_input(g, y, grad_input=g)),
    nn.Sigmoid: (
        lambda m, x: torch.sigmoid(x),
        lambda m, g, x, y: aten.sigmoid_backward.grad_input(g, y, grad_input=g),
    ),
    nn.LeakyReLU: (
        lambda m, x: F.leaky_relu(x, m.negative_slope),
        lambda m, g, x, y: aten.leaky_relu_backward.grad_input(g, x, m.negative_slope, False, grad_input=g),
    ),
    nn.GELU: (
        lambda m, x: F.gelu(x, approximate=m.approximate),
        lambda m, g, x, y: aten.gelu_backward.grad_input(g, x, approximate=m.approximate, grad_input=g),
    ),
    nn.SiLU: (lambda m, x: F.silu(x), lambda m, g, x, y: aten.silu_backward.grad_input(g, x, grad_input=g)),
    nn.Hardtanh: (
        lambda m, x: F.hardtanh(x, m.min_val, m.max_val),
        lambda m, g, x, y: aten.hardtanh_backward.grad_input(g, x, m.min_val, m.max_val, grad_input=g),
    ),
    nn.ReLU6: (
        lambda m, x: F.relu6(x),
        lambda m, g, x, y: aten.hardtanh_backward.grad_input(g, x, 0.0, 6.0, grad_input=g),
    ),
}
# Activations whose backward needs only their output may overwrite a linear layer's fresh output
# (a new 1 MiB activation costs page faults: relu 60 us, relu_ 7 us at population 32).
_IN_PLACE: dict[type, Callable[[torch.Tensor], torch.Tensor]] = {
    nn.ReLU: torch.relu_,
    nn.Tanh: torch.tanh_,
    nn.Sigmoid: torch.sigmoid_,
}
_LOSSES = (_cross_entropy, _cross_entropy_smoothed, _mse)
# relu(a + b) in place, one pass (an internal op of torch's JIT fusers; absent: baddbmm + relu_)
_ADD_RELU: Callable[..., Any] | None = getattr(getattr(aten, "_add_relu_", None), "Tensor", None)

# (params, constants, hparams, x[c, B, in], y, grads, decay) -> losses[c], or None for inputs it does not take
GradFn = Callable[..., "torch.Tensor | None"]


def make_sequential_grad_fn(layers: list[Layer], loss: LossFn) -> GradFn | None:
    """A function that writes every member's gradients into ``grads`` (views ``[c, *shape]``).

    With ``decay`` (``[c, 1]``, the optimizer's per-member L2 weight decay) it writes
    ``gradient + decay * parameter`` instead, the optimizer's first pass done as the gradient is
    stored (the same operation, so the same values; one pass over ``[c, D]`` fewer). ``None``
    when a layer or the loss has no hand-written backward here.
    """
    if loss not in _LOSSES:
        return None
    if any(kind == "elementwise" and type(module) not in _ACTIVATIONS for kind, _, module in layers):
        return None
    plan = [
        _Layer(kind, name, module, f"{name}.weight", f"{name}.bias", _fuses_relu(layers, i))
        for i, (kind, name, module) in enumerate(layers)
    ]

    def grad_fn(
        params: dict[str, torch.Tensor],
        constants: dict[str, torch.Tensor],
        hparams: dict[str, torch.Tensor],
        x: Any,
        y: Any,
        grads: dict[str, torch.Tensor],
        decay: torch.Tensor | None = None,
    ) -> torch.Tensor | None:
        if not isinstance(x, torch.Tensor) or x.dim() != 3 or not isinstance(y, torch.Tensor):
            return None
        with torch.no_grad():
            return _step(plan, loss, params, constants, hparams, x, y, grads, decay)

    return grad_fn


@dataclass(frozen=True)
class _Layer:
    kind: str
    name: str
    module: nn.Module
    weight: str  # keys of its tensors, made once rather than every step
    bias: str
    add_relu: bool  # a linear layer with a bias followed by nn.ReLU: bias and ReLU in one pass


def _fuses_relu(layers: list[Layer], i: int) -> bool:
    kind, _, module = layers[i]
    return (
        _ADD_RELU is not None and kind == "linear" and getattr(module, "bias", None) is not None
        and i + 1 < len(layers) and type(layers[i + 1][2]) is nn.ReLU
    )


def _step(
    plan: list[_Layer],
    loss: LossFn,
    params: dict[str, torch.Tensor],
    constants: dict[str, torch.Tensor],
    hparams: dict[str, torch.Tensor],
    x: torch.Tensor,
    y: torch.Tensor,
    grads: dict[str, torch.Tensor],
    decay: torch.Tensor | None,
) -> torch.Tensor | None:
    def tensor(name: str) -> torch.Tensor | None:
        return params.get(name, constants.get(name))

    # forward, feature-major; saved[i] = (input, output, extra) of layer i
    a = x.transpose(1, 2)
    saved: list[tuple[torch.Tensor, torch.Tensor, Any]] = []
    relu_done = False
    for i, layer in enumerate(plan):
        inputs, extra, kind, module = a, None, layer.kind, layer.module
        if kind == "linear":
            weight, bias = tensor(layer.weight), tensor(layer.bias)
            assert weight is not None
            if bias is None:
                a = torch.bmm(weight, a)
            elif layer.add_relu and _ADD_RELU is not None:  # one pass over the output fewer than baddbmm + relu_
                a = torch.bmm(weight, a)
                _ADD_RELU(a, bias.unsqueeze(2))
                relu_done = True
            else:
                a = torch.baddbmm(bias.unsqueeze(2), weight, a)
        elif relu_done:  # this ReLU ran with the linear layer before it
            relu_done = False
        elif kind in ("dropout", "member_dropout"):
            extra = _dropout_mask(module, layer.name, constants, a)
            a = a if extra is None else a * extra
        elif i > 0 and plan[i - 1].kind == "linear" and type(module) in _IN_PLACE:
            a = _IN_PLACE[type(module)](a)  # the linear layer's output is needed by no backward
        else:
            a = _ACTIVATIONS[type(module)][0](module, a)
        saved.append((inputs, a, extra))

    found = _loss_and_grad(loss, a, y, hparams)
    if found is None:
        return None
    losses, grad = found

    # backward; the first layer's input gradient is never needed
    first_trainable = next(
        i for i, layer in enumerate(plan) if layer.kind == "linear" and (layer.weight in params or layer.bias in params)
    )
    for i in range(len(plan) - 1, first_trainable - 1, -1):
        layer = plan[i]
        inputs, outputs, extra = saved[i]
        if layer.kind == "linear":
            if layer.weight in params:
                weight_grad = torch.bmm(grad, inputs.transpose(1, 2))
                _store(grads[layer.weight], weight_grad, params[layer.weight], decay)
            if layer.bias in params:
                _store(grads[layer.bias], grad.sum(dim=2), params[layer.bias], decay)
            if i > first_trainable:
                weight = tensor(layer.weight)
                assert weight is not None
                grad = torch.bmm(weight.transpose(1, 2), grad)
        elif layer.kind in ("dropout", "member_dropout"):
            grad = grad if extra is None else grad * extra
        else:
            grad = _ACTIVATIONS[type(layer.module)][1](layer.module, grad, inputs, outputs)
    return losses


def _store(out: torch.Tensor, grad: torch.Tensor, param: torch.Tensor, decay: torch.Tensor | None) -> None:
    """``out = grad`` or, with per-member ``decay`` ``[c, 1]``, ``grad + param * decay`` (one pass)."""
    if decay is None:
        out.copy_(grad)
    else:
        torch.addcmul(grad, param, decay.view(-1, *([1] * (param.dim() - 1))), out=out)


def _dropout_mask(module: nn.Module, name: str, constants: dict[str, torch.Tensor], a: torch.Tensor) -> Any:
    """The scaled keep mask (``mask / keep``) of a dropout layer in train mode, or ``None`` (identity)."""
    if not module.training:
        return None
    if isinstance(module, MemberDropout):
        keep = (1.0 - constants[f"{name}.rate"]).to(a.dtype).view(-1, 1, 1)
        return (torch.rand_like(a) < keep).to(a.dtype) / keep
    assert isinstance(module, nn.Dropout)
    if module.p == 0.0:
        return None
    if module.p == 1.0:
        return torch.zeros_like(a)
    kept = 1.0 - module.p
    return torch.empty_like(a).bernoulli_(kept).div_(kept)


def _loss_and_grad(
    loss: LossFn, outputs: torch.Tensor, y: torch.Tensor, hparams: dict[str, torch.Tensor]
) -> tuple[torch.Tensor, torch.Tensor] | None:
    """Per-member mean losses ``[c]`` and their gradient with respect to ``outputs`` ``[c, out, B]``."""
    count, classes, batch = outputs.shape
    if loss is _mse:
        if y.shape != (count, batch, classes) or not y.is_floating_point():
            return None
        diff = outputs - y.transpose(1, 2)
        return diff.square().mean(dim=(1, 2)), diff.mul_(2.0 / diff[0].numel())
    if y.shape != (count, batch) or y.is_floating_point():
        return None
    logp = outputs.log_softmax(dim=1)
    target = y.unsqueeze(1)
    nll = -logp.gather(1, target).squeeze(1).mean(dim=1)
    grad = logp.exp()  # softmax
    if loss is _cross_entropy:
        losses = nll
        grad.scatter_add_(1, target, torch.full(target.shape, -1.0, dtype=grad.dtype, device=grad.device))
    else:  # label smoothing eps: (1 - eps) * nll + eps * mean over classes of -log p
        eps = hparams["label_smoothing"].to(grad.dtype)
        losses = (1.0 - eps) * nll - eps * logp.mean(dim=(1, 2))
        grad.sub_((eps / classes).view(-1, 1, 1))
        grad.scatter_add_(1, target, (eps - 1.0).view(-1, 1, 1).expand(count, 1, batch))
    return losses, grad.mul_(1.0 / batch)
