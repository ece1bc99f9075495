"""Keras 3: a ``model.fit`` callback that makes the model a population member.

Needs the extra: ``pip install 'pbtune[keras]'`` and a Keras backend (PyTorch works: when no
``KERAS_BACKEND`` is set and TensorFlow is absent, this module picks ``torch``).

At each epoch end the callback reports the monitored value of ``logs`` with a checkpoint (the
model's and the optimizer's variables, one ``.npz`` file), and when the population says so
assigns the donor's variables and the explored hyperparameters, and ``fit`` goes on.

Example::

    member = pbtune.Population(config).member(0)
    model.compile(optimizer=keras.optimizers.Adam(member.hparams["learning_rate"]), loss="mse")
    model.fit(x, y, validation_data=(xv, yv), epochs=20,
              callbacks=[PBTCallback(member, monitor="val_loss", attributes={"dropout": "drop.rate"})])
"""

from __future__ import annotations

import importlib.util
import os
import sys
from collections.abc import Callable, Mapping
from typing import Any

from pbtune.engine.trainable import Trainable
from pbtune.errors import InvalidConfigError, PBTuneError
from pbtune.integrations._core import Exploited, PBTDriver, require, warn_unapplied
from pbtune.member import MemberProtocol

__all__ = ["OPTIMIZER_ATTRIBUTES", "KerasTrainable", "PBTCallback", "load_variables", "save_variables"]

if ("keras" not in sys.modules and "KERAS_BACKEND" not in os.environ
        and importlib.util.find_spec("tensorflow") is None and importlib.util.find_spec("torch") is not None):
    os.environ["KERAS_BACKEND"] = "torch"  # Keras defaults to TensorFlow, which is not installed here
keras = require("keras", "keras", "pbtune.integrations.keras")
_WHERE = "keras.PBTCallback"

# hyperparameter name -> optimizer attribute (Keras 3 reads these at every update)
OPTIMIZER_ATTRIBUTES: dict[str, str] = {
    "lr": "learning_rate", "learning_rate": "learning_rate",
    "momentum": "momentum", "weight_decay": "weight_decay",
    "beta_1": "beta_1", "beta1": "beta_1", "beta_2": "beta_2", "beta2": "beta_2",
    "epsilon": "epsilon", "eps": "epsilon",
}


def _variables(model: Any) -> tuple[list[Any], list[Any]]:
    optimizer = model.optimizer
    if optimizer is None:
        raise PBTuneError(f"{_WHERE}: the model has no optimizer; compile it before fit")
    if not optimizer.built:
        optimizer.build(model.trainable_variables)
    return list(model.weights), list(optimizer.variables)


def save_variables(path: str, model: Any) -> None:
    """The model's and its optimizer's variables, in order, as one ``.npz`` file."""
    import numpy as np

    weights, slots = _variables(model)
    arrays = {f"w{i}": np.asarray(keras.ops.convert_to_numpy(v)) for i, v in enumerate(weights)}
    arrays.update({f"o{i}": np.asarray(keras.ops.convert_to_numpy(v)) for i, v in enumerate(slots)})
    savez: Any = np.savez  # (its stub takes the keyword dict for allow_pickle)
    with open(path, "wb") as handle:  # a handle: np.savez would append ".npz" to a path
        savez(handle, **arrays)


def load_variables(path: str, model: Any) -> None:
    """Assign what :func:`save_variables` wrote (possibly another member's) to ``model`` in place."""
    import numpy as np

    weights, slots = _variables(model)
    with np.load(path, allow_pickle=False) as data:
        saved_w = sorted((k for k in data.files if k.startswith("w")), key=lambda k: int(k[1:]))
        saved_o = sorted((k for k in data.files if k.startswith("o")), key=lambda k: int(k[1:]))
        if len(saved_w) != len(weights) or len(saved_o) != len(slots):
            raise PBTuneError(f"{_WHERE}: {path} has {len(saved_w)} weights and {len(saved_o)} optimizer variables;"
                              f" this model has {len(weights)} and {len(slots)}")
        for variable, key in zip([*weights, *slots], [*saved_w, *saved_o], strict=True):
            value = data[key]
            if tuple(variable.shape) != value.shape:
                raise PBTuneError(f"{_WHERE}: {path}: {variable.path} has shape {tuple(variable.shape)}, the"
                                  f" checkpoint {value.shape}")
            variable.assign(value)


class PBTCallback(keras.callbacks.Callback):  # type: ignore[misc,name-defined]
    """Reports at each epoch end of ``fit`` and exploits/explores without leaving it.

    Args:
        member: any member handle (``pbtune.Member``, ``PBTClient``).
        monitor: the key of the epoch's ``logs`` that is the score (``"val_loss"``).
        attributes: hyperparameter -> dotted path from the model (layer names work:
            ``{"dropout": "drop.rate"}`` finds ``model.get_layer("drop").rate``).
        optimizer_keys: hyperparameter -> optimizer attribute, added to
            :data:`OPTIMIZER_ATTRIBUTES`; ``None`` removes one.
        on_hparams: ``on_hparams(model, hparams)`` after every application, for the rest.
        finish: mark the member finished when ``fit`` ends.
        checkpoint_dir: where checkpoints are written before the member stores them.

    A learning-rate *schedule* cannot take a tuned learning rate: compile with a float.
    """

    def __init__(
        self,
        member: MemberProtocol,
        monitor: str = "val_loss",
        *,
        attributes: Mapping[str, str] | None = None,
        optimizer_keys: Mapping[str, str | None] | None = None,
        on_hparams: Callable[[Any, dict[str, Any]], None] | None = None,
        finish: bool = True,
        checkpoint_dir: str | None = None,
    ) -> None:
        super().__init__()
        self.driver = PBTDriver(member, monitor, where=_WHERE, checkpoint_dir=checkpoint_dir)
        self.member = member
        self.finish = finish
        self.rules = _Rules(optimizer_keys, attributes, on_hparams, _WHERE)

    @property
    def exploits(self) -> list[Exploited]:
        return self.driver.exploits

    def on_train_begin(self, logs: Mapping[str, Any] | None = None) -> None:
        path = self.driver.resume_path()
        if path is not None:
            load_variables(path, self.model)
        self.apply(self.member.hparams)

    def on_epoch_end(self, epoch: int, logs: Mapping[str, Any] | None = None) -> None:
        epochs = (self.params or {}).get("epochs")
        done = self.driver.report(dict(logs or {}), lambda path: save_variables(path, self.model), suffix=".npz",
                                  final=epochs is not None and epoch + 1 >= epochs)
        if done is not None:
            load_variables(done.path, self.model)
            self.apply(done.hparams)

    def on_train_end(self, logs: Mapping[str, Any] | None = None) -> None:
        if self.finish:
            self.member.finish()
        self.driver.close()

    def apply(self, hparams: Mapping[str, Any]) -> None:
        """Set the optimizer attributes and model attributes the hyperparameters map to."""
        self.rules.apply(self.model, hparams)


class _Rules:
    """Which optimizer and model attributes each hyperparameter sets; shared by callback and trainable."""

    def __init__(self, optimizer_keys: Mapping[str, str | None] | None, attributes: Mapping[str, str] | None,
                 on_hparams: Callable[[Any, dict[str, Any]], None] | None, where: str) -> None:
        keys: dict[str, str] = dict(OPTIMIZER_ATTRIBUTES)
        for name, key in dict(optimizer_keys or {}).items():
            if key is None:
                keys.pop(name, None)
            elif not isinstance(key, str) or not key:
                raise InvalidConfigError(f"optimizer_keys[{name!r}]", where, "an optimizer attribute or None", key)
            else:
                keys[name] = key
        for name, path in dict(attributes or {}).items():
            if not isinstance(path, str) or not path or path.startswith(".") or path.endswith("."):
                raise InvalidConfigError(f"attributes[{name!r}]", where, "a dotted path such as 'drop.rate'", path)
        if on_hparams is not None and not callable(on_hparams):
            raise InvalidConfigError("on_hparams", where, "None or a callable (model, hparams)", on_hparams)
        self.keys = keys
        self.attributes = dict(attributes or {})
        self.on_hparams = on_hparams
        self.where = where
        self._warned: set[str] = set()

    def apply(self, model: Any, hparams: Mapping[str, Any]) -> None:
        optimizer = model.optimizer
        applied: set[str] = set()
        for name, value in hparams.items():
            key = self.keys.get(name)
            if key is None:
                continue
            if key == "learning_rate":
                if isinstance(optimizer._learning_rate, keras.optimizers.schedules.LearningRateSchedule):
                    raise PBTuneError(f"{self.where}: hyperparameter {name!r} cannot replace the optimizer's"
                                      " learning-rate schedule; compile with a float learning rate")
                optimizer.learning_rate = float(value)
            elif not hasattr(optimizer, key):
                raise PBTuneError(f"{self.where}: hyperparameter {name!r} maps to the optimizer attribute {key!r},"
                                  f" which {type(optimizer).__name__} lacks; pass optimizer_keys={{{name!r}: None}}")
            else:
                setattr(optimizer, key, value)
            applied.add(name)
        for name, path in self.attributes.items():
            if name in hparams:
                target, last = _resolve(model, path)
                if (isinstance(target, keras.layers.Dropout) and last == "rate" and hparams[name] > 0
                        and not hasattr(target, "seed_generator")):
                    raise PBTuneError(f"{self.where}: Dropout layer {target.name!r} was built with rate 0, so Keras"
                                      " gave it no random generator and cannot drop out later; build it with a rate"
                                      " > 0")
                setattr(target, last, hparams[name])
                applied.add(name)
        if self.on_hparams is not None:
            self.on_hparams(model, dict(hparams))
        else:
            warn_unapplied(self.where, hparams, applied, self._warned)


class KerasTrainable(Trainable):
    """A :class:`pbtune.Trainable` around ``model.fit``, for ``pbtune.run`` and ``pbtune worker``.

    Subclass it and implement :meth:`build` (a compiled model) and :meth:`data` (``fit``'s
    keyword arguments: ``x``, ``y``, ``validation_data``, ``batch_size``...). Each :meth:`step`
    is ``epochs_per_step`` epochs of ``fit`` on the same model (Keras keeps the optimizer's
    state between calls) and returns the last epoch's logs: set the run's ``metric`` (and
    ``mode``) to the one that is the score, e.g. ``val_loss`` / ``min``. ``attributes`` and
    ``optimizer_keys`` work as in :class:`PBTCallback`.

    Example::

        class Digits(KerasTrainable):
            attributes = {"dropout": "drop.rate"}
            def build(self, hparams): return compiled_mlp(hparams)
            def data(self): return {"x": x, "y": y, "validation_data": (xv, yv), "batch_size": 64}
    """

    attributes: Mapping[str, str] = {}
    optimizer_keys: Mapping[str, str | None] = {}
    epochs_per_step: int = 1

    def build(self, hparams: Mapping[str, Any]) -> Any:
        """Return a new compiled Keras model for these hyperparameters."""
        raise NotImplementedError

    def data(self) -> Mapping[str, Any]:
        """Keyword arguments of ``model.fit`` besides ``epochs``."""
        raise NotImplementedError

    def on_hparams(self, model: Any, hparams: dict[str, Any]) -> None:
        """Apply hyperparameters no rule covers (default: nothing)."""

    def setup(self, hparams: Mapping[str, Any]) -> None:
        self.hparams = dict(hparams)
        self.model = self.build(self.hparams)
        custom = type(self).on_hparams is not KerasTrainable.on_hparams  # else unapplied names get a warning
        self._rules = _Rules(self.optimizer_keys, self.attributes, self.on_hparams if custom else None,
                             type(self).__name__)
        self._rules.apply(self.model, self.hparams)

    def step(self) -> Mapping[str, float]:
        kwargs = {"verbose": 0, **dict(self.data())}
        history = self.model.fit(epochs=self.epochs_per_step, **kwargs)
        return {key: float(values[-1]) for key, values in history.history.items() if values}

    def save(self, path: str) -> None:
        save_variables(path, self.model)

    def load(self, path: str) -> None:
        load_variables(path, self.model)
        self._rules.apply(self.model, self.hparams)  # the file's learning rate is the saver's

    def set_hparams(self, hparams: Mapping[str, Any]) -> None:
        self.hparams = dict(hparams)
        self._rules.apply(self.model, self.hparams)


def _resolve(model: Any, path: str) -> tuple[Any, str]:
    *parents, last = path.split(".")
    target = model
    for part in parents:
        if hasattr(target, part):
            target = getattr(target, part)
        elif hasattr(target, "get_layer"):
            try:
                target = target.get_layer(part)
            except ValueError as exc:
                raise PBTuneError(f"{_WHERE}: attribute path {path!r}: no attribute or layer {part!r}") from exc
        else:
            raise PBTuneError(f"{_WHERE}: attribute path {path!r}: no attribute or layer {part!r}")
    if not hasattr(target, last):
        raise PBTuneError(f"{_WHERE}: attribute path {path!r}: {type(target).__name__} has no {last!r}")
    return target, last
