"""A population held as one stacked model: parameters, buffers, optimizer state, hyperparameters.

Every member's trainable parameters are one row of a ``[population, D]`` tensor, so the
optimizer updates all members with a handful of kernels and an exploit is a row copy.
Buffers (batch-norm statistics) and frozen parameters are stacked per name.

Example:
    >>> import torch
    >>> from torch import nn
    >>> from pbtune.vectorized.optim import SGD
    >>> torch.manual_seed(0)  # doctest: +ELLIPSIS
    <torch._C.Generator object at ...>
    >>> pop = StackedPopulation([nn.Linear(3, 2) for _ in range(4)], SGD(lr=0.1))
    >>> pop.copy_members([3], [0])                       # member 0 takes member 3's state
    >>> torch.equal(pop.member_state_dict(0)["weight"], pop.member_state_dict(3)["weight"])
    True
"""

from __future__ import annotations

import logging
from collections import OrderedDict
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import torch
from torch import nn

from pbtune.errors import InvalidConfigError
from pbtune.vectorized._functional import LossFn, has_tied_tensors, make_forward_fn, make_loss_fn, make_template
from pbtune.vectorized._sequential import make_sequential_forward_fn, make_sequential_loss_fn, sequential_layers
from pbtune.vectorized._sequential_grad import GradFn, make_sequential_grad_fn
from pbtune.vectorized.checkpoint_file import CHECKPOINT_FORMAT, atomic_save, extract_member, load_checkpoint
from pbtune.vectorized.optim import OptimizerSpec

__all__ = ["StackedPopulation", "atomic_save", "extract_member", "load_checkpoint", "CHECKPOINT_FORMAT"]

# The population checkpoint file lives in checkpoint_file.py; its names stay importable from here.

log = logging.getLogger(__name__)


class StackedPopulation:
    """The whole population as tensors with a leading member dimension.

    Args:
        modules: one freshly built model per member, all of the same architecture (their
            initial weights become the members' weights).
        optimizer: an optimizer spec (:class:`~pbtune.vectorized.optim.SGD`, ``Adam``, ``AdamW``).
        device: where the tensors live (default: the modules' device).
        tensor_hparams: names of non-optimizer hyperparameters kept as ``[population]``
            tensors (``dropout``, ``label_smoothing``, anything a loss reads via ``hparams=``).
            ``dropout`` switches every ``nn.Dropout`` to a per-member probability.
        fast_path: run an ``nn.Sequential`` of ``nn.Linear``, element-wise activations and
            dropout with batched matmuls instead of ``vmap`` (same values, less overhead per
            call); ``False`` always uses ``vmap``.
    """

    def __init__(
        self,
        modules: Sequence[nn.Module],
        optimizer: OptimizerSpec,
        *,
        device: Any = None,
        tensor_hparams: Sequence[str] = (),
        fast_path: bool = True,
    ) -> None:
        if len(modules) < 1:
            raise InvalidConfigError("modules", "StackedPopulation", "at least one module", len(modules))
        first = modules[0]
        self.size = len(modules)
        self.device = torch.device(device) if device is not None else _module_device(first)
        self.template, self.dropout_modules = make_template(first, member_dropout="dropout" in tensor_hparams)

        trainable = [(n, p) for n, p in first.named_parameters() if p.requires_grad]
        frozen = [(n, p) for n, p in first.named_parameters() if not p.requires_grad]
        if not trainable:
            raise InvalidConfigError("model", "vectorized", "a module with trainable parameters", type(first).__name__)
        dtypes = {p.dtype for _, p in trainable}
        if len(dtypes) != 1 or not next(iter(dtypes)).is_floating_point:
            raise InvalidConfigError(
                "model",
                "vectorized",
                "trainable parameters of one floating dtype",
                sorted(str(d) for d in dtypes),
            )
        self.dtype = next(iter(dtypes))
        self.param_names = [n for n, _ in trainable]
        self.param_shapes = [p.shape for _, p in trainable]
        sizes = [p.numel() for _, p in trainable]
        self.param_offsets = [0]
        for size in sizes:
            self.param_offsets.append(self.param_offsets[-1] + size)
        self.dim = self.param_offsets[-1]
        self._state_keys = _state_key_map(first)

        with torch.no_grad():
            rows = []
            for index, module in enumerate(modules):
                named = dict(module.named_parameters())
                _check_same_architecture(index, named, first)
                rows.append(
                    torch.cat([named[n].detach().reshape(-1).to(self.device, self.dtype) for n in self.param_names])
                )
            self.params = torch.stack(rows).contiguous()
            const_names = [n for n, _ in frozen] + [n for n, _ in first.named_buffers()]
            self.constants: dict[str, torch.Tensor] = {}
            for name in const_names:
                values = [_get_tensor(m, name) for m in modules]
                self.constants[name] = torch.stack([v.detach().to(self.device) for v in values]).contiguous()

        self.optimizer = optimizer.create(self.size, self.dim, device=self.device, dtype=self.dtype)
        self.tensor_hparam_names = tuple(tensor_hparams)
        self.hp_tensors: dict[str, torch.Tensor] = {
            name: torch.zeros(self.size, device=self.device, dtype=self.dtype) for name in self.tensor_hparam_names
        }
        self.hparams: list[dict[str, Any]] = [{} for _ in range(self.size)]
        self._param_views = self._split(self.params)
        self._loss_fn: Callable[..., Any] | None = None
        self._grad_fn: GradFn | None = None
        self._grad_scratch: torch.Tensor | None = None
        self._row_views: dict[tuple[int, int], tuple[dict[str, torch.Tensor], ...]] = {}
        self._tied = has_tied_tensors(first)
        # Plain nn.Sequential MLPs skip vmap (see _sequential.py); others, or fast_path=False, use it.
        self._layers = sequential_layers(self.template) if fast_path and not self._tied else None
        self._forward_fn = make_forward_fn(self.template, tie_weights=self._tied)
        if self._layers is not None:
            self._forward_fn = make_sequential_forward_fn(self._layers, self._forward_fn)
        self._training: bool | None = None

    # -- views ----------------------------------------------------------------------------------
    def _split(self, flat: torch.Tensor) -> dict[str, torch.Tensor]:
        """Per-parameter views ``[rows, *shape]`` of a ``[rows, D]`` tensor (no copies)."""
        rows = flat.shape[0]
        return {
            name: flat[:, self.param_offsets[i] : self.param_offsets[i + 1]].view(rows, *shape)
            for i, (name, shape) in enumerate(zip(self.param_names, self.param_shapes, strict=True))
        }

    def _constants(self, rows: slice) -> dict[str, torch.Tensor]:
        out = {name: tensor[rows] for name, tensor in self.constants.items()}
        if self.dropout_modules:
            rate = self.hp_tensors["dropout"][rows]
            for name in self.dropout_modules:
                out[f"{name}.rate"] = rate
        return out

    def _hparam_views(self, rows: slice) -> dict[str, torch.Tensor]:
        return {name: tensor[rows] for name, tensor in self.hp_tensors.items()}

    # -- hyperparameters ------------------------------------------------------------------------
    def set_hparams(self, index: int, hparams: Mapping[str, Any]) -> None:
        """Give member ``index`` these hyperparameters (optimizer and tensor ones); all or nothing."""
        for name in self.tensor_hparam_names:  # validate everything before changing anything
            value = hparams.get(name)
            if isinstance(value, bool) or not isinstance(value, (int, float)):
                raise InvalidConfigError(name, f"hparams of member {index}", "a number", value)
            if name == "dropout" and not 0.0 <= value < 1.0:
                raise InvalidConfigError(name, f"hparams of member {index}", "in [0, 1)", value)
        self.optimizer.set_member(index, hparams)  # validates its own values first
        for name in self.tensor_hparam_names:
            self.hp_tensors[name][index] = float(hparams[name])
        self.hparams[index] = dict(hparams)

    # -- training -------------------------------------------------------------------------------
    def set_loss(self, loss: LossFn, takes_hparams: bool) -> None:
        self._loss_fn = make_loss_fn(self.template, loss, takes_hparams, tie_weights=self._tied)
        if self._layers is not None:
            self._loss_fn = make_sequential_loss_fn(self._layers, loss, takes_hparams, self._loss_fn)
            self._grad_fn = make_sequential_grad_fn(self._layers, loss)

    def train_step(self, inputs: Any, targets: Any, rows: slice) -> torch.Tensor:
        """One minibatch update of the members in ``rows``; ``inputs``/``targets`` are ``[c, B, ...]``.

        Returns the members' losses (``[c]``, before the update).
        """
        decay = self.optimizer.gradient_decay(rows)
        grads, losses = self.gradients(inputs, targets, rows, decay=decay)
        self.optimizer.step(self.params[rows], grads, rows, decayed=decay is not None)
        return losses

    def gradients(
        self, inputs: Any, targets: Any, rows: slice, *, decay: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Flat gradients ``[c, D]`` and losses ``[c]`` of the members in ``rows`` (train mode); with
        ``decay`` (``[c, 1]``, ``PopulationOptimizer.gradient_decay``): ``grad + decay * param``."""
        if self._loss_fn is None:
            raise RuntimeError("call set_loss() before train_step()")
        self._mode(True)
        count = rows.stop - rows.start
        if self._grad_scratch is None or self._grad_scratch.shape[0] < count:
            self._grad_scratch = torch.empty(count, self.dim, device=self.device, dtype=self.dtype)
            self._row_views.clear()
        grads = self._grad_scratch[:count]
        if self._grad_fn is not None:
            params, constants, hparams, grad_views = self._views_of(rows)
            losses = self._grad_fn(params, constants, hparams, inputs, targets, grad_views, decay)
            if losses is not None:
                return grads, losses
        # One leaf per parameter, each a view of the stacked rows (no copy). A single leaf over
        # the flat rows would be simpler, but its backward zero-fills a full [c, D] tensor per
        # parameter (slice_backward): half of the step on the digits MLP.
        leaves = {name: view.detach().requires_grad_(True) for name, view in self._split(self.params[rows]).items()}
        with torch.enable_grad():
            losses = self._loss_fn(leaves, self._constants(rows), self._hparam_views(rows), inputs, targets)
            per_param = torch.autograd.grad(losses.sum(), list(leaves.values()))
        for view, grad in zip(self._split(grads).values(), per_param, strict=True):
            view.copy_(grad)
        if decay is not None:
            grads.addcmul_(self.params[rows], decay)  # the optimizer's own first pass, done here
        return grads, losses.detach()

    def _views_of(self, rows: slice) -> tuple[dict[str, torch.Tensor], ...]:
        """Parameters, constants, tensor hyperparameters and gradient scratch of ``rows``, as views.

        Cached: every tensor behind them is changed in place only, and making the views anew
        costs ~50 us a step (a twentieth of a step at population 32).
        """
        key = (rows.start, rows.stop)
        if key not in self._row_views:
            assert self._grad_scratch is not None
            self._row_views[key] = (
                {name: view[rows] for name, view in self._param_views.items()},
                self._constants(rows),
                self._hparam_views(rows),
                self._split(self._grad_scratch[: rows.stop - rows.start]),
            )
        return self._row_views[key]

    @torch.no_grad()
    def forward(self, inputs: Any, rows: slice, *, train: bool = False) -> Any:
        """Outputs of the members in ``rows`` for ``inputs`` shared by all of them (eval mode by default)."""
        self._mode(train)
        return self._forward_fn({n: v[rows] for n, v in self._param_views.items()}, self._constants(rows), inputs)

    def _mode(self, train: bool) -> None:
        if self._training is not train:  # train()/eval() walk every submodule: only on a change
            self.template.train(train)
            self._training = train

    # -- population operations ------------------------------------------------------------------
    @torch.no_grad()
    def copy_members(self, donors: Sequence[int], receivers: Sequence[int], *, copy_hparams: bool = True) -> None:
        """Each receiver takes its donor's parameters, buffers, optimizer state and hyperparameters.

        With ``copy_hparams=False`` the receivers keep their own hyperparameters (weights-only
        exploit). All copies read the state from before the call (a member may give and receive
        at once).
        """
        if len(donors) != len(receivers):
            raise ValueError("donors and receivers must have the same length")
        if not donors:
            return
        src = torch.tensor(list(donors), device=self.device)
        dst = torch.tensor(list(receivers), device=self.device)
        self.params[dst] = self.params[src]
        for tensor in self.constants.values():
            tensor[dst] = tensor[src]
        self.optimizer.copy_members(src, dst)
        if not copy_hparams:
            return
        for tensor in self.hp_tensors.values():
            tensor[dst] = tensor[src]
        old = [dict(self.hparams[d]) for d in donors]
        for receiver, hparams in zip(receivers, old, strict=True):
            self.optimizer.set_member(receiver, hparams)
            self.hparams[receiver] = hparams

    def member_state_dict(self, index: int) -> OrderedDict[str, torch.Tensor]:
        """Member ``index`` as a plain ``state_dict`` that loads into a fresh model (same keys).

        Example::

            model = model_fn()
            model.load_state_dict(population.member_state_dict(best_id))
        """
        if not 0 <= index < self.size:
            raise IndexError(f"member index must be in [0, {self.size}); got {index}")
        views = self._param_views
        out: OrderedDict[str, torch.Tensor] = OrderedDict()
        for key, (kind, name) in self._state_keys.items():
            source = views[name] if kind == "param" else self.constants[name]
            out[key] = source[index].detach().clone()
        return out

    def member_optimizer_state(self, index: int) -> dict[str, Any]:
        """Member ``index``'s optimizer state for ``torch.optim`` (parameters in ``named_parameters`` order)."""
        return self.optimizer.member_torch_state(index, list(self.param_shapes))

    # -- checkpoints ----------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        """Everything needed to continue bit-for-bit: tensors (on CPU) and plain values."""
        return {
            "size": self.size,
            "param_names": list(self.param_names),
            "param_shapes": [list(s) for s in self.param_shapes],
            "params": self.params.detach().cpu().clone(),
            "constants": {n: t.detach().cpu().clone() for n, t in self.constants.items()},
            "hp_tensors": {n: t.detach().cpu().clone() for n, t in self.hp_tensors.items()},
            "hparams": [dict(h) for h in self.hparams],
            "optimizer": _to_cpu(self.optimizer.state_dict()),
            "state_keys": [[key, kind, name] for key, (kind, name) in self._state_keys.items()],
        }

    @torch.no_grad()
    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        where = "population checkpoint"
        if state.get("size") != self.size:
            raise InvalidConfigError("population", where, f"{self.size} members (this run's size)", state.get("size"))
        if list(state.get("param_names", [])) != self.param_names or [list(s) for s in self.param_shapes] != [
            list(s) for s in state.get("param_shapes", [])
        ]:
            raise InvalidConfigError(
                "model",
                where,
                "the same parameters as model_fn() builds",
                list(state.get("param_names", []))[:5],
            )
        if set(state["constants"]) != set(self.constants) or set(state["hp_tensors"]) != set(self.hp_tensors):
            raise InvalidConfigError(
                "buffers",
                where,
                f"{sorted(self.constants) + sorted(self.hp_tensors)}",
                sorted(state["constants"]) + sorted(state["hp_tensors"]),
            )
        self.params.copy_(state["params"])
        for name, tensor in state["constants"].items():
            self.constants[name].copy_(tensor)
        for name, tensor in state["hp_tensors"].items():
            self.hp_tensors[name].copy_(tensor)
        self.optimizer.load_state_dict(state["optimizer"])
        self.hparams = [dict(h) for h in state["hparams"]]

    # -- memory ---------------------------------------------------------------------------------
    def state_bytes_per_member(self) -> int:
        """Bytes one member's parameters, gradient scratch, optimizer state and buffers take."""
        item = self.params.element_size()
        moments = sum(t.numel() for t in self.optimizer.state.values()) // self.size
        const = sum(t.numel() * t.element_size() for t in self.constants.values()) // self.size
        return self.dim * item * 2 + moments * item + const


def _module_device(module: nn.Module) -> torch.device:
    for tensor in module.parameters():
        return tensor.device
    return torch.device("cpu")


def _get_tensor(module: nn.Module, name: str) -> torch.Tensor:
    owner, _, attr = name.rpartition(".")
    sub = module.get_submodule(owner) if owner else module
    value = getattr(sub, attr)
    if not isinstance(value, torch.Tensor):
        raise InvalidConfigError(name, "model", "a tensor in every member", type(value).__name__)
    return value


def _state_key_map(module: nn.Module) -> OrderedDict[str, tuple[str, str]]:
    """state_dict key -> ("param" | "const", canonical name); tied weights map to one tensor."""
    by_id: dict[int, tuple[str, str]] = {}
    for name, p in module.named_parameters():
        by_id.setdefault(id(p), ("param" if p.requires_grad else "const", name))
    for name, b in module.named_buffers():
        by_id.setdefault(id(b), ("const", name))
    out: OrderedDict[str, tuple[str, str]] = OrderedDict()
    for key, tensor in module.state_dict(keep_vars=True).items():
        if id(tensor) not in by_id:
            raise InvalidConfigError(key, "model state_dict", "a parameter or buffer of the module", key)
        out[key] = by_id[id(tensor)]
    return out


def _check_same_architecture(index: int, named: Mapping[str, torch.Tensor], first: nn.Module) -> None:
    reference = dict(first.named_parameters())
    if list(named) != list(reference) or any(named[n].shape != reference[n].shape for n in named):
        raise InvalidConfigError(
            "model_fn",
            "vectorized",
            "a factory that builds the same architecture for every "
            "member (hyperparameters that change shapes are not vectorizable)",
            f"member {index} differs",
        )


def _to_cpu(value: Any) -> Any:
    if isinstance(value, torch.Tensor):
        return value.detach().cpu().clone()
    if isinstance(value, dict):
        return {k: _to_cpu(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return type(value)(_to_cpu(v) for v in value)
    return value


def bytes_human(count: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if count < 1024 or unit == "GiB":
            return f"{count:.1f} {unit}" if unit != "B" else f"{int(count)} B"
        count /= 1024
    return f"{count:.1f} GiB"  # pragma: no cover
