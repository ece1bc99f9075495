"""The live display: what it showed during a real run, and its quiet mode."""

from __future__ import annotations

import io
import re
from typing import Any

from report_helpers import SmallRun, small_config
from rich.console import Console

from pbtune.member import Population
from pbtune.report.live import LiveDisplay, progress_line


def _console(width: int = 200) -> tuple[Console, io.StringIO]:
    buffer = io.StringIO()
    return Console(file=buffer, width=width, force_terminal=True, color_system=None), buffer


def test_the_display_showed_every_member_and_the_final_progress(small_run: SmallRun) -> None:
    text = small_run.live_text
    total = small_run.config.population * small_run.config.budget
    assert f"{total}/{total}" in text  # the progress bar reached the end
    assert "ETA" in text and "member-steps" in text
    final = text[text.rindex("run toy"):]  # the last frame
    for member in small_run.data.members:
        row = re.search(rf"^│\s*{member.member_id}( \*)?[\s│]+finished[\s│]+30/30[\s│]+(\S+)", final, re.M)
        assert row is not None, member.member_id
        assert row.group(2) == f"{member.score:.6g}"
        assert (row.group(1) is not None) == (member.member_id == small_run.result.best.member_id)
        notable = [e for e in small_run.data.events if e.member_id == member.member_id and e.kind != "init"]
        if notable:  # the last lineage event of each member is on its row
            assert f"step {notable[-1].step} {notable[-1].kind}: " in final


def test_the_table_shows_hparams_and_the_last_lineage_event(small_run: SmallRun) -> None:
    console, buffer = _console(240)
    display = LiveDisplay(console=console)
    console.print(display.table(small_run.config, small_run.data.members, small_run.data.events))
    text = buffer.getvalue()
    for member in small_run.data.members:
        assert f"lr={member.hparams['lr']:.4g}" in text
        assert f"act={member.hparams['act']}" in text
        mine = [e for e in small_run.data.events if e.member_id == member.member_id and e.kind != "init"]
        if mine:
            assert f"step {mine[-1].step} {mine[-1].kind}:" in text


def test_large_populations_show_the_best_rows(small_run: SmallRun) -> None:
    console, buffer = _console()
    display = LiveDisplay(console=console, max_rows=2)
    console.print(display.table(small_run.config, small_run.data.members, small_run.data.events))
    text = buffer.getvalue()
    ranked = sorted(small_run.data.members, key=lambda m: -(m.score or 0))
    assert "2 more members not shown" in text
    for member in ranked[:2]:
        assert f"{member.score:.6g}" in text
    assert f"{ranked[-1].score:.6g}" not in text


def test_quiet_mode_prints_plain_progress_lines(tmp_path: Any) -> None:
    config = small_config(str(tmp_path), name="quiet")
    store = Population(config).store
    console, buffer = _console(60)  # lines must not be wrapped for log readers
    display = LiveDisplay(console=console, quiet=True, min_interval=0.0, log_every=0.0)
    display.update(store, config)
    store.report("quiet", 2, 7, -1.5)
    display.update(store, config)
    display.update(store, config)  # unchanged: not printed again
    display.close()
    lines = buffer.getvalue().splitlines()
    assert lines == [
        "run quiet: 0/120 steps (0%), best -, 0 exploits, 0/4 members done",
        "run quiet: 7/120 steps (5%), best -1.5 (member 2), 0 exploits, 0/4 members done",
    ]
    assert lines[-1] == progress_line(config, store.list_members("quiet"), store.events("quiet"))


def test_works_beside_another_live_display(tmp_path: Any) -> None:
    """E.g. run(progress=True) plus this monitor: rich >= 14 nests the displays, older rich raises
    LiveError and the display falls back to plain lines. Either way the run is shown."""
    from rich.live import Live

    config = small_config(str(tmp_path), name="busy")
    store = Population(config).store
    console, buffer = _console()
    with Live("other", console=console):
        display = LiveDisplay(console=console, min_interval=0.0)
        display.update(store, config)
    display.close()
    assert "run busy" in buffer.getvalue()
