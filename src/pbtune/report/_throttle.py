"""When a monitor may read the store again."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TypeVar

T = TypeVar("T")


class Throttle:
    """Reads at least ``min_interval`` seconds apart, and taking at most ``max_share`` of the time.

    The runner calls monitors about five times a second from its driver loop; reading a large
    run's scores takes seconds (64,000 scores: ~2 s on SQLite), so a fixed interval would let a
    monitor starve the loop that restarts dead workers.

    Example:
        >>> now = [0.0]
        >>> throttle = Throttle(1.0, max_share=0.1, clock=lambda: now[0])
        >>> def slow_read():
        ...     now[0] += 2.0  # the read took 2 s
        >>> throttle.run(slow_read)
        >>> now[0] += 17.0; throttle.due()   # 2 s of reading per 20 s at most
        False
        >>> now[0] += 1.0; throttle.due()
        True
    """

    def __init__(self, min_interval: float, *, max_share: float = 0.1,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.min_interval = min_interval
        self.max_share = max_share
        self._clock = clock
        self._next = -float("inf")

    def due(self) -> bool:
        return self._clock() >= self._next

    def run(self, read: Callable[[], T]) -> T:
        start = self._clock()
        try:
            return read()
        finally:
            end = self._clock()
            cost = end - start
            self._next = end + max(self.min_interval, cost / self.max_share - cost)
