"""A live terminal view of a running population (rich), usable as a :func:`pbtune.run` monitor.

One table row per member (step, score, hyperparameters, last lineage event; the best is
starred) above an overall progress bar with the time left. ``quiet=True`` prints one plain line
every ``log_every`` seconds instead, for CI logs.

Example::

    pbtune.run(MyTrainable, config=cfg, progress=False, monitors=[LiveDisplay()])
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Any

from pbtune.config import RunConfig, is_unbounded
from pbtune.ranking import best_member, ranked
from pbtune.store.base import PopulationStore
from pbtune.types import EventRecord, MemberRecord, MemberState

__all__ = ["LiveDisplay", "progress_line"]

_NOTABLE = ("exploit", "explore", "resume", "fail")


def _fmt_value(value: Any) -> str:
    return f"{value:.4g}" if isinstance(value, float) else str(value)


def _fmt_hparams(hparams: Any) -> str:
    return ", ".join(f"{k}={_fmt_value(v)}" for k, v in dict(hparams).items())


def _done_steps(members: Sequence[MemberRecord], budget: int) -> int:
    # a failed member's remaining steps were not done: the bar must not reach 100% on failures
    if is_unbounded(budget):
        return sum(m.step for m in members)
    return sum(budget if m.state is MemberState.FINISHED else min(m.step, budget) for m in members)


def _total_steps(config: RunConfig, members: Sequence[MemberRecord]) -> int | None:
    """None for a server run whose clients decide when to stop (no total to show)."""
    return None if is_unbounded(config.budget) else config.budget * max(len(members), 1)


def progress_line(config: RunConfig, members: Sequence[MemberRecord], events: Sequence[EventRecord]) -> str:
    """One plain line of progress, e.g. ``run exp: 120/400 steps (30%), best -0.01 (member 3), 4 exploits``.

    Example:
        >>> cfg = RunConfig(name="exp", space={"x": {"type": "float", "low": 0, "high": 1}}, budget=10)
        >>> progress_line(cfg, (MemberRecord("exp", 0, MemberState.RUNNING, 5, {}),), ())
        'run exp: 5/10 steps (50%), best -, 0 exploits, 0/1 members done'
    """
    total = _total_steps(config, members)
    done = _done_steps(members, config.budget)
    top = best_member(members, config.mode, config.ranking)
    best = f"{top.score:.6g} (member {top.member_id})" if top is not None else "-"
    exploits = sum(e.kind == "exploit" for e in events)
    finished = sum(m.state is MemberState.FINISHED for m in members)
    failed = sum(m.state is MemberState.FAILED for m in members)
    steps = f"{done} steps" if total is None else f"{done}/{total} steps ({100 * done // total}%)"
    return (
        f"run {config.name}: {steps}, best {best}, "
        f"{exploits} exploits, {finished}/{len(members)} members done" + (f", {failed} FAILED" if failed else "")
    )


def _failed_note(members: Sequence[MemberRecord]) -> str:
    failed = sum(m.state is MemberState.FAILED for m in members)
    return f" · [bold red]{failed} failed[/]" if failed else ""


class LiveDisplay:
    """Members table + overall progress bar with ETA, refreshed from the store.

    Args:
        console: a ``rich.console.Console`` (default: stdout).
        quiet: print a plain progress line every ``log_every`` seconds instead of a live view.
        max_rows: members shown (the best ones when the population is larger).
        min_interval: seconds between two reads of the store.
    """

    def __init__(
        self,
        *,
        console: Any = None,
        quiet: bool = False,
        max_rows: int = 20,
        min_interval: float = 0.25,
        log_every: float = 10.0,
    ) -> None:
        self._console = console  # rich's default Console is made on first use (rich takes a while to import)
        self.quiet = quiet
        self.max_rows = max_rows
        self.min_interval = min_interval
        self.log_every = log_every
        self._live: Any = None
        self._progress: Any = None
        self._task: Any = None
        self._last_read = -float("inf")
        self._last_log = -float("inf")
        self._state: tuple[RunConfig, tuple[MemberRecord, ...], tuple[EventRecord, ...]] | None = None
        self._source: tuple[PopulationStore, RunConfig] | None = None
        self._last_line = ""

    @property
    def console(self) -> Any:
        if self._console is None:
            from rich.console import Console

            self._console = Console()
        return self._console

    # -- rendering (pure given the records) --------------------------------------------------
    def table(self, config: RunConfig, members: Sequence[MemberRecord], events: Sequence[EventRecord]) -> Any:
        """The members table as a rich renderable."""
        from rich.table import Table

        last: dict[int, EventRecord] = {}
        for e in events:
            if e.kind in _NOTABLE:
                last[e.member_id] = e
        order = ranked(members, config.mode)
        top = best_member(members, config.mode, config.ranking)
        best_id = top.member_id if top is not None else None
        shown = list(members)
        if len(shown) > self.max_rows:  # keep the best ones (then unscored ones), in id order
            scored = [m.member_id for m in order]
            keep = set((scored + [m.member_id for m in members if m.member_id not in scored])[: self.max_rows])
            shown = [m for m in members if m.member_id in keep]
        table = Table(title=f"run {config.name}", expand=False, show_lines=False)
        for column in ("member", "state", "step", "score", "hparams", "last event"):
            table.add_column(column, justify="right" if column in ("member", "step", "score") else "left",
                             overflow="fold" if column == "last event" else "ellipsis")
        now = time.time()
        for m in shown:
            event = last.get(m.member_id)
            style = "bold green" if m.member_id == best_id else ("red" if m.state is MemberState.FAILED else None)
            table.add_row(
                f"{m.member_id}{' *' if m.member_id == best_id else ''}", m.shown_state(now),
                str(m.step) if is_unbounded(config.budget) else f"{m.step}/{config.budget}",
                "-" if m.score is None else f"{m.score:.6g}", _fmt_hparams(m.hparams),
                f"step {event.step} {event.kind}: {event.summary}" if event else "", style=style,
            )
        if len(members) > len(shown):
            table.caption = f"{len(members) - len(shown)} more members not shown (the best {len(shown)} are)"
        return table

    def renderable(self, config: RunConfig, members: Sequence[MemberRecord], events: Sequence[EventRecord]) -> Any:
        """The table above the progress bar."""
        from rich.console import Group

        self._ensure_progress(config, members)
        top = best_member(members, config.mode, config.ranking)
        best = f"{top.score:.6g} (member {top.member_id})" if top is not None else "-"
        self._progress.update(
            self._task, total=_total_steps(config, members), completed=_done_steps(members, config.budget),
            best=best, exploits=sum(e.kind == "exploit" for e in events), failed=_failed_note(members),
        )
        return Group(self.table(config, members, events), self._progress)

    def _ensure_progress(self, config: RunConfig, members: Sequence[MemberRecord]) -> None:
        if self._progress is not None:
            return
        from rich.progress import (
            BarColumn,
            MofNCompleteColumn,
            Progress,
            TaskProgressColumn,
            TextColumn,
            TimeElapsedColumn,
            TimeRemainingColumn,
        )

        self._progress = Progress(
            TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(), TaskProgressColumn(),
            TextColumn("best {task.fields[best]} · {task.fields[exploits]} exploits{task.fields[failed]}"),
            TimeElapsedColumn(), TextColumn("ETA"), TimeRemainingColumn(), console=self.console,
        )
        self._task = self._progress.add_task(
            "member-steps", total=_total_steps(config, members), best="-", exploits=0, failed=""
        )

    # -- monitor protocol --------------------------------------------------------------------
    def update(self, store: PopulationStore, config: RunConfig) -> None:
        self._source = (store, config)
        now = time.monotonic()
        if now - self._last_read < self.min_interval:
            return
        self._last_read = now
        members, events = store.list_members(config.name), store.events(config.name)
        self._state = (config, members, events)
        if self.quiet:
            if now - self._last_log >= self.log_every:
                self._last_log = now
                self._log(progress_line(config, members, events))
            return
        view = self.renderable(config, members, events)
        if self._live is None:
            from rich.errors import LiveError
            from rich.live import Live

            live = Live(view, console=self.console, auto_refresh=False, transient=False)
            try:
                live.start()
            except LiveError:  # another live display (e.g. run(progress=True)) owns the terminal
                self.quiet = True
                self._log(progress_line(config, members, events))
                return
            self._live = live
        self._live.update(view, refresh=True)

    def close(self) -> None:
        """Show the final state (read anew: the last ``update`` may have been throttled) and release the terminal."""
        if self._source is not None:
            store, config = self._source
            self._state = (config, store.list_members(config.name), store.events(config.name))
        if self._live is not None:
            if self._state is not None:
                self._live.update(self.renderable(*self._state), refresh=True)
            self._live.stop()
            self._live = None
        elif self.quiet and self._state is not None:
            self._log(progress_line(*self._state))

    def _log(self, line: str) -> None:
        if line != self._last_line:  # the same line twice says nothing
            self.console.print(line, highlight=False, markup=False, soft_wrap=True)
            self._last_line = line
