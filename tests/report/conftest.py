"""One small real PBT run shared by the report tests (Quadratic, 4 members, 1 worker: deterministic)."""

from __future__ import annotations

import io
import os
from collections.abc import Iterator

import pytest
from report_helpers import SmallRun, small_config

import pbtune
from pbtune.report.data import load_run
from pbtune.store import open_store


@pytest.fixture(scope="session")
def small_run(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SmallRun]:
    from rich.console import Console

    from pbtune.report.live import LiveDisplay
    from pbtune.report.tensorboard import TensorBoardMonitor

    root = str(tmp_path_factory.mktemp("report-run"))
    config = small_config(root)
    tb_dir = os.path.join(root, "tb")
    buffer = io.StringIO()
    console = Console(file=buffer, width=200, force_terminal=True, color_system=None)
    monitors = [TensorBoardMonitor(tb_dir, min_interval=0.0), LiveDisplay(console=console, min_interval=0.0)]
    result = pbtune.run(config=config, progress=False, monitors=monitors)
    store = open_store(config.storage)
    yield SmallRun(config, result, store, load_run(store, config.name), root, tb_dir, buffer.getvalue())
    store.close()
