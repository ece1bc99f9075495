"""Which GPUs each local worker process sees: its ``CUDA_VISIBLE_DEVICES`` share.

Two config fields decide it (``pbtune.run`` and ``pbtune run``; Ray actors use
``resources_per_worker`` instead):

* ``gpus_per_worker``: a fraction in (0, 1) packs ``floor(1 / g)`` workers on each device
  (0.5 and two devices: workers 0, 1 on device 0 and workers 2, 3 on device 1); a whole number
  gives each worker that many devices of its own (2: worker 0 sees ``"0,1"``); 0 hides every
  GPU (``CUDA_VISIBLE_DEVICES=""``: the workers train on CPU).
* ``devices``: the device ids (or GPU/MIG UUIDs) to place workers on, as ``CUDA_VISIBLE_DEVICES``
  names them. Without it they are the driver's own ``CUDA_VISIBLE_DEVICES`` if that is set, else
  the GPUs that ``nvidia-smi -L`` lists (else ``torch.cuda.device_count()`` when the driver has
  already imported torch; no torch import just to count). ``devices`` without ``gpus_per_worker``
  spreads the workers evenly: one device each while they fit, else ``1 / ceil(workers / n)``.

Neither field set: workers inherit the driver's environment, as before. Each worker also gets
``CUDA_DEVICE_ORDER=PCI_BUS_ID`` (unless the driver sets it) so ids match ``nvidia-smi``.

Example:
    >>> worker_shares(4, 0.5, ("0", "1"))
    ['0', '0', '1', '1']
    >>> worker_shares(2, 2, ("0", "1", "2", "3"))
    ['0,1', '2,3']
    >>> worker_shares(3, None, ("0", "1"))
    ['0', '0', '1']
"""

from __future__ import annotations

import logging
import math
import os
import subprocess
import sys
from collections.abc import Sequence
from typing import Any

from pbtune.errors import InvalidConfigError
from pbtune.validation import is_number

__all__ = ["check_devices", "check_gpus_per_worker", "detect_devices", "worker_envs", "worker_shares"]

log = logging.getLogger(__name__)
WHERE = "config"


def check_gpus_per_worker(value: Any) -> float | int | None:
    """None, 0, a fraction in (0, 1), or a whole number >= 1 (whole numbers come back as ints)."""
    if value is None:
        return None
    if not is_number(value) or not math.isfinite(value) or value < 0 or (value > 1 and value != int(value)):
        raise InvalidConfigError("gpus_per_worker", WHERE, "0 (no GPU), a fraction in (0, 1) (workers share a "
                                 "device) or a whole number of devices per worker (1, 2, ...)", value)
    return int(value) if value == int(value) else float(value)


def check_devices(value: Any) -> list[int | str] | None:
    """None, or a non-empty list of distinct device ids (ints >= 0) or UUID strings."""
    if value is None:
        return None
    allowed = "a non-empty list of distinct device ids (integers >= 0) or GPU/MIG UUIDs, e.g. [0, 1]"
    if isinstance(value, (str, bytes)) or not isinstance(value, Sequence) or not value:
        raise InvalidConfigError("devices", WHERE, allowed, value)
    out: list[int | str] = []
    for item in value:
        if isinstance(item, bool):
            raise InvalidConfigError("devices", WHERE, allowed, value)
        if isinstance(item, int) and item >= 0:
            out.append(item)
        elif isinstance(item, str) and item.strip() and "," not in item and item.strip().isprintable():
            out.append(int(item) if item.strip().isdigit() else item.strip())
        else:
            raise InvalidConfigError("devices", WHERE, allowed, value)
    if len({str(d) for d in out}) != len(out):
        raise InvalidConfigError("devices", WHERE, allowed, value)
    return out


def _default_share(workers: int, n: int) -> float | int:
    return 1 if workers <= n else 1 / math.ceil(workers / n)


def _most(workers: int, n: int) -> str:
    """The largest gpus_per_worker that fits, as the error message shows it."""
    if workers <= n:
        return str(n // workers)
    return f"{1 / math.ceil(workers / n):.4g}"


def worker_shares(workers: int, gpus_per_worker: float | int | None, devices: Sequence[Any]) -> list[str]:
    """``CUDA_VISIBLE_DEVICES`` of workers ``0 .. workers-1`` (pure; see the module docstring).

    Raises:
        InvalidConfigError: naming ``gpus_per_worker`` when the workers do not fit on ``devices``.
    """
    ids = [str(d) for d in devices]
    share = _default_share(workers, len(ids)) if gpus_per_worker is None else gpus_per_worker
    if share == 0:
        return [""] * workers
    if not ids:
        raise InvalidConfigError("gpus_per_worker", WHERE, "0 when there is no device to place workers on "
                                 "(set `devices`, or make `nvidia-smi -L` list the GPUs)", gpus_per_worker)
    if share >= 1:
        whole = int(share)
        if workers * whole > len(ids):
            raise InvalidConfigError(
                "gpus_per_worker", WHERE, f"at most {_most(workers, len(ids))} for {workers} workers on the "
                f"{len(ids)} devices {ids} (fractions share a device)", gpus_per_worker)
        return [",".join(ids[i * whole:(i + 1) * whole]) for i in range(workers)]
    per_device = math.floor(1 / share + 1e-9)
    if workers > per_device * len(ids):
        raise InvalidConfigError(
            "gpus_per_worker", WHERE, f"at most {_most(workers, len(ids))} for {workers} workers on the "
            f"{len(ids)} devices {ids} ({per_device} workers fit on each at {share:g})", gpus_per_worker)
    return [ids[i // per_device] for i in range(workers)]


def detect_devices() -> tuple[str, ...]:
    """The devices workers may be placed on when ``devices`` is not set (module docstring)."""
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    if visible is not None:
        return tuple(d.strip() for d in visible.split(",") if d.strip())
    try:
        listed = subprocess.run(["nvidia-smi", "-L"], capture_output=True, text=True, timeout=20, check=False)
    except (OSError, subprocess.SubprocessError):
        listed = None
    if listed is not None and listed.returncode == 0:
        return tuple(str(i) for i, _ in enumerate(line for line in listed.stdout.splitlines()
                                                  if line.startswith("GPU ")))
    torch = sys.modules.get("torch")
    if torch is not None:  # already imported here: counting is cheap
        return tuple(str(i) for i in range(torch.cuda.device_count()))
    return ()


def worker_envs(workers: int, gpus_per_worker: float | int | None,
                devices: Sequence[Any] | None) -> list[dict[str, str]] | None:
    """The environment each worker adds to the driver's, or None when neither field is set."""
    if gpus_per_worker is None and devices is None:
        return None
    found = tuple(str(d) for d in devices) if devices is not None else ()
    if devices is None and gpus_per_worker != 0:
        found = detect_devices()
        if not found:
            log.warning("gpus_per_worker is %s but no GPU was found (CUDA_VISIBLE_DEVICES, nvidia-smi -L): the "
                        "workers see none and train on CPU", gpus_per_worker)
            return [{"CUDA_VISIBLE_DEVICES": ""} for _ in range(workers)]
    order = {} if "CUDA_DEVICE_ORDER" in os.environ else {"CUDA_DEVICE_ORDER": "PCI_BUS_ID"}
    return [{"CUDA_VISIBLE_DEVICES": share, **order} for share in worker_shares(workers, gpus_per_worker, found)]
