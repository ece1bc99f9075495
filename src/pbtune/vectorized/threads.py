"""How many torch threads a vectorized run uses on a CPU: measured on the run's own steps.

Why measure: on a machine whose cores other processes share, two OpenMP threads ran a batched
step 16x to 90x *slower* than one (each of the step's hundreds of small parallel kernels waits
for a descheduled thread), while on an idle machine they ran it 1.5-1.9x faster. Which one
holds changes from minute to minute, so no rule chosen in advance is right.

:class:`ThreadTuner` times the run's real batched steps (no extra work: the probe *is* training)
at each candidate count, keeps the fastest, preferring fewer threads unless more are clearly
faster, drops a candidate as soon as one of its steps is far slower than the best so far (so a
bad count costs one or two steps), falls back when the chosen count slows down, and probes
again after ``recheck_seconds`` of training, or later when the last probe's slower steps cost
more than 1 % of that. The decisions only use the durations it is given, so tests drive it
with made-up timings.

Example:
    >>> counts = []
    >>> tuner = ThreadTuner([1, 2], counts.append, block=1, rounds=1)
    >>> for _ in range(4):                       # 1 thread: 1.0 s a step; 2 threads: 16 s
    ...     tuner.record(1.0 if tuner.current == 1 else 16.0)
    >>> tuner.current, tuner.report().step_seconds
    (1, {1: 1.0, 2: 16.0})
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
import statistics
from collections import deque
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from pbtune.errors import InvalidConfigError

__all__ = ["ThreadReport", "ThreadTuner", "candidate_counts", "check_threads", "managed_threads",
           "plan_threads", "usable_cpus"]

log = logging.getLogger(__name__)

ENVIRONMENT = ("OMP_NUM_THREADS", "MKL_NUM_THREADS")  # torch's own default reads these


def check_threads(value: Any, where: str = "vectorized.train") -> int | str | None:
    """``None`` (automatic unless the environment sets a count), ``"auto"`` or an integer >= 1."""
    if value is None or value == "auto":
        return value  # type: ignore[no-any-return]
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise InvalidConfigError("threads", where, "an integer >= 1, 'auto' or None (automatic)", value)
    return value


def usable_cpus() -> int:
    """CPUs this process may run on: its affinity mask, capped by a cgroup CPU quota."""
    try:
        count = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):  # not on Linux
        count = os.cpu_count() or 1
    quota = _cgroup_quota()
    return max(1, min(count, quota) if quota else count)


def _cgroup_quota() -> int | None:
    """``ceil(quota / period)`` of the cgroup (v2 ``cpu.max`` or v1 CFS files); None without one."""
    try:
        with open("/sys/fs/cgroup/cpu.max", encoding="ascii") as handle:
            quota, period = handle.read().split()[:2]
    except (OSError, ValueError):
        try:
            with open("/sys/fs/cgroup/cpu/cpu.cfs_quota_us", encoding="ascii") as handle:
                quota = handle.read().strip()
            with open("/sys/fs/cgroup/cpu/cpu.cfs_period_us", encoding="ascii") as handle:
                period = handle.read().strip()
        except OSError:
            return None
    try:
        if quota == "max" or int(quota) <= 0:
            return None
        return max(1, math.ceil(int(quota) / int(period)))
    except ValueError:
        return None


def candidate_counts(ceiling: int) -> list[int]:
    """1, 2, 4 ... below ``ceiling``, and ``ceiling`` itself.

    Example:
        >>> candidate_counts(6)
        [1, 2, 4, 6]
    """
    counts = [1]
    while counts[-1] * 2 < ceiling:
        counts.append(counts[-1] * 2)
    if ceiling > 1:
        counts.append(ceiling)
    return counts


def plan_threads(
    setting: int | str | None, *, device_type: str, current: int, environ: Mapping[str, str], cpus: int
) -> tuple[str, list[int]]:
    """Which counts a run may use, and why: ``(mode, candidates)``.

    * ``threads=k``: ``("fixed", [k])``.
    * a CUDA device: ``("device", [current])`` (the GPU does the work; torch's setting stays).
    * ``threads=None`` with ``OMP_NUM_THREADS`` or ``MKL_NUM_THREADS`` set: ``("environment",
      [current])``: the user chose.
    * ``threads=None`` otherwise: ``("auto", ...)`` up to the current count (torch's default, or
      what the caller set with ``torch.set_num_threads``: a ceiling) and the usable CPUs.
    * ``threads="auto"``: ``("auto", ...)`` up to the usable CPUs.

    Example:
        >>> plan_threads(None, device_type="cpu", current=2, environ={}, cpus=2)
        ('auto', [1, 2])
        >>> plan_threads(None, device_type="cpu", current=2, environ={"OMP_NUM_THREADS": "2"}, cpus=2)
        ('environment', [2])
    """
    if isinstance(setting, int):
        return "fixed", [setting]
    if device_type != "cpu":
        return "device", [current]
    if setting is None:
        if any(environ.get(name, "").strip() for name in ENVIRONMENT):
            return "environment", [current]
        return "auto", candidate_counts(max(1, min(current, cpus)))
    return "auto", candidate_counts(max(1, cpus))


@dataclass(frozen=True)
class ThreadReport:
    """The thread count a run used and how it was chosen.

    ``step_seconds``: the median seconds of one batched step at each count the last probe timed
    (a dropped count: its slow step); ``probes``: how many probes ran (the first, re-checks
    every ``recheck_seconds``, and fall-backs when the chosen count slowed down).
    """

    mode: str  # "auto", "fixed", "environment" or "device"
    threads: int
    candidates: tuple[int, ...]
    step_seconds: Mapping[int, float] = field(default_factory=dict)
    probes: int = 0

    def describe(self) -> str:
        if self.mode != "auto" or len(self.candidates) < 2:
            return f"{self.threads} torch thread(s) ({self.mode})"
        timed = ", ".join(f"{n}: {1e3 * s:.2f} ms" for n, s in sorted(self.step_seconds.items()))
        return f"{self.threads} torch thread(s), chosen by timing the steps ({timed}; {self.probes} probe(s))"


class ThreadTuner:
    """Chooses the fastest of ``candidates`` thread counts from the durations of real steps.

    Call :meth:`record` with the seconds of every batched step; the count for the next step is
    :attr:`current` (set through ``set_threads`` when it changes).

    A probe runs ``rounds`` rounds; in each, every remaining candidate gets one warm-up step
    (a count's first step after a switch pays for waking its threads) and ``block`` timed
    steps. A candidate is dropped at once when a warm-up step takes ``abort_factor`` times, or a
    timed step ``drop_factor`` times, the best median so far, and at the end of a round when its
    median is ``drop_factor`` times the best. The choice is the fewest threads within
    ``margin`` of the fastest median. Afterwards, a chosen count above the smallest candidate
    whose steps take ``drop_factor`` times its probed median ``patience`` times in a row
    (another process took the cores) starts a new probe, and so does ``recheck_seconds`` of
    training since the last one (the load may have gone), or more: at least ``1 / budget``
    times what the last probe lost to its slower counts (1 s lost: 100 s).

    Args:
        candidates: thread counts to choose from, ascending; one count: no probing.
        set_threads: applies a count (``torch.set_num_threads``).
    """

    def __init__(
        self,
        candidates: Sequence[int],
        set_threads: Callable[[int], Any],
        *,
        mode: str = "auto",
        block: int = 3,
        rounds: int = 2,
        drop_factor: float = 2.0,
        abort_factor: float = 8.0,
        margin: float = 0.05,
        patience: int = 2,
        recheck_seconds: float = 30.0,
        budget: float = 0.01,
    ) -> None:
        if not candidates or any(isinstance(c, bool) or not isinstance(c, int) or c < 1 for c in candidates):
            raise InvalidConfigError("candidates", "ThreadTuner", "thread counts >= 1", list(candidates))
        self.candidates = tuple(sorted(set(candidates)))
        self.mode = mode
        self._set = set_threads
        self._block, self._rounds, self._margin = block, rounds, margin
        self._drop, self._abort, self._patience = drop_factor, abort_factor, patience
        self._recheck, self._budget = recheck_seconds, budget
        self._next_recheck = recheck_seconds
        self._log: list[tuple[int, float]] = []  # (count, seconds) of the current probe's steps
        self._queue: deque[tuple[int, bool]] = deque()
        self._samples: dict[int, list[float]] = {}
        self._slow: dict[int, float] = {}  # dropped count -> the step that dropped it
        self._round = 0
        self._chosen = self.candidates[0]
        self._reference = 0.0
        self._since = 0.0
        self._streak = 0
        self._probes = 0
        self.current = self.candidates[0]
        self._set(self.current)
        if len(self.candidates) > 1:
            self._start_probe()

    @property
    def probing(self) -> bool:
        return bool(self._queue)

    def record(self, seconds: float) -> None:
        """The last step took ``seconds`` at :attr:`current` threads; choose the next step's count."""
        if len(self.candidates) == 1:
            return
        if self._queue:
            self._probe_step(seconds)
        else:
            self._watch(seconds)
        self._apply(self._queue[0][0] if self._queue else self._chosen)

    def report(self) -> ThreadReport:
        medians = {n: statistics.median(s) for n, s in self._samples.items() if s}
        return ThreadReport(self.mode, self.current, self.candidates, {**medians, **self._slow}, self._probes)

    # -- probing --------------------------------------------------------------------------------
    def _start_probe(self) -> None:
        self._probes += 1
        self._log = []
        self._samples = {n: [] for n in self.candidates}
        self._slow = {}
        self._round = 0
        self._queue_round(list(self.candidates))
        self._apply(self._queue[0][0])

    def _queue_round(self, counts: list[int]) -> None:
        for count in counts:
            self._queue.append((count, False))
            self._queue.extend([(count, True)] * self._block)

    def _best(self) -> float | None:
        medians = [statistics.median(s) for n, s in self._samples.items() if s and n not in self._slow]
        return min(medians) if medians else None

    def _probe_step(self, seconds: float) -> None:
        count, timed = self._queue.popleft()
        self._log.append((count, seconds))
        best = self._best()
        if best is not None and not self._samples[count] and seconds > (self._drop if timed else self._abort) * best:
            self._slow[count] = seconds  # far slower than the best: no more steps at this count
            self._queue = deque(entry for entry in self._queue if entry[0] != count)
        elif timed:
            self._samples[count].append(seconds)
        if self._queue:
            return
        self._round += 1
        best = self._best()
        remaining = [n for n in self.candidates if n not in self._slow and self._samples[n]]
        for n in remaining:
            if best is not None and statistics.median(self._samples[n]) > self._drop * best:
                self._slow[n] = statistics.median(self._samples[n])
        remaining = [n for n in remaining if n not in self._slow]
        if self._round < self._rounds and len(remaining) > 1:
            self._queue_round(remaining[::-1] if self._round % 2 else remaining)  # alternate the order
            return
        self._decide(remaining)

    def _decide(self, remaining: list[int]) -> None:
        medians = {n: statistics.median(self._samples[n]) for n in remaining}
        if not medians:  # nothing timed (cannot happen: the first count is never dropped)
            medians = {self.candidates[0]: 0.0}
        fastest = min(medians.values())
        self._chosen = min(n for n, m in medians.items() if m <= fastest * (1.0 + self._margin))
        self._reference = medians[self._chosen]
        self._since, self._streak = 0.0, 0
        lost = sum(max(0.0, s - self._reference) for n, s in self._log if n != self._chosen)
        self._next_recheck = max(self._recheck, lost / self._budget)
        self._apply(self._chosen)
        log.info("vectorized: %s", self.report().describe())

    # -- after the choice -----------------------------------------------------------------------
    def _watch(self, seconds: float) -> None:
        self._since += seconds
        if self._chosen > self.candidates[0] and self._reference > 0 and seconds > self._drop * self._reference:
            self._streak += 1
        else:
            self._streak = 0
        if self._streak >= self._patience or self._since >= self._next_recheck:
            self._start_probe()

    def _apply(self, count: int) -> None:
        if count != self.current:
            self._set(count)
            self.current = count


@contextlib.contextmanager
def managed_threads(setting: int | str | None, device_type: str) -> Iterator[ThreadTuner]:
    """A :class:`ThreadTuner` for a run; the caller's torch thread count is restored afterwards."""
    import torch

    saved = torch.get_num_threads()
    mode, counts = plan_threads(setting, device_type=device_type, current=saved, environ=os.environ,
                                cpus=usable_cpus())
    if len(counts) > 1 and os.environ.get("OMP_WAIT_POLICY", "").strip().upper() == "ACTIVE":
        log.warning(
            "vectorized: OMP_WAIT_POLICY=ACTIVE with automatic threads: OpenMP threads the probe tries and "
            "does not keep go on spinning, taking cores from the training; unset it, or pass threads="
        )
    tuner = ThreadTuner(counts, torch.set_num_threads, mode=mode)
    try:
        yield tuner
    finally:
        if torch.get_num_threads() != saved:
            torch.set_num_threads(saved)
