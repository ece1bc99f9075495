"""Per-member optimizers: SGD and Adam/AdamW over a population's stacked parameters.

Each optimizer updates one ``[population, D]`` tensor (every member's parameters flattened
into one row). Hyperparameters are tensors of shape ``[population]``, so every member trains
with its own learning rate, momentum, betas... in the same few kernel launches. The update
arithmetic follows ``torch.optim.SGD`` / ``Adam`` / ``AdamW`` operation by operation, so a
member's trajectory matches the same model trained alone with torch.optim (within float
rounding; the tests check it).

A hyperparameter comes from a member's hparams when the search space has a key of the same
name (``lr``, ``momentum``, ``weight_decay``, ``nesterov``, ``beta1``, ``beta2``, ``eps``);
otherwise every member uses the value given to the constructor.

Example:
    >>> import torch
    >>> opt = SGD(lr=0.1, momentum=0.9).create(population=2, dim=3, device="cpu", dtype=torch.float32)
    >>> opt.set_member(1, {"lr": 0.5})
    >>> params, grads = torch.zeros(2, 3), torch.ones(2, 3)
    >>> opt.step(params, grads, slice(0, 2))
    >>> params[:, 0].tolist()
    [-0.10000000149011612, -0.5]
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, fields
from typing import Any

import torch

from pbtune.errors import InvalidConfigError

__all__ = ["SGD", "Adam", "AdamW", "OptimizerSpec", "PopulationOptimizer", "optimizer_from_config"]


def _number(
    value: Any,
    field: str,
    where: str,
    low: float,
    high: float | None = None,
    low_inclusive: bool = True,
) -> float:
    ok = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
    if ok:
        ok = (value >= low if low_inclusive else value > low) and (high is None or value < high)
    if not ok:
        bound = f"{'>=' if low_inclusive else '>'} {low}" + (f" and < {high}" if high is not None else "")
        raise InvalidConfigError(field, where, f"a finite number {bound}", value)
    return float(value)


@dataclass(frozen=True)
class SGD:
    """Stochastic gradient descent with momentum, weight decay and Nesterov momentum, per member.

    Same update as ``torch.optim.SGD`` with ``dampening=0``.
    """

    lr: float = 0.01
    momentum: float = 0.0
    weight_decay: float = 0.0
    nesterov: bool = False

    kind = "sgd"
    hparam_names = ("lr", "momentum", "weight_decay", "nesterov")
    decoupled = False

    def __post_init__(self) -> None:
        self.check(self.defaults(), "SGD")

    def defaults(self) -> dict[str, Any]:
        return {f.name: getattr(self, f.name) for f in fields(self)}

    @staticmethod
    def check(values: Mapping[str, Any], where: str) -> None:
        """Raise :class:`InvalidConfigError` for values torch.optim.SGD would reject."""
        if "lr" in values:
            _number(values["lr"], "lr", where, 0.0)
        if "momentum" in values:
            _number(values["momentum"], "momentum", where, 0.0)
        if "weight_decay" in values:
            _number(values["weight_decay"], "weight_decay", where, 0.0)
        if "nesterov" in values and not isinstance(values["nesterov"], bool):
            raise InvalidConfigError("nesterov", where, "true or false", values["nesterov"])

    def create(self, population: int, dim: int, *, device: Any, dtype: torch.dtype) -> PopulationOptimizer:
        return PopulationOptimizer(self, population, dim, device=device, dtype=dtype)


@dataclass(frozen=True)
class Adam:
    """Adam (Kingma & Ba), per member; ``weight_decay`` is L2 added to the gradient like torch.optim.Adam."""

    lr: float = 0.001
    beta1: float = 0.9
    beta2: float = 0.999
    eps: float = 1e-8
    weight_decay: float = 0.0

    kind = "adam"
    hparam_names = ("lr", "beta1", "beta2", "eps", "weight_decay")
    decoupled = False

    def __post_init__(self) -> None:
        self.check(self.defaults(), type(self).__name__)

    def defaults(self) -> dict[str, Any]:
        return {f.name: getattr(self, f.name) for f in fields(self)}

    @staticmethod
    def check(values: Mapping[str, Any], where: str) -> None:
        if "lr" in values:
            _number(values["lr"], "lr", where, 0.0)
        for name in ("beta1", "beta2"):
            if name in values:
                _number(values[name], name, where, 0.0, 1.0)
        if "eps" in values:
            _number(values["eps"], "eps", where, 0.0)
        if "weight_decay" in values:
            _number(values["weight_decay"], "weight_decay", where, 0.0)

    def create(self, population: int, dim: int, *, device: Any, dtype: torch.dtype) -> PopulationOptimizer:
        return PopulationOptimizer(self, population, dim, device=device, dtype=dtype)


@dataclass(frozen=True)
class AdamW(Adam):
    """AdamW (Loshchilov & Hutter): weight decay applied to the weights, like torch.optim.AdamW."""

    weight_decay: float = 0.01

    kind = "adamw"
    decoupled = True


OptimizerSpec = SGD | Adam | AdamW
_SPECS: dict[str, type] = {"sgd": SGD, "adam": Adam, "adamw": AdamW}


def optimizer_from_config(config: Any) -> OptimizerSpec:
    """``"sgd"``, ``{"name": "adamw", "lr": 3e-4}`` or an optimizer object.

    Example:
        >>> optimizer_from_config({"name": "adam", "lr": 0.01}).lr
        0.01
    """
    if isinstance(config, (SGD, Adam)):
        return config
    if isinstance(config, str):
        config = {"name": config}
    if not isinstance(config, Mapping) or config.get("name") not in _SPECS:
        raise InvalidConfigError(
            "optimizer",
            "vectorized.train",
            f"one of {sorted(_SPECS)} or a mapping with `name`, or SGD/Adam/AdamW from pbtune.vectorized",
            config,
        )
    params = {k: v for k, v in config.items() if k != "name"}
    cls = _SPECS[config["name"]]
    allowed = {f.name for f in fields(cls)}
    for key in params:
        if key not in allowed:
            raise InvalidConfigError(key, f"optimizer ({config['name']})", f"one of {sorted(allowed)}", params[key])
    return cls(**params)  # type: ignore[no-any-return]


class PopulationOptimizer:
    """The optimizer state of a whole population: per-member hyperparameters and moments.

    Hyperparameters are kept in float64 (``[population]``) so that derived scalars such as
    ``1 - lr * weight_decay`` and Adam's bias corrections are computed in double precision,
    as torch.optim does with Python floats, and only then rounded to the parameter dtype.
    """

    def __init__(self, spec: OptimizerSpec, population: int, dim: int, *, device: Any, dtype: torch.dtype) -> None:
        self.spec = spec
        self.population = population
        self.dim = dim
        self.device = torch.device(device)
        self.dtype = dtype
        defaults = spec.defaults()
        self._host: dict[str, list[Any]] = {name: [defaults[name]] * population for name in spec.hparam_names}
        self.state: dict[str, torch.Tensor] = {}
        if spec.kind == "sgd":
            self.state["momentum_buffer"] = torch.zeros(population, dim, device=self.device, dtype=dtype)
        else:
            self.state["exp_avg"] = torch.zeros(population, dim, device=self.device, dtype=dtype)
            self.state["exp_avg_sq"] = torch.zeros(population, dim, device=self.device, dtype=dtype)
            self.state["step"] = torch.zeros(population, device=self.device, dtype=torch.float64)
        self._refresh()

    # -- hyperparameters ------------------------------------------------------------------------
    def set_member(self, index: int, hparams: Mapping[str, Any]) -> None:
        """Set member ``index``'s hyperparameters (keys the optimizer does not use are ignored)."""
        values = {k: v for k, v in hparams.items() if k in self._host}
        self.spec.check(values, f"hparams of member {index}")
        for name, value in values.items():
            self._host[name][index] = value if isinstance(value, bool) else float(value)
        self._stale = True  # rebuilt once before the next update: an exploit round sets many members

    def member_hparams(self, index: int) -> dict[str, Any]:
        return {name: values[index] for name, values in self._host.items()}

    def _refresh(self) -> None:
        """Rebuild the device tensors from the host lists (only when hyperparameters change)."""
        self._stale = False
        h64 = {
            n: torch.tensor([float(v) for v in vals], dtype=torch.float64, device=self.device)
            for n, vals in self._host.items()
        }
        col = {n: t.to(self.dtype).unsqueeze(1) for n, t in h64.items()}  # [P, 1] broadcasts over D
        self._h64, self._col = h64, col
        self._any = {n: any(bool(v) for v in vals) for n, vals in self._host.items()}
        if self.spec.kind == "sgd":
            self._nesterov_mixed = self._any["nesterov"] and not all(self._host["nesterov"])
            self._nesterov_mask = torch.tensor(self._host["nesterov"], device=self.device).unsqueeze(1)
        else:
            self._one_minus_b1 = (1.0 - h64["beta1"]).to(self.dtype).unsqueeze(1)
            self._one_minus_b2 = (1.0 - h64["beta2"]).to(self.dtype).unsqueeze(1)
            self._decay = (1.0 - h64["lr"] * h64["weight_decay"]).to(self.dtype).unsqueeze(1)

    # -- the update -----------------------------------------------------------------------------
    def gradient_decay(self, rows: slice) -> torch.Tensor | None:
        """Per-member L2 weight decay ``[c, 1]`` that may be added to the gradients as they are
        written (then pass ``decayed=True`` to :meth:`step`); ``None`` when there is none to add
        (no weight decay, or AdamW's decoupled decay, which scales the weights instead)."""
        if self._stale:
            self._refresh()
        if self.spec.decoupled or not self._any["weight_decay"]:
            return None
        return self._col["weight_decay"][rows]

    @torch.no_grad()
    def step(self, params: torch.Tensor, grads: torch.Tensor, rows: slice, *, decayed: bool = False) -> None:
        """Update ``params`` (the ``rows`` of the population, shape ``[c, D]``) in place.

        ``grads`` is scratch: it may be overwritten. ``decayed``: they already hold
        ``grad + weight_decay * param`` (:meth:`gradient_decay`).
        """
        if self._stale:
            self._refresh()
        if self.spec.kind == "sgd":
            self._sgd(params, grads, rows, decayed)
        else:
            self._adam(params, grads, rows, decayed)

    def _sgd(self, params: torch.Tensor, grad: torch.Tensor, rows: slice, decayed: bool) -> None:
        col = self._col
        if self._any["weight_decay"] and not decayed:
            grad.addcmul_(params, col["weight_decay"][rows])  # grad + wd * p
        update = grad
        if self._any["momentum"]:
            # torch starts the buffer at the first gradient; m * 0 + g is the same value.
            buf = self.state["momentum_buffer"][rows]
            torch.addcmul(grad, buf, col["momentum"][rows], out=buf)  # m * buf + g in one pass
            if not self._any["nesterov"]:
                update = buf
            elif self._nesterov_mixed:
                update = torch.where(self._nesterov_mask[rows], grad.addcmul(buf, col["momentum"][rows]), buf)
            else:
                update = grad.addcmul_(buf, col["momentum"][rows])
        params.addcmul_(update, col["lr"][rows], value=-1.0)

    def _adam(self, params: torch.Tensor, grad: torch.Tensor, rows: slice, decayed: bool) -> None:
        col, h64 = self._col, self._h64
        step = self.state["step"][rows]
        step += 1
        if self._any["weight_decay"]:
            if self.spec.decoupled:
                params.mul_(self._decay[rows])  # AdamW: p * (1 - lr * wd)
            elif not decayed:
                grad.addcmul_(params, col["weight_decay"][rows])
        exp_avg, exp_avg_sq = self.state["exp_avg"][rows], self.state["exp_avg_sq"][rows]
        exp_avg.lerp_(grad, self._one_minus_b1[rows])
        # ((1 - beta2) * g) * g: the same rounding order as addcmul_(g, g, value=1 - beta2)
        exp_avg_sq.mul_(col["beta2"][rows]).addcmul_(grad * self._one_minus_b2[rows], grad)
        bias1 = 1.0 - h64["beta1"][rows] ** step
        bias2 = 1.0 - h64["beta2"][rows] ** step
        step_size = (h64["lr"][rows] / bias1).to(self.dtype).unsqueeze(1)
        bias2_sqrt = (bias2**0.5).to(self.dtype).unsqueeze(1)
        denom = exp_avg_sq.sqrt().div_(bias2_sqrt).add_(col["eps"][rows])
        params.addcdiv_(exp_avg * step_size.neg(), denom)  # p + (-step_size * m) / denom

    # -- population operations ------------------------------------------------------------------
    @torch.no_grad()
    def copy_members(self, donors: torch.Tensor, receivers: torch.Tensor) -> None:
        """Receivers take the donors' optimizer state (moments, step counts). All copies read
        the state from before the call, so a member can be a donor and a receiver at once."""
        for tensor in self.state.values():
            tensor[receivers] = tensor[donors]

    def state_dict(self) -> dict[str, Any]:
        """Tensors and plain values only (loadable with ``torch.load(weights_only=True)``)."""
        return {
            "kind": self.spec.kind,
            "spec": self.spec.defaults(),
            "hparams": {n: list(v) for n, v in self._host.items()},
            "state": {n: t.detach().clone() for n, t in self.state.items()},
        }

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        if state.get("kind") != self.spec.kind:
            raise InvalidConfigError(
                "optimizer", "population checkpoint", f"a {self.spec.kind} state", state.get("kind")
            )
        for name, tensor in state["state"].items():
            if name not in self.state or tuple(tensor.shape) != tuple(self.state[name].shape):
                raise InvalidConfigError(
                    name,
                    "optimizer state of the population checkpoint",
                    f"shape {tuple(self.state[name].shape)}" if name in self.state else f"one of {sorted(self.state)}",
                    tuple(tensor.shape),
                )
            self.state[name].copy_(tensor)
        for name, values in state["hparams"].items():
            if name in self._host:
                self._host[name] = list(values)
        self._refresh()

    def member_torch_state(self, index: int, shapes: list[torch.Size]) -> dict[str, Any]:
        """Member ``index``'s state in the format of ``torch.optim.<Optimizer>.state_dict()``.

        Load it into ``torch.optim.SGD/Adam/AdamW(model.parameters())`` to continue training
        the extracted model exactly where the population left it.
        """
        hp = self.member_hparams(index)
        offsets = [0]
        for shape in shapes:
            offsets.append(offsets[-1] + math.prod(shape))
        per_param: dict[int, dict[str, torch.Tensor]] = {}
        for i, shape in enumerate(shapes):
            piece = {
                n: self.state[n][index, offsets[i] : offsets[i + 1]].reshape(shape).clone()
                for n in self.state
                if n != "step"
            }
            if self.spec.kind == "sgd":
                if hp["momentum"] == 0:
                    continue
                per_param[i] = {"momentum_buffer": piece["momentum_buffer"]}
            else:
                step = self.state["step"][index].to(torch.float32).cpu().clone()
                per_param[i] = {
                    "step": step,
                    "exp_avg": piece["exp_avg"],
                    "exp_avg_sq": piece["exp_avg_sq"],
                }
        if self.spec.kind == "sgd":
            group: dict[str, Any] = {
                "lr": hp["lr"],
                "momentum": hp["momentum"],
                "dampening": 0.0,
                "weight_decay": hp["weight_decay"],
                "nesterov": bool(hp["nesterov"]),
            }
        else:
            group = {
                "lr": hp["lr"],
                "betas": (hp["beta1"], hp["beta2"]),
                "eps": hp["eps"],
                "weight_decay": hp["weight_decay"],
                "amsgrad": False,
                "decoupled_weight_decay": self.spec.decoupled,
            }
        group["params"] = list(range(len(shapes)))
        return {"state": per_param, "param_groups": [group]}
