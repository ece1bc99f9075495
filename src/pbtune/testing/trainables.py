"""Small deterministic trainables for tests, benchmarks and the quick demo."""

from __future__ import annotations

import json
import math
import os
import time
from collections.abc import Mapping
from typing import Any

from pbtune.engine.trainable import Trainable

__all__ = ["Counter", "Quadratic", "Flaky", "DeviceRecorder"]


class Counter(Trainable):
    """Zero-cost trainable: each step adds ``hparams["x"]`` to a counter (the overhead benchmark)."""

    def setup(self, hparams: Mapping[str, Any]) -> None:
        self.x = float(hparams["x"])
        self.total = 0.0

    def step(self) -> Mapping[str, float]:
        self.total += self.x
        return {"score": self.total}

    def save(self, path: str) -> None:
        with open(path, "w") as handle:
            json.dump({"total": self.total}, handle)

    def load(self, path: str) -> None:
        with open(path) as handle:
            self.total = json.load(handle)["total"]

    def set_hparams(self, hparams: Mapping[str, Any]) -> None:
        self.x = float(hparams["x"])


class Quadratic(Trainable):
    """Gradient ascent on ``-(theta - target)^2`` with learning rate ``lr``; score is the objective.

    ``step_seconds`` (constructor argument) makes each step sleep, to give tests time to kill
    workers mid-run.
    """

    def setup(self, hparams: Mapping[str, Any]) -> None:
        self.lr = float(hparams["lr"])
        self.theta = 0.0
        self.target = float(self.args.get("target", 3.0))

    def step(self) -> Mapping[str, float]:
        delay = float(self.args.get("step_seconds", 0.0))
        if delay:
            time.sleep(delay)
        self.theta += self.lr * 2 * (self.target - self.theta)
        return {"score": -((self.theta - self.target) ** 2), "theta": self.theta}

    def save(self, path: str) -> None:
        tmp = f"{path}.tmp"
        with open(tmp, "w") as handle:
            json.dump({"theta": self.theta}, handle)
        os.replace(tmp, path)

    def load(self, path: str) -> None:
        with open(path) as handle:
            self.theta = json.load(handle)["theta"]


class Flaky(Quadratic):
    """A Quadratic whose members listed in ``fail_members`` raise; ``nan_members`` score NaN."""

    def setup(self, hparams: Mapping[str, Any]) -> None:
        super().setup(hparams)
        self.tag = hparams.get("tag")

    def step(self) -> Mapping[str, float]:
        result = dict(super().step())
        if self.tag == "boom":
            raise RuntimeError("this member always fails")
        if self.tag == "nan":
            result["score"] = math.nan
        return result


class DeviceRecorder(Quadratic):
    """A Quadratic that records the GPU share its worker process was given (device placement tests).

    ``setup`` writes ``<record_dir>/<pid>-<member>.json`` with the process id and its
    ``CUDA_VISIBLE_DEVICES`` / ``CUDA_DEVICE_ORDER``. With ``use_torch: true`` it also runs a
    small matmul on ``cuda`` when torch sees a GPU (else on CPU) and records the device, the GPUs
    torch sees and the steps trained there (``benchmarks/gpu_check.py``).
    """

    def setup(self, hparams: Mapping[str, Any]) -> None:
        super().setup(hparams)
        self.record: dict[str, Any] = {
            "pid": os.getpid(), "ppid": os.getppid(), "member": self.member_id,
            "CUDA_VISIBLE_DEVICES": os.environ.get("CUDA_VISIBLE_DEVICES"),
            "CUDA_DEVICE_ORDER": os.environ.get("CUDA_DEVICE_ORDER"), "steps": 0,
        }
        self.weights: Any = None
        if self.args.get("use_torch"):
            import torch

            device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
            self.weights = torch.randn(256, 256, device=device)
            self.record.update(device=str(self.weights.device), torch_device_count=torch.cuda.device_count(),
                               device_name=torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu")
        self._write()

    def step(self) -> Mapping[str, float]:
        if self.weights is not None:  # real work on the device the worker was given
            self.weights = (self.weights @ self.weights).tanh()
            float(self.weights.sum())
        self.record["steps"] += 1
        self._write()
        return super().step()

    def _write(self) -> None:
        folder = str(self.args["record_dir"])
        path = os.path.join(folder, f"{self.record['pid']}-{self.record['member']}.json")
        with open(f"{path}.tmp", "w") as handle:
            json.dump(self.record, handle)
        os.replace(f"{path}.tmp", path)
