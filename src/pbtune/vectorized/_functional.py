"""The batched forward: ``vmap(functional_call(...))`` over a chunk of members, differentiated by autograd.

Nothing here holds state; :class:`~pbtune.vectorized.population.StackedPopulation` owns the tensors.
"""

from __future__ import annotations

import copy
import inspect
from collections.abc import Callable, Mapping
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call, vmap

from pbtune.errors import InvalidConfigError

__all__ = ["MemberDropout", "make_template", "resolve_loss", "resolve_metric", "LossFn", "MetricFn"]

LossFn = Callable[..., torch.Tensor]
MetricFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


class MemberDropout(nn.Module):
    """``nn.Dropout`` whose probability is a per-member tensor (the ``dropout`` hyperparameter).

    Inside ``vmap(..., randomness="different")`` every member draws its own mask; the
    arithmetic is torch's: ``x * bernoulli(1 - p) / (1 - p)``.
    """

    rate: torch.Tensor

    def __init__(self, p: float) -> None:
        super().__init__()
        self.register_buffer("rate", torch.tensor(float(p)), persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training:
            return x
        keep = 1.0 - self.rate
        mask = (torch.rand_like(x) < keep).to(x.dtype)
        return x * mask / keep


def make_template(module: nn.Module, *, member_dropout: bool) -> tuple[nn.Module, list[str]]:
    """A storage-free copy of ``module`` (on the meta device) to call with stacked tensors.

    With ``member_dropout`` every ``nn.Dropout`` is replaced by :class:`MemberDropout`;
    returns the template and the names of the replaced modules.
    """
    template = copy.deepcopy(module).to("meta")
    replaced: list[str] = []
    if member_dropout:
        for name, child in list(template.named_modules()):
            if type(child) is nn.Dropout:
                parent_name, _, attr = name.rpartition(".")
                parent = template.get_submodule(parent_name) if parent_name else template
                setattr(parent, attr, MemberDropout(child.p).to("meta"))
                replaced.append(name)
    return template, replaced


# -- losses ---------------------------------------------------------------------------------------
def mean_cross_entropy(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Cross-entropy of ``[..., B, classes]`` logits and ``[..., B]`` class indices, averaged over B.

    F.cross_entropy's value (to float rounding): logsumexp - target logit. Under vmap
    F.nll_loss is batched through a Python decomposition, and log_softmax over a short
    contiguous class dimension (10 classes) is 2x slower on CPU than logsumexp.
    """
    picked = logits.gather(-1, targets.unsqueeze(-1)).squeeze(-1)
    return (logits.logsumexp(dim=-1) - picked).mean(dim=-1)


def _cross_entropy(outputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    if outputs.dim() == 2 and targets.dim() == 1 and not targets.is_floating_point():
        return mean_cross_entropy(outputs, targets)
    return F.cross_entropy(outputs, targets)


def _cross_entropy_smoothed(
    outputs: torch.Tensor, targets: torch.Tensor, *, hparams: Mapping[str, Any]
) -> torch.Tensor:
    """``F.cross_entropy(..., label_smoothing=eps)`` with ``eps`` a per-member tensor.

    Same formula as torch: ``(1 - eps) * nll + eps * mean_over_classes(-log p)``.
    """
    eps = hparams["label_smoothing"]
    logp = outputs.log_softmax(dim=-1)
    nll = -logp.gather(-1, targets.unsqueeze(-1)).squeeze(-1).mean()
    smooth = -logp.mean(dim=-1).mean()
    return (1.0 - eps) * nll + eps * smooth


def _mse(outputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    return F.mse_loss(outputs, targets)


_LOSSES: dict[str, LossFn] = {"cross_entropy": _cross_entropy, "mse": _mse}


def takes_hparams(fn: Callable[..., Any]) -> bool:
    """True when ``fn`` declares an ``hparams`` parameter (it then gets the member's tensors)."""
    try:
        return "hparams" in inspect.signature(fn).parameters
    except (TypeError, ValueError):  # builtins without a signature
        return False


def resolve_loss(loss: str | LossFn, *, label_smoothing: bool) -> tuple[LossFn, bool]:
    """The loss callable and whether it receives ``hparams=``."""
    if isinstance(loss, str):
        if loss not in _LOSSES:
            raise InvalidConfigError(
                "loss",
                "vectorized.train",
                f"one of {sorted(_LOSSES)} or a callable (outputs, targets[, hparams]) -> scalar tensor",
                loss,
            )
        if label_smoothing:
            if loss != "cross_entropy":
                raise InvalidConfigError(
                    "loss",
                    "vectorized.train",
                    "'cross_entropy' when the space has `label_smoothing` (or a callable that takes hparams=)",
                    loss,
                )
            return _cross_entropy_smoothed, True
        return _LOSSES[loss], False
    if not callable(loss):
        raise InvalidConfigError("loss", "vectorized.train", "a loss name or a callable", loss)
    if label_smoothing and not takes_hparams(loss):
        raise InvalidConfigError(
            "loss",
            "vectorized.train",
            "'cross_entropy' or a callable with an `hparams` parameter when the space has `label_smoothing`",
            getattr(loss, "__name__", loss),
        )
    return loss, takes_hparams(loss)


def _accuracy(outputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    return (outputs.argmax(dim=-1) == targets).to(torch.float32).mean()


def resolve_metric(metric: str | MetricFn, loss: LossFn, loss_takes_hparams: bool) -> tuple[MetricFn, str]:
    """The metric callable and its default mode (``max`` for accuracy, ``min`` for loss)."""
    if metric == "accuracy":
        return _accuracy, "max"
    if metric == "loss":
        if loss_takes_hparams:  # per-member regularisers are not part of the score
            return _cross_entropy, "min"
        return loss, "min"
    if isinstance(metric, str) or not callable(metric):
        raise InvalidConfigError(
            "metric",
            "vectorized.train",
            "'accuracy', 'loss' or a callable (outputs, targets) -> scalar tensor",
            metric,
        )
    return metric, ""


# -- the batched functions -----------------------------------------------------------------------
def has_tied_tensors(module: nn.Module) -> bool:
    """True when one parameter or buffer is reachable under two names (``functional_call`` must tie them)."""
    return len(list(module.named_parameters(remove_duplicate=False))) != len(list(module.named_parameters())) or len(
        list(module.named_buffers(remove_duplicate=False))
    ) != len(list(module.named_buffers()))


def make_loss_fn(
    template: nn.Module, loss: LossFn, loss_takes_hparams: bool, *, tie_weights: bool = True
) -> Callable[..., Any]:
    """``f(params, constants, hparams, x, y) -> losses[c]`` over a leading member dimension.

    Differentiate the sum with plain autograd: members are independent, so its gradient
    with respect to the stacked parameters is every member's own gradient. (vmap of the
    forward with autograd outside runs 1.3x faster than ``vmap(grad(...))``, which pays for
    a functorch transform level on every op.) ``constants`` (buffers, frozen parameters,
    dropout rates) are passed through; batch-norm statistics in them are updated in place.
    ``tie_weights=False`` skips ``functional_call``'s search for tied tensors (a quarter of its
    per-call cost on a small MLP); only for modules without them (:func:`has_tied_tensors`).
    """

    def member_loss(
        params: dict[str, torch.Tensor],
        constants: dict[str, torch.Tensor],
        hparams: dict[str, torch.Tensor],
        x: Any,
        y: Any,
    ) -> torch.Tensor:
        outputs = functional_call(template, (params, constants), (x,), tie_weights=tie_weights)
        return loss(outputs, y, hparams=hparams) if loss_takes_hparams else loss(outputs, y)

    return vmap(member_loss, randomness="different")  # type: ignore[no-any-return]


def make_forward_fn(template: nn.Module, *, tie_weights: bool = True) -> Callable[..., Any]:
    """``f(params, constants, x) -> outputs[c, ...]`` with ``x`` shared by all members."""

    def member_forward(params: dict[str, torch.Tensor], constants: dict[str, torch.Tensor], x: Any) -> Any:
        return functional_call(template, (params, constants), (x,), tie_weights=tie_weights)

    return vmap(member_forward, in_dims=(0, 0, None), randomness="different")  # type: ignore[no-any-return]
