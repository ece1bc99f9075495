"""Handles on processes forked without ``subprocess`` or ``multiprocessing``: the zygote forked
from the driver, and the workers the zygote forks (whose exits the zygote reports)."""

from __future__ import annotations

import os
import signal
import subprocess
import threading
import time

__all__ = ["ForkedProcess", "WorkerProcess", "worker_exited"]


worker_exited = threading.Event()  # set whenever a forked worker exits: the driver's loop wakes up


class WorkerProcess:
    """A worker forked by the zygote, with the few ``multiprocessing.Process`` methods the driver uses."""

    def __init__(self, pid: int) -> None:
        self.pid = pid
        self.exitcode: int | None = None
        self._exited = threading.Event()

    def is_alive(self) -> bool:
        return not self._exited.is_set()

    def join(self, timeout: float | None = None) -> None:
        self._exited.wait(timeout)

    def terminate(self) -> None:
        self._signal(signal.SIGTERM)

    def kill(self) -> None:
        self._signal(signal.SIGKILL)

    def _signal(self, signum: int) -> None:
        if self.is_alive():
            try:
                os.kill(self.pid, signum)
            except ProcessLookupError:
                pass

    def _set_exit(self, code: int) -> None:
        self.exitcode = code
        self._exited.set()
        worker_exited.set()


class ForkedProcess:
    """A forked child with the few ``subprocess.Popen`` methods the zygote handle uses."""

    def __init__(self, pid: int) -> None:
        self.pid = pid
        self.returncode: int | None = None
        self._lock = threading.Lock()

    def poll(self) -> int | None:
        with self._lock:
            if self.returncode is None:
                try:
                    pid, status = os.waitpid(self.pid, os.WNOHANG)
                except ChildProcessError:  # reaped elsewhere: it is gone
                    self.returncode = -signal.SIGKILL
                    return self.returncode
                if pid != 0:
                    self.returncode = os.waitstatus_to_exitcode(status)
            return self.returncode

    def wait(self, timeout: float | None = None) -> int:
        deadline = None if timeout is None else time.monotonic() + timeout
        delay = 0.001
        while (code := self.poll()) is None:
            if deadline is not None and time.monotonic() >= deadline:
                raise subprocess.TimeoutExpired(f"pid {self.pid}", timeout or 0.0)
            time.sleep(delay)
            delay = min(2 * delay, 0.05)
        return code

    def kill(self) -> None:
        if self.poll() is None:
            try:
                os.kill(self.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
