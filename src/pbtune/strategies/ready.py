"""When a member may exploit: every ``interval`` steps since its last ready check."""

from __future__ import annotations

from dataclasses import dataclass

from pbtune.errors import InvalidConfigError
from pbtune.types import MemberRecord

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
        if isinstance(self.interval, bool) or not isinstance(self.interval, int) or self.interval < 1:
            raise InvalidConfigError("interval", "ready", "an integer >= 1", self.interval)
        if isinstance(self.burn_in, bool) or not isinstance(self.burn_in, int) or self.burn_in < 0:
            raise InvalidConfigError("burn_in", "ready", "an integer >= 0", self.burn_in)

    def is_ready(self, member: MemberRecord) -> bool:
        return member.step >= self.burn_in and member.step - member.last_ready_step >= self.interval
