"""What a strategy decides. Values, not actions: the Member carries them out."""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["Continue", "Exploit", "Decision"]


@dataclass(frozen=True)
class Continue:
    """Keep training with the current weights and hyperparameters."""

    reason: str = ""


@dataclass(frozen=True)
class Exploit:
    """Copy the weights and hyperparameters of ``donor_id`` (at its checkpoint ``donor_checkpoint``)."""

    donor_id: int
    donor_checkpoint: str
    donor_step: int
    donor_score: float
    copy_hparams: bool = True  # False: take the donor's weights only (the paper's toy example)


Decision = Continue | Exploit
