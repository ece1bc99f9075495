"""``pbtune.run``: the local process engine with the live progress view.

The engine knows nothing of the terminal; this function (like the CLI) picks the display and
hands it in.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from pbtune.config import RunConfig
from pbtune.engine.local import Monitor
from pbtune.engine.local import run as run_local
from pbtune.engine.trainable import Trainable
from pbtune.results import RunResult

__all__ = ["run", "progress_display"]


def progress_display(progress: bool | str) -> Monitor | None:
    """``True``: a live table and progress bar (rich); ``"quiet"``: a plain line every 10 s; ``False``: none."""
    if not progress:
        return None
    from pbtune.report.live import LiveDisplay

    return LiveDisplay(quiet=progress == "quiet")


def run(
    trainable: type[Trainable] | str | None = None,
    config: RunConfig | None = None,
    *,
    progress: bool | str = True,
    max_restarts: int | None = None,
    monitors: Sequence[Monitor] = (),
    initial: Sequence[Mapping[str, Any]] = (),
    extend_budget: bool = False,
    retry_failed: bool = False,
    **settings: Any,
) -> RunResult:
    """Train a population with PBT on ``workers`` local processes and return the best member.

    Args:
        trainable: a :class:`Trainable` subclass (importable by module, for the worker
            processes) or ``"module:Class"``; defaults to ``config.trainable``.
        config: a :class:`RunConfig`; or pass its fields as keywords.
        progress: ``True``: a live table of members and a progress bar with ETA (rich);
            ``"quiet"``: one plain progress line every 10 s (CI logs); ``False``: nothing.
        max_restarts: worker processes restarted after they die (default ``3 * workers``).
        monitors: objects with ``update(store, config)`` and ``close()``, called about five
            times a second while the run goes on (live TensorBoard, dashboards).
        initial: first hyperparameters of members 0, 1, ...; the rest are sampled.
        extend_budget: the run exists (maybe finished) with a smaller budget: train it on to
            this one. Without it, a run name given another config is an error
            (:class:`~pbtune.errors.ConfigMismatchError`), never a silent mix or an old result.
        retry_failed: failed members resume from their last checkpoint.

    Example::

        result = pbtune.run(MyTrainable, name="exp", space={"lr": Float(1e-4, 1e-1, log=True)},
                            population=8, workers=2, budget=100, ready={"interval": 10})
        print(result.best.score, result.checkpoint_path, result.schedule)
    """
    return run_local(
        trainable, config, display=progress_display(progress), max_restarts=max_restarts, monitors=monitors,
        initial=initial, extend_budget=extend_budget, retry_failed=retry_failed, **settings,
    )
