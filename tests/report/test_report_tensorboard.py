"""TensorBoard: the event files written during a real run hold every member's scalars from the store."""

from __future__ import annotations

import glob
import os
import struct
import time
from typing import Any

from report_helpers import SmallRun, small_config

from pbtune.member import Population
from pbtune.report.data import hparam_history, hparams_at, load_run, score_curves
from pbtune.report.tensorboard import TensorBoardMonitor, write_tensorboard


def _read_scalars(folder: str) -> dict[str, list[tuple[int, float]]]:
    """tag -> [(step, value)] of every event file in ``folder`` (TensorBoard's reader if installed)."""
    try:
        from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    except ImportError:
        return _read_scalars_raw(folder)
    acc = EventAccumulator(folder, size_guidance={"scalars": 0, "tensors": 0})
    acc.Reload()
    return {tag: [(e.step, e.value) for e in acc.Scalars(tag)] for tag in acc.Tags()["scalars"]}


def _read_scalars_raw(folder: str) -> dict[str, list[tuple[int, float]]]:
    """The TFRecord framing (length, crc, event, crc) read with tensorboardX's own protobufs."""
    from tensorboardX.proto.event_pb2 import Event

    out: dict[str, list[tuple[int, float]]] = {}
    for path in sorted(glob.glob(os.path.join(folder, "events.out.tfevents.*"))):
        with open(path, "rb") as handle:
            blob = handle.read()
        offset = 0
        while offset < len(blob):
            (length,) = struct.unpack("<Q", blob[offset:offset + 8])
            event = Event.FromString(blob[offset + 12:offset + 12 + length])
            offset += 12 + length + 4
            for value in event.summary.value:
                if value.HasField("simple_value"):
                    out.setdefault(value.tag, []).append((event.step, value.simple_value))
    return out


def _member_folders(root: str, run: str) -> list[str]:
    return sorted(os.listdir(os.path.join(root, run)))


def test_every_members_scalars_match_the_store(small_run: SmallRun) -> None:
    data = small_run.data
    assert _member_folders(small_run.tb_dir, "toy") == [f"member-{m.member_id:03d}" for m in data.members]
    curves = score_curves(data.scores, data.events)
    for member in data.members:
        scalars = _read_scalars(os.path.join(small_run.tb_dir, "toy", f"member-{member.member_id:03d}"))
        assert {"score", "metrics/theta", "hparams/lr", "hparams/batch", "hparams/act"} <= set(scalars)
        curve = curves[member.member_id]
        assert [s for s, _ in scalars["score"]] == list(curve.steps)  # each step once, in order
        assert [v for _, v in scalars["score"]] == [float(_f32(v)) for v in curve.values]
        history = hparam_history(data.events, member.member_id)
        for step, value in scalars["hparams/lr"]:
            assert value == _f32(hparams_at(history, step)["lr"])
        for step, value in scalars["hparams/act"]:
            assert value == ["relu", "tanh", "gelu"].index(hparams_at(history, step)["act"])


def _f32(value: float) -> float:
    """TensorBoard stores scalars as float32."""
    return struct.unpack("<f", struct.pack("<f", value))[0]


def test_the_monitor_writes_as_the_run_goes_on(tmp_path: Any) -> None:
    """Each update appends only what is new; nothing is written twice."""
    config = small_config(str(tmp_path), name="live")
    population = Population(config)
    store = population.store
    monitor = TensorBoardMonitor(str(tmp_path / "tb"), min_interval=0.0, flush_secs=1)
    for step in (1, 2, 3):
        store.report("live", 0, step, -float(10 - step), metrics={"theta": float(step)})
    monitor.update(store, config)
    folder = os.path.join(str(tmp_path / "tb"), "live", "member-000")
    # tensorboardX writes from a background thread and flushes every flush_secs: poll for it
    deadline = time.monotonic() + 15
    while [s for s, _ in _read_scalars(folder).get("score", [])] != [1, 2, 3] and time.monotonic() < deadline:
        time.sleep(0.2)
    assert [s for s, _ in _read_scalars(folder)["score"]] == [1, 2, 3]
    for step in (4, 5):
        store.report("live", 0, step, -float(10 - step))
    store.report("live", 1, 1, -20.0)
    monitor.update(store, config)
    monitor.close()
    assert _read_scalars(folder)["score"] == [(s, -float(10 - s)) for s in (1, 2, 3, 4, 5)]
    assert _read_scalars(os.path.join(str(tmp_path / "tb"), "live", "member-001"))["score"] == [(1, -20.0)]


def test_close_writes_what_a_throttled_update_skipped(tmp_path: Any) -> None:
    config = small_config(str(tmp_path), name="late")
    store = Population(config).store
    monitor = TensorBoardMonitor(str(tmp_path / "tb"), min_interval=3600.0)
    store.report("late", 0, 1, -1.0)
    monitor.update(store, config)
    store.report("late", 0, 2, -0.5)
    monitor.update(store, config)  # throttled: nothing read
    monitor.close()
    scalars = _read_scalars(os.path.join(str(tmp_path / "tb"), "late", "member-000"))
    assert scalars["score"] == [(1, -1.0), (2, -0.5)]


def test_write_tensorboard_exports_a_finished_run(small_run: SmallRun, tmp_path: Any) -> None:
    folder = write_tensorboard(load_run(small_run.store, "toy"), str(tmp_path))
    assert folder == os.path.join(str(tmp_path), "toy")
    best = small_run.result.best
    scalars = _read_scalars(os.path.join(folder, f"member-{best.member_id:03d}"))
    assert scalars["score"][-1] == (small_run.config.budget, _f32(best.score))


def test_the_raw_reader_used_without_tensorboard_agrees_with_tensorboards(small_run: SmallRun) -> None:
    import pytest

    pytest.importorskip("tensorboard", reason="tensorboard is not installed: nothing to compare with")
    folder = os.path.join(small_run.tb_dir, "toy", "member-000")
    assert _read_scalars_raw(folder) == _read_scalars(folder)
