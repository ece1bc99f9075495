"""Hugging Face Transformers: PBT inside ``Trainer.train`` and a ``hyperparameter_search``-like helper.

Needs the extra: ``pip install 'pbtune[transformers]'``.

* :class:`PBTCallback`: a ``TrainerCallback`` that, at each evaluation, reports the metric with a
  checkpoint (model, optimizer, LR scheduler), and when the population says so loads the
  donor's state and applies the explored hyperparameters to the optimizer, the scheduler and
  ``TrainingArguments`` (learning rate, weight decay, Adam betas/epsilon, warmup, grad norm).
* :func:`search`: runs a population of ``Trainer`` copies (one model per member from
  ``model_init``) in this process, taking turns at each evaluation, and returns a ``BestRun``.

Example::

    trainer = Trainer(model_init=lambda: BertForSequenceClassification(config), args=args,
                      train_dataset=train, eval_dataset=val)
    best = search(trainer, {"learning_rate": Float(1e-5, 1e-3, log=True)}, population=4)
    print(best.objective, best.hyperparameters, best.run_summary.schedule)
"""

from __future__ import annotations

import copy
import dataclasses
import functools
import logging
import math
import os
import threading
import traceback
from collections.abc import Callable, Mapping
from typing import Any

from pbtune.errors import InvalidConfigError, PBTuneError
from pbtune.integrations import _torch
from pbtune.integrations._core import Exploited, PBTDriver, require, warn_unapplied
from pbtune.member import MemberProtocol

__all__ = ["PBTCallback", "search"]

transformers = require("transformers", "transformers", "pbtune.integrations.transformers")
log = logging.getLogger(__name__)
_WHERE = "transformers.PBTCallback"

# TrainingArguments fields that the running loop reads again after it started (others, such as
# batch sizes, only act when a Trainer is built: they are set, with a warning).
LIVE_ARGS = frozenset({"learning_rate", "weight_decay", "adam_beta1", "adam_beta2", "adam_epsilon", "warmup_steps",
                       "warmup_ratio", "max_grad_norm"})


def _set_warmup(scheduler: Any, steps: int) -> bool:
    """Give Transformers' warmup schedules (``functools.partial`` lambdas) ``steps`` warmup steps."""
    inner = _torch.unwrap_scheduler(scheduler)
    lambdas = getattr(inner, "lr_lambdas", None)
    if not lambdas or not all(isinstance(f, functools.partial) and "num_warmup_steps" in f.keywords for f in lambdas):
        return False
    inner.lr_lambdas = [functools.partial(f.func, *f.args, **{**f.keywords, "num_warmup_steps": steps})
                        for f in lambdas]
    for index, group in enumerate(inner.optimizer.param_groups):
        group["lr"] = inner.base_lrs[index] * inner.lr_lambdas[index](inner.last_epoch)
    inner._last_lr = [group["lr"] for group in inner.optimizer.param_groups]
    return True


class PBTCallback(transformers.TrainerCallback):  # type: ignore[misc,name-defined]
    """Reports at each evaluation during ``train`` and exploits/explores without leaving it.

    Args:
        member: any member handle (``pbtune.Member``, ``PBTClient``).
        metric: the evaluation metric that is the score (``"eval_loss"``; the ``eval_`` prefix
            may be left out). The run's ``mode`` says its direction.
        attributes: hyperparameter -> dotted attribute of the model (``{"dropout": "dropout.p"}``).
        optimizer_keys: hyperparameter -> param-group key, added to the defaults
            (``learning_rate``/``lr`` -> ``lr``, ``weight_decay``, ``adam_beta1``/``adam_beta2`` ->
            ``betas``, ``adam_epsilon`` -> ``eps``); ``None`` removes one.
        on_hparams: ``on_hparams(model, hparams)`` after every application, for the rest.
        finish: mark the member finished when ``train`` ends.
        checkpoint_dir: where checkpoints are written before the member stores them.

    With Transformers' LR schedules ``learning_rate`` is the schedule's peak: the current lr
    keeps the schedule's factor at the current step. Weight decay goes to the param groups
    that hold matrices (Transformers keeps biases and norms in a no-decay group).
    """

    def __init__(
        self,
        member: MemberProtocol,
        metric: str = "eval_loss",
        *,
        attributes: Mapping[str, str] | None = None,
        optimizer_keys: Mapping[str, str | None] | None = None,
        on_hparams: Callable[[Any, dict[str, Any]], None] | None = None,
        finish: bool = True,
        checkpoint_dir: str | None = None,
    ) -> None:
        if on_hparams is not None and not callable(on_hparams):
            raise InvalidConfigError("on_hparams", _WHERE, "None or a callable (model, hparams)", on_hparams)
        self.driver = PBTDriver(member, metric, where=_WHERE, checkpoint_dir=checkpoint_dir)
        self.member = member
        self.finish = finish
        self.on_hparams = on_hparams
        self.keys, self.attributes = _torch.check_keys(optimizer_keys, attributes, _WHERE)
        self._training = False
        self._warned: set[str] = set()

    @property
    def exploits(self) -> list[Exploited]:
        """The exploits carried out so far in this process (donor, loaded path, new hparams)."""
        return self.driver.exploits

    def on_train_begin(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        if args.world_size > 1:  # every rank would report, and exploits would have to reach all ranks
            raise PBTuneError(f"{_WHERE}: one member trains in one process (world size {args.world_size}); run one"
                              " Trainer per member instead of a distributed one")
        self._training = True
        model, optimizer, scheduler = kwargs["model"], kwargs.get("optimizer"), kwargs.get("lr_scheduler")
        path = self.driver.resume_path()
        if path is not None:
            self._load(path, model, optimizer, scheduler)
        self._apply(args, state, self.member.hparams, model, optimizer, scheduler)

    def on_evaluate(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        optimizer = kwargs.get("optimizer")
        if not self._training or optimizer is None:  # trainer.evaluate() outside train(): not a PBT step
            return
        metrics = dict(kwargs.get("metrics") or {})
        if self.driver.metric not in metrics and f"eval_{self.driver.metric}" in metrics:
            self.driver.metric = f"eval_{self.driver.metric}"
        model, scheduler = kwargs["model"], kwargs.get("lr_scheduler")
        done = self.driver.report(
            metrics, lambda path: _torch.save_state(path, model, [optimizer], _present(scheduler),
                                                    extra={"global_step": int(state.global_step)}),
            final=bool(state.max_steps) and state.global_step >= state.max_steps)
        if done is not None:
            self._load(done.path, model, optimizer, scheduler)
            self._apply(args, state, done.hparams, model, optimizer, scheduler)

    def on_train_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        self._training = False
        if self.finish:
            self.member.finish()
        self.driver.close()

    def _load(self, path: str, model: Any, optimizer: Any, scheduler: Any) -> None:
        _torch.load_state(path, model, [optimizer], _present(scheduler), where=_WHERE)

    def _apply(self, args: Any, state: Any, hparams: Mapping[str, Any], model: Any, optimizer: Any,
               scheduler: Any) -> None:
        applied: set[str] = set()
        for name, value in hparams.items():
            if hasattr(args, name) and not callable(getattr(args, name)):
                setattr(args, name, value)
                if name in LIVE_ARGS:
                    applied.add(name)
                elif name not in self._warned:
                    self._warned.add(name)
                    log.warning("%s: TrainingArguments.%s changes only when a Trainer is built, not during train()",
                                _WHERE, name)
        if scheduler is not None and ("warmup_steps" in hparams or "warmup_ratio" in hparams):
            total = int(state.max_steps) if getattr(state, "max_steps", 0) else 0
            if not _set_warmup(scheduler, args.get_warmup_steps(total)):
                raise PBTuneError(f"{_WHERE}: cannot change the warmup of {type(scheduler).__name__} during"
                                  " training (only Transformers' warmup schedules)")
        if optimizer is not None:
            applied |= set(_torch.apply_optimizer_hparams(optimizer, hparams, self.keys, scheduler=scheduler,
                                                          where=_WHERE))
        applied |= set(_torch.apply_module_attributes(model, hparams, self.attributes, where=_WHERE))
        if self.on_hparams is not None:
            self.on_hparams(model, dict(hparams))
        else:
            warn_unapplied(_WHERE, hparams, applied | self._warned, self._warned)


def _present(scheduler: Any) -> list[Any]:
    return [] if scheduler is None else [scheduler]


# -- search --------------------------------------------------------------------------------------
class _Turns:
    """Members train one at a time, in member order, handing over at each evaluation."""

    def __init__(self, ids: list[int]) -> None:
        self._order = list(ids)
        self._index = 0
        self._cond = threading.Condition()

    def _mine(self, member_id: int) -> bool:
        return bool(self._order) and self._order[self._index] == member_id

    def wait(self, member_id: int) -> None:
        with self._cond:
            self._cond.wait_for(lambda: self._mine(member_id))

    def next(self, member_id: int) -> None:
        with self._cond:
            self._index = (self._order.index(member_id) + 1) % len(self._order)
            self._cond.notify_all()
            self._cond.wait_for(lambda: self._mine(member_id))

    def leave(self, member_id: int) -> None:
        with self._cond:
            index = self._order.index(member_id)
            self._order.remove(member_id)
            self._index = index % len(self._order) if self._order else 0
            self._cond.notify_all()


class _HandOver(transformers.TrainerCallback):  # type: ignore[misc,name-defined]
    def __init__(self, turns: _Turns, member_id: int, pbt: PBTCallback) -> None:
        self.turns, self.member_id, self.pbt = turns, member_id, pbt

    def on_evaluate(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        if self.pbt._training:
            self.turns.next(self.member_id)


def _evaluations(trainer: Any) -> int:
    """About how many evaluations one member's ``train()`` makes (the run's budget, for progress)."""
    args = trainer.args
    try:
        per_epoch = math.ceil(len(trainer.train_dataset) / (args.per_device_train_batch_size
                                                            * args.gradient_accumulation_steps))
    except TypeError:  # an iterable dataset: no length
        per_epoch = 0
    steps = args.max_steps if args.max_steps > 0 else int(math.ceil(args.num_train_epochs * per_epoch))
    strategy = str(getattr(args.eval_strategy, "value", args.eval_strategy))
    if strategy == "epoch":
        return max(1, math.ceil(steps / per_epoch) if per_epoch else int(args.num_train_epochs))
    if strategy == "steps":
        every = args.eval_steps if args.eval_steps >= 1 else max(1, math.ceil(steps * args.eval_steps))
        return max(1, steps // int(every))
    raise InvalidConfigError("eval_strategy", "TrainingArguments", "'steps' or 'epoch' (PBT decides at evaluations)",
                             strategy)


def _member_trainer(trainer: Any, hparams: Mapping[str, Any], member_id: int, callbacks: list[Any]) -> Any:
    fields = {f.name for f in dataclasses.fields(trainer.args)}
    overrides = {k: v for k, v in hparams.items() if k in fields}
    args = dataclasses.replace(trainer.args, output_dir=os.path.join(trainer.args.output_dir,
                                                                     f"pbtune-member-{member_id}"), **overrides)
    defaults = (transformers.DefaultFlowCallback, transformers.PrinterCallback, transformers.ProgressCallback)
    reporting = tuple(transformers.integrations.get_reporting_integration_callbacks(args.report_to))
    own = [copy.deepcopy(cb) for cb in trainer.callback_handler.callbacks
           if not isinstance(cb, defaults + reporting)]
    kwargs: dict[str, Any] = dict(
        model=trainer.call_model_init(dict(hparams)), args=args, data_collator=trainer.data_collator,
        train_dataset=trainer.train_dataset, eval_dataset=trainer.eval_dataset,
        processing_class=trainer.processing_class, compute_metrics=trainer.compute_metrics,
        callbacks=[*own, *callbacks],
        preprocess_logits_for_metrics=trainer.preprocess_logits_for_metrics,
    )
    if getattr(trainer, "compute_loss_func", None) is not None:
        kwargs["compute_loss_func"] = trainer.compute_loss_func
    if getattr(trainer, "optimizer_cls_and_kwargs", None) is not None:
        kwargs["optimizer_cls_and_kwargs"] = trainer.optimizer_cls_and_kwargs
    return type(trainer)(**kwargs)


def search(
    trainer: Any,
    space: Any,
    *,
    population: int = 4,
    metric: str = "eval_loss",
    mode: str = "min",
    name: str = "hf-pbt",
    storage: str | None = None,
    checkpoints: str | None = None,
    ready_interval: int = 1,
    exploit: Any = "truncation",
    explore: Any = "perturb_or_resample",
    seed: int = 0,
    attributes: Mapping[str, str] | None = None,
    optimizer_keys: Mapping[str, str | None] | None = None,
    load_best: bool = True,
) -> Any:
    """Population Based Training of a ``Trainer``, the way ``trainer.hyperparameter_search`` is used.

    Each member is a copy of ``trainer`` (same arguments, data, metrics and own callbacks) with
    a model from its ``model_init`` and the member's hyperparameters in ``TrainingArguments``.
    Members train in this process one at a time, handing over at each evaluation, so every
    decision sees the others' latest scores; all members' models are in memory together.

    Args:
        trainer: a ``Trainer`` built with ``model_init`` and ``eval_strategy`` ``"steps"`` or ``"epoch"``.
        space: hyperparameter domains (``{"learning_rate": Float(1e-5, 1e-3, log=True)}`` or config form).
        population: number of members.
        metric / mode: the evaluation metric that is the score and its direction.
        name / storage / checkpoints: the run in the population store (default: under
            ``<output_dir>/pbtune``); an existing run of that name is resumed.
        ready_interval: evaluations between two PBT decisions of a member.
        exploit / explore / seed: strategies and seed, as in :class:`pbtune.RunConfig`.
        attributes / optimizer_keys: as in :class:`PBTCallback`.
        load_best: load the best member's final weights into ``trainer.model``.

    Returns:
        ``transformers.trainer_utils.BestRun``: ``run_id`` (the member id), ``objective`` (its
        last score), ``hyperparameters`` (its final ones) and ``run_summary`` (a
        :class:`pbtune.RunResult` with the schedule that got there and the checkpoint path).

    Raises:
        InvalidConfigError: no ``model_init``, a fixed optimizer, or no periodic evaluation.
        PBTuneError: every member failed (the first traceback is in the message).
    """
    from pbtune.config import RunConfig
    from pbtune.engine.local import summarize
    from pbtune.member import Member, Population
    from pbtune.strategies import Ready

    if getattr(trainer, "model_init", None) is None:
        raise InvalidConfigError("model_init", "search", "set: Trainer(model_init=...) builds each member's model",
                                 None)
    if trainer.optimizer is not None:
        raise InvalidConfigError("optimizers", "search", "unset (each member needs its own optimizer; use"
                                 " optimizer_cls_and_kwargs)", type(trainer.optimizer).__name__)
    root = os.path.join(trainer.args.output_dir, "pbtune")
    config = RunConfig(
        name=name, space=space, population=population, budget=_evaluations(trainer), mode=mode, metric=metric,
        ready=Ready(interval=ready_interval), exploit=exploit, explore=explore, seed=seed,
        storage=storage or f"sqlite:///{os.path.abspath(root)}/pbtune.db",
        checkpoints=checkpoints or os.path.join(root, "checkpoints"),
    )
    if config.storage.startswith("sqlite:///"):
        os.makedirs(os.path.dirname(config.storage[len("sqlite:///"):]) or ".", exist_ok=True)
    pbt = Population(config)
    pending = [m.member_id for m in pbt.members() if not m.state.is_final]
    turns = _Turns(pending)
    errors: dict[int, str] = {}

    def train(member_id: int) -> None:
        turns.wait(member_id)
        member: Member = pbt.member(member_id)
        try:
            callback = PBTCallback(member, metric, attributes=attributes, optimizer_keys=optimizer_keys)
            worker = _member_trainer(trainer, member.hparams, member_id,
                                     [callback, _HandOver(turns, member_id, callback)])
            worker.train()
        except Exception:  # one member's failure is recorded; the others go on
            errors[member_id] = traceback.format_exc()
            member.fail(errors[member_id])
        finally:
            turns.leave(member_id)

    threads = [threading.Thread(target=train, args=(i,), name=f"pbtune-member-{i}", daemon=True) for i in pending]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    if errors and len(errors) == len(pending):
        first = min(errors)
        raise PBTuneError(f"search: every member failed; member {first}:\n{errors[first]}")
    for member_id, error in sorted(errors.items()):
        log.warning("search: member %d failed:\n%s", member_id, error)
    result = summarize(config, pbt.store, pbt.checkpoints)
    if load_best and result.checkpoint_path is not None:
        import torch

        state = torch.load(result.checkpoint_path, map_location="cpu", weights_only=True)
        trainer.model.load_state_dict(state["state_dict"])
    from transformers.trainer_utils import BestRun

    return BestRun(str(result.best.member_id), float(result.best.score or math.nan), dict(result.best.hparams),
                   result)
