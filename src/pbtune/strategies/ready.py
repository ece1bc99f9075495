"""When a member may exploit: every ``interval`` steps since its last ready check."""

from __future__ import annotations

from dataclasses import dataclass

from pbtune.types import MemberRecord
from pbtune.validation import check_int

__all__ = ["Ready"]


@dataclass(frozen=True)
class Ready:
    """A member is ready when ``step - last_ready_step >= interval`` and ``step >= burn_in``.

    Example:
        >>> from pbtune.types import MemberRecord, MemberState
        >>> m = MemberRecord("r", 0, MemberState.RUNNING, step=10, hparams={}, last_ready_step=0)
        >>> Ready(interval=10).is_ready(m)
        True
    """

    interval: int = 10
    burn_in: int = 0

    def __post_init__(self) -> None:
        check_int(self.interval, "interval", "ready", minimum=1)
        check_int(self.burn_in, "burn_in", "ready", minimum=0)

    def is_ready(self, member: MemberRecord) -> bool:
        return member.step >= self.burn_in and member.step - member.last_ready_step >= self.interval
