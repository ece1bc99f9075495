"""``pbtune server --tensorboard DIR``: the served run mirrored into TensorBoard while it trains.

The server has no driver loop to call monitors from (``pbtune run`` has), so a daemon thread
calls :class:`~pbtune.report.tensorboard.TensorBoardMonitor` every ``interval`` seconds on the
service's store; the monitor's own throttle keeps its reads to a small share of the time.
"""

from __future__ import annotations

import importlib.util
import logging
import threading

from pbtune.report.tensorboard import TensorBoardMonitor
from pbtune.server.service import PopulationService

__all__ = ["LiveTensorBoard", "require_tensorboardx"]

log = logging.getLogger(__name__)


def require_tensorboardx() -> None:
    """Fail at once (not in the writer thread) when tensorboardX is missing."""
    if importlib.util.find_spec("tensorboardX") is None:
        raise ModuleNotFoundError("--tensorboard needs tensorboardX: pip install 'pbtune[report]'",
                                  name="tensorboardX")


class LiveTensorBoard:
    """Writes the service's run to ``logdir/<run>/member-NNN`` until :meth:`stop`."""

    def __init__(self, service: PopulationService, logdir: str, *, interval: float = 1.0) -> None:
        require_tensorboardx()
        self.service = service
        self.logdir = logdir
        self.interval = interval
        self._monitor = TensorBoardMonitor(logdir, min_interval=interval)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True, name="pbtune-server-tensorboard")
        self._thread.start()

    def _loop(self) -> None:
        while not self._stop.wait(self.interval):
            self._update()

    def _update(self) -> None:
        config = self.service.config  # None until the first client brings the space
        if config is None:
            return
        try:
            self._monitor.update(self.service.store, config)
        except Exception as exc:  # a full disk must not take the server down: log and go on
            log.warning("TensorBoard logging to %s failed: %s", self.logdir, exc)

    def stop(self) -> None:
        """Write what is left, then close the event files."""
        self._stop.set()
        self._thread.join(timeout=30)
        try:
            if self.service.config is not None:
                self._monitor.close()
        except Exception as exc:
            log.warning("TensorBoard logging to %s failed: %s", self.logdir, exc)
