"""Device placement of local workers: each worker process gets its CUDA_VISIBLE_DEVICES share.

No GPU is needed: the shares are environment variables, and ``DeviceRecorder`` writes what its
process saw; the worker stats hook (PBTUNE_WORKER_STATS_DIR) ties each process id to its worker
index. ``benchmarks/gpu_check.py`` checks the same on a real GPU.
"""

from __future__ import annotations

import json
import logging
import os
import re
import stat
import sys
from pathlib import Path
from typing import Any

import pytest

import pbtune
from pbtune.engine import devices, local
from pbtune.errors import InvalidConfigError
from pbtune.testing.trainables import DeviceRecorder

SPACE = {"lr": {"type": "float", "low": 0.01, "high": 0.3, "log": True}}


RECORDER = "pbtune.testing.trainables:DeviceRecorder"


def run_recorded(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, trainable: Any = RECORDER,
                 **settings: Any) -> tuple[dict[int, dict[str, Any]], list[dict[str, Any]]]:
    """Run DeviceRecorder; return (worker index -> its stats, what each trainable saw)."""
    stats_dir, record_dir = tmp_path / "stats", tmp_path / "seen"
    stats_dir.mkdir()
    record_dir.mkdir()
    monkeypatch.setenv("PBTUNE_WORKER_STATS_DIR", str(stats_dir))
    monkeypatch.delenv("CUDA_DEVICE_ORDER", raising=False)
    base: dict[str, Any] = dict(name="d", space=SPACE, population=4, workers=4, budget=2, ready={"interval": 1},
                                storage=f"sqlite:///{tmp_path}/p.db", checkpoints=str(tmp_path / "ck"),
                                trainable_args={"record_dir": str(record_dir)}, progress=False)
    base.update(settings)
    pbtune.run(trainable, **base)
    workers: dict[int, dict[str, Any]] = {}
    for path in stats_dir.glob("*.json"):
        index = int(re.search(r"-w(\d+)-", path.name).group(1))  # type: ignore[union-attr]
        workers[index] = json.loads(path.read_text())
    seen = [json.loads(p.read_text()) for p in record_dir.glob("*.json")]
    return workers, seen


def check_trainables_saw_their_worker_share(workers: dict[int, dict[str, Any]], seen: list[dict[str, Any]]) -> None:
    by_pid = {w["pid"]: w["CUDA_VISIBLE_DEVICES"] for w in workers.values()}
    assert seen, "no member was trained"
    for record in seen:
        assert record["CUDA_VISIBLE_DEVICES"] == by_pid[record["pid"]], record
        assert record["CUDA_DEVICE_ORDER"] == "PCI_BUS_ID"  # ids as nvidia-smi numbers them


def test_half_a_gpu_per_worker_packs_two_workers_on_each_device(tmp_path: Path,
                                                                monkeypatch: pytest.MonkeyPatch) -> None:
    workers, seen = run_recorded(tmp_path, monkeypatch, gpus_per_worker=0.5, devices=[0, 1])
    assert {i: w["CUDA_VISIBLE_DEVICES"] for i, w in workers.items()} == {0: "0", 1: "0", 2: "1", 3: "1"}
    assert len({w["pid"] for w in workers.values()}) == 4  # four processes, each with its own share
    assert os.getpid() not in {r["ppid"] for r in seen}  # forked by the zygote
    check_trainables_saw_their_worker_share(workers, seen)


def test_whole_gpus_per_worker_and_uuids(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    workers, seen = run_recorded(tmp_path, monkeypatch, workers=2, gpus_per_worker=2,
                                 devices=["GPU-a", "GPU-b", 2, 3])
    assert {i: w["CUDA_VISIBLE_DEVICES"] for i, w in workers.items()} == {0: "GPU-a,GPU-b", 1: "2,3"}
    check_trainables_saw_their_worker_share(workers, seen)


def test_spawned_workers_get_their_share_before_the_trainable_runs(tmp_path: Path,
                                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    # a class without an importable name is spawned, not forked from the zygote
    monkeypatch.setattr(local._zygote, "trainable_reference", lambda cls: None)
    workers, seen = run_recorded(tmp_path, monkeypatch, trainable=DeviceRecorder, population=2, workers=2,
                                 devices=[3])
    assert {i: w["CUDA_VISIBLE_DEVICES"] for i, w in workers.items()} == {0: "3", 1: "3"}  # 2 workers, 1 device
    assert {r["ppid"] for r in seen} == {os.getpid()}  # spawned by this process, not forked by the zygote
    check_trainables_saw_their_worker_share(workers, seen)


def test_without_the_fields_workers_inherit_the_driver_environment(tmp_path: Path,
                                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "7")
    workers, seen = run_recorded(tmp_path, monkeypatch, population=2, workers=2)
    assert {w["CUDA_VISIBLE_DEVICES"] for w in workers.values()} == {"7"}
    assert {r["CUDA_DEVICE_ORDER"] for r in seen} == {None}


@pytest.mark.parametrize("workers, share, devs, expected", [
    (4, 0.5, [0, 1], ["0", "0", "1", "1"]),
    (3, 0.5, [0, 1], ["0", "0", "1"]),
    (3, 1 / 3, [5], ["5", "5", "5"]),
    (2, 1, [0, 1, 2], ["0", "1"]),
    (2, 2, [0, 1, 2, 3], ["0,1", "2,3"]),
    (1, 2, [0, 1], ["0,1"]),
    (10, None, [0, 1], ["0"] * 5 + ["1"] * 5),  # devices alone: spread evenly
    (2, None, [0, 1, 2], ["0", "1"]),
    (3, 0, [0], ["", "", ""]),
])
def test_worker_shares(workers: int, share: float | None, devs: list[int], expected: list[str]) -> None:
    assert devices.worker_shares(workers, share, devs) == expected


@pytest.mark.parametrize("settings, field, fragment", [
    ({"workers": 4, "gpus_per_worker": 1, "devices": [0, 1]}, "gpus_per_worker", "at most 0.5 for 4 workers"),
    ({"workers": 5, "gpus_per_worker": 0.5, "devices": [0, 1]}, "gpus_per_worker", "at most 0.3333"),
    ({"workers": 2, "gpus_per_worker": 3, "devices": [0, 1, 2, 3]}, "gpus_per_worker", "at most 2 for 2 workers"),
    ({"gpus_per_worker": 1.5}, "gpus_per_worker", "a whole number of devices"),
    ({"gpus_per_worker": -0.5}, "gpus_per_worker", "0 (no GPU)"),
    ({"gpus_per_worker": "1"}, "gpus_per_worker", "a fraction in (0, 1)"),
    ({"gpus_per_worker": float("nan")}, "gpus_per_worker", "a fraction"),
    ({"devices": []}, "devices", "non-empty list"),
    ({"devices": "0,1"}, "devices", "non-empty list"),
    ({"devices": [0, 0]}, "devices", "distinct"),
    ({"devices": [-1]}, "devices", "integers >= 0"),
    ({"devices": [True]}, "devices", "integers >= 0"),
    ({"devices": ["a,b"]}, "devices", "UUIDs"),
])
def test_bad_settings_name_the_field(settings: dict[str, Any], field: str, fragment: str) -> None:
    with pytest.raises(InvalidConfigError) as info:
        pbtune.RunConfig(name="x", space=SPACE, **settings)
    assert info.value.field == field and fragment in str(info.value), str(info.value)


def test_config_round_trip_keeps_the_fields() -> None:
    config = pbtune.RunConfig(name="x", space=SPACE, workers=4, gpus_per_worker=0.5, devices=[0, "1"])
    data = config.to_dict()
    assert (data["gpus_per_worker"], data["devices"]) == (0.5, [0, 1])
    assert pbtune.RunConfig.from_dict(data).devices == [0, 1]
    assert pbtune.RunConfig(name="x", space=SPACE, gpus_per_worker=1.0).gpus_per_worker == 1


def _fake_nvidia_smi(folder: Path, text: str, code: int = 0) -> None:
    script = folder / "nvidia-smi"
    lines = " ".join("'" + line + "'" for line in text.splitlines())
    script.write_text(f"#!/bin/sh\nprintf '%s\\n' {lines}\nexit {code}\n")  # builtins only: PATH is this folder
    script.chmod(script.stat().st_mode | stat.S_IXUSR)


def test_detected_devices(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "2, 3")
    assert devices.detect_devices() == ("2", "3")  # the driver's own list wins
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "")
    assert devices.detect_devices() == ()
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES")
    _fake_nvidia_smi(tmp_path, "GPU 0: NVIDIA H100 (UUID: GPU-1)\n  MIG 1g.10gb Device 0: (UUID: MIG-1)\n"
                               "GPU 1: NVIDIA H100 (UUID: GPU-2)")
    monkeypatch.setenv("PATH", str(tmp_path))
    assert devices.detect_devices() == ("0", "1")
    monkeypatch.delenv("CUDA_DEVICE_ORDER", raising=False)
    assert devices.worker_envs(4, 0.5, None) == [
        {"CUDA_VISIBLE_DEVICES": d, "CUDA_DEVICE_ORDER": "PCI_BUS_ID"} for d in ("0", "0", "1", "1")]
    with pytest.raises(InvalidConfigError, match="gpus_per_worker.*at most 0.5 for 4 workers on the 2 devices"):
        devices.worker_envs(4, 1, None)  # detected at run start: checked then


def test_no_gpu_found_warns_and_hides_gpus(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                          caplog: pytest.LogCaptureFixture) -> None:
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    _fake_nvidia_smi(tmp_path, "NVIDIA-SMI has failed", code=9)
    monkeypatch.setenv("PATH", str(tmp_path))
    monkeypatch.setitem(sys.modules, "torch", None)  # as if never imported
    with caplog.at_level(logging.WARNING, logger="pbtune.engine.devices"):
        assert devices.worker_envs(2, 0.5, None) == [{"CUDA_VISIBLE_DEVICES": ""}] * 2
    assert "no GPU was found" in caplog.text
    assert devices.worker_envs(2, None, None) is None


def test_a_trainable_that_initialises_cuda_at_import_is_spawned(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                                caplog: pytest.LogCaptureFixture) -> None:
    pytest.importorskip("torch")
    target = os.path.join(os.path.dirname(os.path.abspath(__file__)), "cuda_at_import_trainable.py") + ":CudaAtImport"
    with caplog.at_level(logging.WARNING, logger="pbtune.engine.local"):
        workers, seen = run_recorded(tmp_path, monkeypatch, trainable=target, population=2, workers=2,
                                     gpus_per_worker=1, devices=[0, 1])
    assert "initialised CUDA in the zygote" in caplog.text
    assert {r["ppid"] for r in seen} == {os.getpid()}  # spawned: the zygote's CUDA state is not inherited
    assert {i: w["CUDA_VISIBLE_DEVICES"] for i, w in workers.items()} == {0: "0", 1: "1"}
    check_trainables_saw_their_worker_share(workers, seen)
