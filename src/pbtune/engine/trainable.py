"""The Trainable class API: subclass it and let a runner drive the PBT loop."""

from __future__ import annotations

import abc
import hashlib
from collections.abc import Mapping
from typing import Any

__all__ = ["Trainable", "member_seed"]


def member_seed(run_seed: int, member_id: int, step: int) -> int:
    """The seed of ``member_id``'s trainable when it starts training at ``step`` (a 63-bit int).

    Deterministic (a resumed member gets the seed it had), different for every member and for
    every exploit (the copy starts a new data order at the exploit's step).
    """
    digest = hashlib.sha256(f"pbtune.member:{run_seed}:{member_id}:{step}".encode()).digest()
    return int.from_bytes(digest[:8], "little") & (2**63 - 1)


class Trainable(abc.ABC):
    """One member's model. The runner calls ``setup``, then ``step`` repeatedly, ``save`` at
    checkpoints, and ``load`` after an exploit or when it resumes the member on another worker.

    Constructor keyword arguments come from the config's ``trainable_args``.

    Before ``setup`` and before each ``load``, the runner sets ``member_id`` and ``seed``: a
    per-member seed (from the run's seed, the member and the step it starts from) for initial
    weights and data order. After an exploit the copy gets a new seed, so seed your data order
    from ``self.seed`` in ``load`` (do not restore the donor's generator state) and the copy
    draws other minibatches than its donor.

    Example:
        >>> class Quadratic(Trainable):
        ...     def setup(self, hparams):
        ...         self.x, self.lr = 5.0, hparams["lr"]
        ...     def step(self):
        ...         self.x -= self.lr * 2 * self.x
        ...         return {"score": -self.x ** 2}
        ...     def save(self, path):
        ...         open(path, "w").write(repr(self.x))
        ...     def load(self, path):
        ...         self.x = float(open(path).read())
        >>> t = Quadratic(); t.setup({"lr": 0.1}); t.step()["score"] < 0
        True
    """

    member_id: int | None = None  # set by the runner
    seed: int | None = None  # set by the runner: per member, new after every exploit

    def __init__(self, **kwargs: Any) -> None:
        self.args = kwargs

    @abc.abstractmethod
    def setup(self, hparams: Mapping[str, Any]) -> None:
        """Build the model for these hyperparameters."""

    @abc.abstractmethod
    def step(self) -> Mapping[str, float]:
        """Train one step and return metrics; the config's ``metric`` key is the score."""

    @abc.abstractmethod
    def save(self, path: str) -> None:
        """Write everything needed to resume (weights, optimizer state) to the file ``path``."""

    @abc.abstractmethod
    def load(self, path: str) -> None:
        """Restore from a file written by :meth:`save` (possibly another member's).

        Keep the hyperparameters given to ``setup``: e.g. torch's ``optimizer.load_state_dict``
        restores the saver's lr, so re-apply your own after loading it.
        """

    def set_hparams(self, hparams: Mapping[str, Any]) -> None:
        """Apply new hyperparameters in place (e.g. set the optimizer's lr).

        Optional: when a subclass does not override it, the runner rebuilds the trainable with
        ``setup(new_hparams)`` and then ``load``\\s the checkpoint.
        """
        raise NotImplementedError

    @classmethod
    def applies_hparams_in_place(cls) -> bool:
        return cls.set_hparams is not Trainable.set_hparams
