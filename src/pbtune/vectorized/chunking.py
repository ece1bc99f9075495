"""How many members to train in one batched call when the whole population does not fit.

Parameters, optimizer state and buffers of every member stay resident on the device; what a
chunk bounds is the memory of one forward/backward (activations and gradients), which grows
with ``members x batch``. On CUDA it is measured with a probe step; on CPU it is estimated
from the sizes of every module's outputs (torch cannot report the peak of a CPU step).
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from typing import Any

import torch

from pbtune.errors import InvalidConfigError
from pbtune.vectorized.population import StackedPopulation, bytes_human

__all__ = ["ChunkPlan", "plan_chunks", "available_bytes", "chunk_slices"]

log = logging.getLogger(__name__)

_CPU_ACTIVATION_FACTOR = 3  # outputs kept for backward + their gradients + temporaries


@dataclass(frozen=True)
class ChunkPlan:
    """The chunk size chosen and why.

    Example:
        >>> ChunkPlan(population=512, chunk_size=128, per_member_bytes=2**20, available_bytes=2**30,
        ...           state_bytes=0, measured=True).describe()
        'population 512 in 4 chunks of up to 128 members (about 1.0 MiB of activations per member, 1.0 GiB available)'
    """

    population: int
    chunk_size: int
    per_member_bytes: int
    available_bytes: int
    state_bytes: int
    measured: bool

    @property
    def chunks(self) -> int:
        return -(-self.population // self.chunk_size)

    def describe(self) -> str:
        what = (
            ""
            if self.per_member_bytes <= 0
            else (
                f"about {bytes_human(self.per_member_bytes)} of activations per member, "
                f"{bytes_human(self.available_bytes)} available"
            )
        )
        head = (
            f"population {self.population} in one chunk"
            if self.chunks == 1
            else f"population {self.population} in {self.chunks} chunks of up to {self.chunk_size} members"
        )
        return f"{head} ({what})" if what else head


def chunk_slices(population: int, chunk_size: int) -> list[slice]:
    """``[slice(0, c), slice(c, 2c), ...]`` covering ``range(population)``."""
    return [slice(start, min(start + chunk_size, population)) for start in range(0, population, chunk_size)]


def available_bytes(device: torch.device) -> int:
    """Free memory where the population's tensors live (CUDA: free + cached by torch)."""
    if device.type == "cuda":
        free, _total = torch.cuda.mem_get_info(device)
        cached = torch.cuda.memory_reserved(device) - torch.cuda.memory_allocated(device)
        return int(free + cached)
    try:
        with open("/proc/meminfo", encoding="ascii") as handle:
            for line in handle:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    try:
        return int(os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE"))
    except (ValueError, OSError, AttributeError):
        return 8 * 2**30  # unknown platform: assume 8 GiB


def _output_bytes(output: Any) -> int:
    if isinstance(output, torch.Tensor):
        return output.numel() * output.element_size()
    if isinstance(output, (tuple, list)):
        return sum(_output_bytes(o) for o in output)
    if isinstance(output, dict):
        return sum(_output_bytes(o) for o in output.values())
    return 0


def _estimate_cpu(population: StackedPopulation, inputs: Any) -> int:
    """Activation bytes of one member's training step, from the modules' output sizes."""
    total = 0

    def hook(_module: Any, _args: Any, output: Any) -> None:
        nonlocal total
        total += _output_bytes(output)  # inside vmap a tensor reports one member's shape

    handles = [m.register_forward_hook(hook) for m in population.template.modules() if not list(m.children())]
    saved = {name: tensor[:1].clone() for name, tensor in population.constants.items()}  # BN statistics
    try:
        with torch.random.fork_rng(devices=[]):  # dropout must not consume the run's random stream
            population.forward(inputs, slice(0, 1), train=True)
    finally:
        for handle in handles:
            handle.remove()
        for name, tensor in saved.items():
            population.constants[name][:1] = tensor
    return total * _CPU_ACTIVATION_FACTOR


def _measure_cuda(population: StackedPopulation, inputs: Any, targets: Any, probe: int) -> int:
    """Peak memory of a real gradient computation for ``probe`` members, per member."""
    device = population.device
    rows = slice(0, probe)
    saved = {name: tensor[rows].clone() for name, tensor in population.constants.items()}  # BN stats
    rng = torch.cuda.get_rng_state(device)
    torch.cuda.synchronize(device)
    base = torch.cuda.memory_allocated(device)
    torch.cuda.reset_peak_memory_stats(device)
    grads, _ = population.gradients(inputs[:probe], targets[:probe], rows)
    del grads
    torch.cuda.synchronize(device)
    peak = torch.cuda.max_memory_allocated(device) - base
    for name, tensor in saved.items():
        population.constants[name][rows] = tensor
    torch.cuda.set_rng_state(rng, device)
    return max(1, peak // probe)


def plan_chunks(
    population: StackedPopulation,
    sample_inputs: Any,
    sample_targets: Any,
    *,
    chunk_size: int | None = None,
    memory_fraction: float = 0.7,
) -> ChunkPlan:
    """Choose the chunk size: ``chunk_size`` if given, else what fits in ``memory_fraction`` of free memory.

    ``sample_inputs``/``sample_targets`` are one training batch per member (``[members, B, ...]``,
    at least 2 members on CUDA for the probe).

    Raises:
        InvalidConfigError: ``chunk_size`` is not a positive integer.
    """
    size = population.size
    state = population.state_bytes_per_member() * size
    free = available_bytes(population.device)
    if chunk_size is not None:
        if isinstance(chunk_size, bool) or not isinstance(chunk_size, int) or chunk_size < 1:
            raise InvalidConfigError(
                "chunk_size", "vectorized.train", "an integer >= 1 or None (automatic)", chunk_size
            )
        return ChunkPlan(size, min(chunk_size, size), 0, free, state, measured=False)
    if population.device.type == "cuda":
        probe = min(size, 2, int(sample_inputs.shape[0]))
        per_member, measured = _measure_cuda(population, sample_inputs, sample_targets, probe), True
    else:
        per_member, measured = _estimate_cpu(population, sample_inputs[0]), False
    fits = max(1, int(free * memory_fraction) // max(per_member, 1))
    plan = ChunkPlan(size, int(min(size, fits)), int(per_member), int(free), int(state), measured)
    log.info("vectorized: %s", plan.describe())
    return plan
