"""What every framework callback shares: lazy imports, and one PBT decision at a report point.

The framework modules only say *how* to save, load and apply hyperparameters; the order of
Algorithm 1 (report with a checkpoint, ask, copy the donor, perturb, load, apply) lives here
once, so the three callbacks cannot drift apart.
"""

from __future__ import annotations

import importlib
import logging
import math
import os
import shutil
import tempfile
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from pbtune.errors import InvalidConfigError, PBTuneError
from pbtune.member import Donor, MemberProtocol

__all__ = ["Exploited", "PBTDriver", "require", "check_member", "numeric_metrics", "warn_unapplied"]

log = logging.getLogger("pbtune.integrations")


def require(module: str, extra: str, what: str) -> Any:
    """Import ``module`` or raise an ImportError that names the pbtune extra to install."""
    try:
        return importlib.import_module(module)
    except ImportError as exc:
        raise ImportError(f"{what} needs the `{module}` package: pip install 'pbtune[{extra}]'") from exc


def check_member(member: Any, where: str) -> MemberProtocol:
    """Fail at construction, not at the first validation, when ``member`` is not a member handle."""
    if not isinstance(member, MemberProtocol):
        raise InvalidConfigError("member", where, "a member handle (pbtune.Member or pbtune.PBTClient)",
                                 type(member).__name__)
    return member


def numeric_metrics(metrics: Mapping[str, Any]) -> dict[str, float]:
    """The finite-or-not float values of a framework's metric dict (tensors and numpy scalars too)."""
    out: dict[str, float] = {}
    for key, value in metrics.items():
        if isinstance(value, bool):
            continue
        try:
            out[str(key)] = float(value)
        except (TypeError, ValueError, RuntimeError):  # RuntimeError: a tensor with more than one value
            continue
    return out


def warn_unapplied(where: str, hparams: Mapping[str, Any], applied: set[str], warned: set[str]) -> None:
    """Log once per name the hyperparameters no rule applied: after an exploit they keep the
    donor's effect only if the user's own code reads them (``on_hparams``)."""
    for name in sorted(set(hparams) - applied - warned):
        warned.add(name)
        log.warning("%s: hyperparameter %r is applied by no rule (optimizer key, attribute); pass on_hparams= to "
                    "apply it after exploits, or it keeps the value the model was built with", where, name)


@dataclass(frozen=True)
class Exploited:
    """An exploit that happened: load ``path`` (the donor's copy), then train with ``hparams``."""

    donor: Donor
    path: str
    hparams: dict[str, Any]


class PBTDriver:
    """One member's report points: report with a checkpoint, then exploit and explore if told.

    Args:
        member: any member handle (in-process :class:`pbtune.Member`, ``PBTClient``).
        metric: the key of the framework's metrics that is the score.
        where: the callback's name, for error messages.
        checkpoint_dir: where checkpoints are written before the member stores them (a
            temporary folder by default; each file is deleted once reported).
    """

    def __init__(self, member: MemberProtocol, metric: str, *, where: str, checkpoint_dir: str | None = None) -> None:
        if not isinstance(metric, str) or not metric:
            raise InvalidConfigError("metric", where, "a non-empty string", metric)
        self.member = check_member(member, where)
        self.metric = metric
        self.where = where
        self._own_dir = checkpoint_dir is None
        self.checkpoint_dir = checkpoint_dir or tempfile.mkdtemp(prefix="pbtune-integration-")
        self.reports = 0
        self.exploits: list[Exploited] = []

    def score(self, metrics: Mapping[str, Any]) -> float:
        if self.metric not in metrics:
            raise PBTuneError(
                f"{self.where}: the metric {self.metric!r} is not among the logged metrics {sorted(metrics)}; "
                f"log it (e.g. on the validation set) or pass metric= one of those"
            )
        value = float(metrics[self.metric])
        if math.isnan(value):
            raise PBTuneError(f"{self.where}: the metric {self.metric!r} is NaN at report {self.reports + 1}")
        return value

    def resume_path(self) -> str | None:
        """The member's latest checkpoint when it already trained (another process, a restart)."""
        return self.member.parameters_path() if self.member.step > 0 else None

    def report(self, metrics: Mapping[str, Any], save: Callable[[str], None], *, suffix: str = ".pt",
               final: bool = False) -> Exploited | None:
        """Save a checkpoint with ``save(path)``, report it, and carry out an exploit if the strategy says so.

        Returns what to load and apply, or None to train on unchanged. The step is the member's
        last step + 1, so a member resumed in another process keeps counting. ``final``: the
        training ends after this report, so no decision is made (as the worker loop does at
        the budget: a copy nobody trains would only replace the member's model).
        """
        score = self.score(metrics)
        os.makedirs(self.checkpoint_dir, exist_ok=True)
        step = self.member.step + 1
        path = os.path.join(self.checkpoint_dir, f"member-{self.member.member_id}-step-{step}{suffix}")
        save(path)
        try:
            self.member.report(step, score, checkpoint=path, metrics=numeric_metrics(metrics))
        finally:  # the member copied it into the checkpoint store
            _remove(path)
        self.reports += 1
        if final or not self.member.should_exploit():
            return None
        donor = self.member.exploit()
        if donor is None:  # the donor's checkpoint went away or the member changed: train on
            return None
        hparams = self.member.explore()
        loaded = self.member.parameters_path()
        if loaded is None:
            raise PBTuneError(f"{self.where}: member {self.member.member_id} exploited member {donor.member_id}"
                              " but has no checkpoint to load")
        done = Exploited(donor, loaded, hparams)
        self.exploits.append(done)
        return done

    def close(self) -> None:
        if self._own_dir:
            shutil.rmtree(self.checkpoint_dir, ignore_errors=True)


def _remove(path: str) -> None:
    if os.path.isdir(path):
        shutil.rmtree(path, ignore_errors=True)
    elif os.path.exists(path):
        os.remove(path)
