"""One background thread that performs the run's store writes and checkpoint saves, in order.

The training loop hands it closures and goes on training; I/O (SQL transactions, the
population checkpoint file) overlaps with the batched steps. Order is kept (a round's scores,
then its lineage events, then the checkpoint), so the checkpoint on disk is never newer than
the store.
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Callable

__all__ = ["BackgroundWriter"]


class BackgroundWriter:
    """FIFO executor on one thread; the first error is re-raised in the caller's thread.

    Example:
        >>> done = []
        >>> writer = BackgroundWriter()
        >>> writer.submit(lambda: done.append(1))
        >>> writer.close()
        >>> done
        [1]
    """

    def __init__(self, *, enabled: bool = True, name: str = "pbtune-vectorized-writer") -> None:
        self._enabled = enabled
        self._queue: queue.Queue[Callable[[], None] | None] = queue.Queue()
        self._error: BaseException | None = None
        self._thread: threading.Thread | None = None
        if enabled:
            self._thread = threading.Thread(target=self._work, name=name, daemon=True)
            self._thread.start()

    def _work(self) -> None:
        while True:
            task = self._queue.get()
            try:
                if task is None:
                    return
                if self._error is None:  # after a failure, later writes would be out of order: skip them
                    task()
            except BaseException as exc:  # noqa: BLE001 - handed to the caller's thread
                self._error = exc
            finally:
                self._queue.task_done()

    def _raise(self) -> None:
        if self._error is not None:
            error, self._error = self._error, None
            raise error

    def submit(self, task: Callable[[], None]) -> None:
        """Run ``task`` after every task submitted before it (now, when disabled)."""
        self._raise()
        if not self._enabled:
            task()
            return
        self._queue.put(task)

    def drain(self) -> None:
        """Wait until every submitted task ran; re-raise the first error."""
        if self._enabled:
            self._queue.join()
        self._raise()

    def close(self, *, raise_errors: bool = True) -> None:
        """Drain and stop the thread."""
        if self._thread is not None:
            self._queue.put(None)
            self._thread.join()
            self._thread = None
        if raise_errors:
            self._raise()
