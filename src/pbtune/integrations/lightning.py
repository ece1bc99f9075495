"""PyTorch Lightning: make any ``LightningModule`` + ``Trainer`` a population member.

Needs the extra: ``pip install 'pbtune[lightning]'``.

Two ways in:

* :class:`PBTCallback` in your own ``fit`` (one process per member, e.g. with ``PBTClient``
  against a server, or ``pbtune.Population(cfg).member(i)``): at each validation end it
  reports the monitored metric with a checkpoint (weights, optimizers, LR schedulers), and
  when the population says so loads the donor's state and applies the explored
  hyperparameters, without leaving ``fit``.
* :class:`LightningTrainable` for the process engine (``pbtune.run``) and ``pbtune worker``:
  each step is one short ``fit``; state carries over between steps.

Example::

    member = pbtune.Population(config).member(0)
    trainer = L.Trainer(max_epochs=20, callbacks=[PBTCallback(member, monitor="val_loss",
                                                              attributes={"dropout": "drop.p"})])
    trainer.fit(MyModule(**member.hparams), train_loader, val_loader)
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Mapping
from typing import Any

from pbtune.engine.trainable import Trainable
from pbtune.errors import InvalidConfigError, PBTuneError
from pbtune.integrations import _torch
from pbtune.integrations._core import Exploited, PBTDriver, numeric_metrics, require, warn_unapplied
from pbtune.member import MemberProtocol

__all__ = ["LightningTrainable", "PBTCallback"]


def _lightning() -> Any:
    try:
        return require("lightning.pytorch", "lightning", "pbtune.integrations.lightning")
    except ImportError:
        try:  # the standalone package, for projects that use `import pytorch_lightning`
            return require("pytorch_lightning", "lightning", "pbtune.integrations.lightning")
        except ImportError:
            pass
        raise


pl = _lightning()
_WHERE = "lightning.PBTCallback"


def _schedulers(trainer: Any) -> list[Any]:
    return [config.scheduler for config in trainer.lr_scheduler_configs]


def _scheduler_of(trainer: Any, optimizer: Any) -> Any:
    for scheduler in _schedulers(trainer):
        if getattr(scheduler, "optimizer", None) is optimizer:
            return scheduler
    return None


def _last_validation(trainer: Any) -> bool:
    """True at the validation after the last training batch of the fit (max_steps or max_epochs)."""
    if trainer.max_steps is not None and trainer.max_steps >= 0 and trainer.global_step >= trainer.max_steps:
        return True
    epochs = trainer.max_epochs
    last_batch = bool(getattr(trainer.fit_loop.epoch_loop.batch_progress, "is_last_batch", False))
    return epochs is not None and epochs >= 0 and trainer.current_epoch >= epochs - 1 and last_batch


class _Hparams:
    """Applies hyperparameters to a trainer's optimizers and a module's attributes."""

    def __init__(self, optimizer_keys: Mapping[str, str | None] | None, attributes: Mapping[str, str] | None,
                 on_hparams: Callable[[Any, dict[str, Any]], None] | None, where: str) -> None:
        self.keys, self.attributes = _torch.check_keys(optimizer_keys, attributes, where)
        if on_hparams is not None and not callable(on_hparams):
            raise InvalidConfigError("on_hparams", where, "None or a callable (module, hparams)", on_hparams)
        self.on_hparams = on_hparams
        self.where = where
        self._warned: set[str] = set()

    def apply(self, trainer: Any, module: Any, hparams: Mapping[str, Any]) -> None:
        applied: set[str] = set()
        for optimizer in trainer.optimizers:
            applied |= set(_torch.apply_optimizer_hparams(
                optimizer, hparams, self.keys, scheduler=_scheduler_of(trainer, optimizer), where=self.where))
        applied |= set(_torch.apply_module_attributes(module, hparams, self.attributes, where=self.where))
        if self.on_hparams is not None:
            self.on_hparams(module, dict(hparams))
        else:
            warn_unapplied(self.where, hparams, applied, self._warned)


class PBTCallback(pl.Callback):  # type: ignore[misc,name-defined]
    """Reports at each validation end and exploits/explores inside the running ``fit``.

    Args:
        member: any member handle (``pbtune.Member``, ``PBTClient``).
        monitor: the logged metric that is the score (the run's ``mode`` says its direction).
        attributes: hyperparameter -> dotted attribute of the module (``{"dropout": "drop.p"}``).
        optimizer_keys: hyperparameter -> param-group key, added to the defaults (``lr``,
            ``learning_rate`` -> ``lr``; ``momentum``; ``weight_decay``; ``beta1``/``beta2`` ->
            ``betas``; ``eps``); ``None`` removes a default.
        on_hparams: called as ``on_hparams(module, hparams)`` after every application, for
            hyperparameters no rule covers.
        finish: mark the member finished when ``fit`` ends normally.
        checkpoint_dir: where checkpoints are written before the member stores them.

    The member's step counts validations: each one is a PBT step (``ready.interval`` counts
    them). A member that already trained (another process, a restart) resumes from its last
    checkpoint with its hyperparameters when training starts.
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
        self.monitor = monitor
        self.finish = finish
        self._hparams = _Hparams(optimizer_keys, attributes, on_hparams, _WHERE)

    @property
    def exploits(self) -> list[Exploited]:
        """The exploits carried out so far in this process (donor, loaded path, new hparams)."""
        return self.driver.exploits

    def on_train_start(self, trainer: Any, pl_module: Any) -> None:
        if trainer.world_size > 1:  # every rank would report, and exploits would have to reach all ranks
            raise PBTuneError(f"{_WHERE}: one member trains on one device (world size {trainer.world_size}); run"
                              " one Trainer process per member instead of a distributed fit")
        path = self.driver.resume_path()
        if path is not None:
            self._load(trainer, pl_module, path)
        self._hparams.apply(trainer, pl_module, self.member.hparams)

    def on_validation_end(self, trainer: Any, pl_module: Any) -> None:
        if trainer.sanity_checking or trainer.state.fn != "fit":
            return
        done = self.driver.report(trainer.callback_metrics, lambda path: self._save(trainer, pl_module, path),
                                  final=_last_validation(trainer))
        if done is not None:
            self._load(trainer, pl_module, done.path)
            self._hparams.apply(trainer, pl_module, done.hparams)

    def on_train_end(self, trainer: Any, pl_module: Any) -> None:
        if self.finish and not trainer.interrupted:
            self.member.finish()
        self.driver.close()

    def _save(self, trainer: Any, pl_module: Any, path: str) -> None:
        _torch.save_state(path, pl_module, trainer.optimizers, _schedulers(trainer),
                          extra={"global_step": int(trainer.global_step)})

    def _load(self, trainer: Any, pl_module: Any, path: str) -> None:
        _torch.load_state(path, pl_module, trainer.optimizers, _schedulers(trainer), where=_WHERE)


class LightningTrainable(Trainable):
    """A :class:`pbtune.Trainable` around Lightning's ``fit``, for ``pbtune.run`` and ``pbtune worker``.

    Subclass it and implement :meth:`build` and :meth:`data`. Each :meth:`step` runs a fresh
    ``Trainer`` for ``epochs_per_step`` epochs on the same module, restoring the optimizers'
    and schedulers' state from the previous step (or from the loaded checkpoint, then applying
    the member's hyperparameters), and returns the trainer's logged metrics: set the run's
    ``metric`` (and ``mode``) to the one that is the score, e.g. ``val_loss`` / ``min``.

    Class attributes ``attributes`` and ``optimizer_keys`` work as in :class:`PBTCallback`;
    override :meth:`trainer_kwargs` for ``Trainer`` options (accelerator, precision...).

    Example::

        class Digits(LightningTrainable):
            attributes = {"dropout": "drop.p"}
            def build(self, hparams): return DigitsModule(**hparams)
            def data(self): return {"train_dataloaders": train_loader(), "val_dataloaders": val_loader()}
    """

    attributes: Mapping[str, str] = {}
    optimizer_keys: Mapping[str, str | None] = {}
    epochs_per_step: int = 1

    def build(self, hparams: Mapping[str, Any]) -> Any:
        """Return a new ``LightningModule`` for these hyperparameters."""
        raise NotImplementedError

    def data(self) -> Mapping[str, Any]:
        """Keyword arguments of ``Trainer.fit`` besides the model (dataloaders or ``datamodule``)."""
        raise NotImplementedError

    def trainer_kwargs(self) -> dict[str, Any]:
        return {}

    def on_hparams(self, module: Any, hparams: dict[str, Any]) -> None:
        """Apply hyperparameters no rule covers (default: nothing; a warning names them)."""

    # -- Trainable ---------------------------------------------------------------------------
    def setup(self, hparams: Mapping[str, Any]) -> None:
        self.hparams = dict(hparams)
        custom = type(self).on_hparams is not LightningTrainable.on_hparams  # else unapplied names get a warning
        self._rules = _Hparams(self.optimizer_keys, self.attributes, self.on_hparams if custom else None,
                               type(self).__name__)
        self.module = self.build(self.hparams)
        self._state: dict[str, list[Any]] | None = None  # optimizer/scheduler states between steps
        self.trainer: Any = None

    def step(self) -> Mapping[str, float]:
        kwargs = {"logger": False, "enable_checkpointing": False, "enable_progress_bar": False,
                  "enable_model_summary": False, "num_sanity_val_steps": 0, **self.trainer_kwargs()}
        callbacks = [_Carry(self), *kwargs.pop("callbacks", [])]
        self.trainer = pl.Trainer(max_epochs=self.epochs_per_step, callbacks=callbacks, **kwargs)
        self.trainer.fit(self.module, **dict(self.data()))
        metrics = numeric_metrics(self.trainer.callback_metrics)
        if not metrics:
            raise PBTuneError(f"{type(self).__name__}: fit logged no metrics; log the score with self.log(...)")
        return metrics

    def save(self, path: str) -> None:
        import torch

        state = self._state or {"optimizer_states": [], "lr_schedulers": []}
        torch.save({"format": _torch.FORMAT, "state_dict": self.module.state_dict(), **state}, path)

    def load(self, path: str) -> None:
        import torch

        data = torch.load(path, map_location="cpu", weights_only=True)
        if not isinstance(data, dict) or data.get("format") != _torch.FORMAT:
            raise PBTuneError(f"{type(self).__name__}: {path} is not a pbtune torch checkpoint")
        self.module.load_state_dict(data["state_dict"])
        self._state = {"optimizer_states": data["optimizer_states"], "lr_schedulers": data["lr_schedulers"]}

    def set_hparams(self, hparams: Mapping[str, Any]) -> None:
        self.hparams = dict(hparams)  # the optimizers get them when the next step's fit starts
        _torch.apply_module_attributes(self.module, self.hparams, self._rules.attributes, where=type(self).__name__)


class _Carry(pl.Callback):  # type: ignore[misc,name-defined]
    """Moves optimizer/scheduler state from one step's ``fit`` to the next one's."""

    def __init__(self, owner: LightningTrainable) -> None:
        self.owner = owner

    def on_train_start(self, trainer: Any, pl_module: Any) -> None:
        state = self.owner._state
        if state is not None and state["optimizer_states"]:
            schedulers = _schedulers(trainer)
            where = type(self.owner).__name__
            for kind, saved, live in (("optimizers", state["optimizer_states"], trainer.optimizers),
                                      ("LR schedulers", state["lr_schedulers"], schedulers)):
                if len(saved) != len(live):
                    raise PBTuneError(f"{where}: the state has {len(saved)} {kind}, configure_optimizers made"
                                      f" {len(live)}")
            for optimizer, saved in zip(trainer.optimizers, state["optimizer_states"], strict=True):
                optimizer.load_state_dict(saved)
            for scheduler, saved in zip(schedulers, state["lr_schedulers"], strict=True):
                scheduler.load_state_dict(saved)
        self.owner._rules.apply(trainer, pl_module, self.owner.hparams)

    def on_train_end(self, trainer: Any, pl_module: Any) -> None:
        self.owner._state = {
            "optimizer_states": [copy.deepcopy(o.state_dict()) for o in trainer.optimizers],
            "lr_schedulers": [copy.deepcopy(s.state_dict()) for s in _schedulers(trainer)],
        }
