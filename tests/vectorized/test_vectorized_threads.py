"""The vectorized engine's torch thread count: which counts a run may use, and the choice by timing.

The tuner is driven with made-up step durations (no clocks, no timing assertions); the engine
tests check that a run uses the count it reports and gives the caller's count back.
"""

from __future__ import annotations

import pytest

torch = pytest.importorskip("torch", reason="the vectorized engine needs PyTorch (pip install 'pbtune[torch]')")
from vectorized_helpers import blobs, mlp  # noqa: E402

import pbtune.vectorized as pv  # noqa: E402
from pbtune import Float  # noqa: E402
from pbtune.errors import InvalidConfigError  # noqa: E402
from pbtune.vectorized import threads as vt  # noqa: E402
from pbtune.vectorized.threads import ThreadTuner, candidate_counts, check_threads, plan_threads  # noqa: E402

SPACE = {"lr": Float(0.001, 1.0, log=True), "momentum": Float(0.0, 0.95)}


def drive(tuner: ThreadTuner, cost, steps: int) -> list[int]:
    """Record ``steps`` steps whose duration is ``cost(count, i)``; the count of every step."""
    used = []
    for i in range(steps):
        used.append(tuner.current)
        tuner.record(cost(tuner.current, i))
    return used


# -- which counts -------------------------------------------------------------------------------
def test_candidates_are_powers_of_two_up_to_the_ceiling():
    assert candidate_counts(1) == [1]
    assert candidate_counts(2) == [1, 2]
    assert candidate_counts(6) == [1, 2, 4, 6]
    assert candidate_counts(16) == [1, 2, 4, 8, 16]


def test_plan_honours_the_user_and_the_environment_and_probes_otherwise():
    cpu = dict(device_type="cpu", environ={}, cpus=8)
    assert plan_threads(3, current=8, **cpu) == ("fixed", [3])
    assert plan_threads(None, current=8, **cpu) == ("auto", [1, 2, 4, 8])
    # the caller's torch.set_num_threads is a ceiling, and so are the usable CPUs
    assert plan_threads(None, current=2, **cpu) == ("auto", [1, 2])
    assert plan_threads(None, current=1, **cpu) == ("auto", [1])
    assert plan_threads(None, device_type="cpu", current=64, environ={}, cpus=2) == ("auto", [1, 2])
    # OMP_NUM_THREADS / MKL_NUM_THREADS set: the user chose; "auto" probes anyway, up to the CPUs
    for name in ("OMP_NUM_THREADS", "MKL_NUM_THREADS"):
        env = {name: "4"}
        assert plan_threads(None, device_type="cpu", current=4, environ=env, cpus=8) == ("environment", [4])
        assert plan_threads("auto", device_type="cpu", current=4, environ=env, cpus=8) == ("auto", [1, 2, 4, 8])
    assert plan_threads(None, device_type="cuda", current=8, environ={}, cpus=8) == ("device", [8])
    assert plan_threads(2, device_type="cuda", current=8, environ={}, cpus=8) == ("fixed", [2])


@pytest.mark.parametrize("bad", [0, -1, 1.5, True, "many", "2"])
def test_a_bad_thread_setting_names_the_field(bad):
    with pytest.raises(InvalidConfigError, match="`threads` of `vectorized.train` must be an integer >= 1"):
        check_threads(bad)
    x, y = blobs(24)
    with pytest.raises(InvalidConfigError, match="`threads`"):
        pv.VectorizedPBT(mlp, SPACE, population=2, data=(x, y), threads=bad)


def test_usable_cpus_is_at_least_one_and_at_most_the_cpu_count():
    import os

    assert 1 <= vt.usable_cpus() <= (os.cpu_count() or 1)


# -- the choice -----------------------------------------------------------------------------------
def test_an_oversubscribed_count_costs_one_step_and_is_not_chosen():
    calls = []
    tuner = ThreadTuner([1, 2], calls.append, recheck_seconds=1e9)
    used = drive(tuner, lambda n, i: 1.0 if n == 1 else 16.0, 40)
    assert used.count(2) == 1  # its warm-up step was 16x the 1-thread median: dropped at once
    assert tuner.current == 1 and not tuner.probing
    assert calls == [1, 2, 1]
    report = tuner.report()
    assert report.mode == "auto" and report.threads == 1 and report.step_seconds == {1: 1.0, 2: 16.0}


def test_a_moderately_slower_count_is_dropped_after_its_first_timed_step():
    tuner = ThreadTuner([1, 2], lambda n: None, recheck_seconds=1e9)
    used = drive(tuner, lambda n, i: 1.0 if n == 1 else 3.0, 40)
    assert used.count(2) == 2  # warm-up (3x: under the abort factor) + one timed step (over 2x)
    assert tuner.current == 1


def test_a_faster_count_is_chosen_after_alternating_rounds():
    calls = []
    tuner = ThreadTuner([1, 2], calls.append, block=3, rounds=2)
    used = drive(tuner, lambda n, i: 1.0 if n == 1 else 0.6, 20)
    # round 1: 1 then 2 (warm-up + 3 timed each); round 2 in the other order; then 2 stays
    assert used[:16] == [1] * 4 + [2] * 4 + [2] * 4 + [1] * 4
    assert used[16:] == [2] * 4
    assert tuner.current == 2 and tuner.report().step_seconds == {1: 1.0, 2: 0.6}


def test_a_slow_warm_up_step_does_not_drop_a_fast_count():
    def cost(n, i):
        if n == 1:
            return 1.0
        return 5.0 if i == 4 else 0.6  # step 4 is the first at 2 threads: waking its threads

    tuner = ThreadTuner([1, 2], lambda n: None)
    drive(tuner, cost, 20)
    assert tuner.current == 2


def test_fewer_threads_win_unless_more_are_clearly_faster():
    tuner = ThreadTuner([1, 2, 4], lambda n: None, margin=0.05, recheck_seconds=1e9)
    drive(tuner, lambda n, i: {1: 1.0, 2: 0.97, 4: 0.99}[n], 40)
    assert tuner.current == 1
    tuner = ThreadTuner([1, 2, 4, 8], lambda n: None, recheck_seconds=1e9)
    drive(tuner, lambda n, i: {1: 1.0, 2: 0.6, 4: 0.4, 8: 0.7}[n], 60)
    assert tuner.current == 4


def test_noise_in_a_step_does_not_change_the_choice():
    spikes = {9, 21}  # two timed steps at 2 threads hit by another process

    def cost(n, i):
        return 1.0 if n == 1 else (12.0 if i in spikes else 0.6)

    tuner = ThreadTuner([1, 2], lambda n: None)
    drive(tuner, cost, 20)
    assert tuner.current == 2  # medians: 0.6 at 2 threads


def test_the_chosen_count_falls_back_when_another_process_takes_the_cores():
    busy_from = 30

    def cost(n, i):
        if n == 1:
            return 1.0
        return 0.6 if i < busy_from else 40.0

    tuner = ThreadTuner([1, 2], lambda n: None, patience=2, recheck_seconds=1e9)
    used = drive(tuner, cost, 60)
    assert used[busy_from - 1] == 2 and used[busy_from] == 2 and used[busy_from + 1] == 2
    assert used[busy_from + 2] == 1  # two slow steps in a row: a new probe, starting at 1 thread
    assert tuner.current == 1 and tuner.report().probes == 2
    assert used[busy_from + 2:].count(2) == 1  # the new probe's one (aborted) step at 2 threads


def test_one_slow_step_of_the_chosen_count_is_not_a_fall_back():
    tuner = ThreadTuner([1, 2], lambda n: None, patience=2, recheck_seconds=1e9)
    drive(tuner, lambda n, i: 1.0 if n == 1 else (40.0 if i == 30 else 0.6), 60)
    assert tuner.current == 2 and tuner.report().probes == 1


def test_a_recheck_finds_the_cores_free_again():
    def cost(n, i):
        if n == 1:
            return 1.0
        return 16.0 if i < 20 else 0.6  # busy at first, free later

    tuner = ThreadTuner([1, 2], lambda n: None, recheck_seconds=10.0, budget=1.0)  # budget: see below
    used = drive(tuner, cost, 60)
    assert used[10] == 1  # first probe: 1 thread
    assert tuner.current == 2 and tuner.report().probes >= 2


def test_a_costly_probe_is_repeated_less_often():
    # a bad count's one step costs 100 s at 16x: the next probe waits until that is 1 % of the training
    tuner = ThreadTuner([1, 2], lambda n: None, recheck_seconds=30.0, budget=0.01)
    used = drive(tuner, lambda n, i: 1.0 if n == 1 else 101.0, 400)
    assert used.count(2) == 1 and tuner.report().probes == 1  # 300 s of training later: no second probe
    cheap = ThreadTuner([1, 2], lambda n: None, recheck_seconds=30.0, budget=0.01)
    used = drive(cheap, lambda n, i: 1.0 if n == 1 else 1.2, 400)  # 2 threads only a little slower
    # each probe loses 8 steps x 0.2 s: the next one comes 160 s later (at steps ~178 and ~355)
    assert cheap.report().probes == 3 and cheap.current == 1
    assert used.count(2) == 3 * 8


def test_one_candidate_never_probes_or_switches():
    calls = []
    tuner = ThreadTuner([3], calls.append, mode="fixed")
    drive(tuner, lambda n, i: 100.0, 10)
    assert calls == [3] and tuner.current == 3 and not tuner.probing
    assert tuner.report().describe() == "3 torch thread(s) (fixed)"


def test_bad_candidates_are_rejected():
    with pytest.raises(InvalidConfigError, match="`candidates` of `ThreadTuner`"):
        ThreadTuner([], lambda n: None)
    with pytest.raises(InvalidConfigError, match="`candidates`"):
        ThreadTuner([0, 1], lambda n: None)


# -- the engine -----------------------------------------------------------------------------------
def _settings(tmp_path, name, **overrides):
    x, y = blobs(96)
    settings = dict(population=4, data=(x, y), batch_size=16, batches_per_step=3, steps=4, ready={"interval": 2},
                    seed=3, name=name, storage=f"sqlite:///{tmp_path}/pbt.db", checkpoints=str(tmp_path / "ck"))
    settings.update(overrides)
    return settings


@pytest.fixture
def caller_threads():
    saved = torch.get_num_threads()
    yield saved
    torch.set_num_threads(saved)


def test_a_set_count_is_used_and_the_callers_count_restored(tmp_path, caller_threads):
    torch.set_num_threads(1)
    seen = []
    result = pv.train(mlp, SPACE, **_settings(tmp_path, "fixed", threads=2,
                                              loss=lambda o, t: seen.append(torch.get_num_threads())
                                              or torch.nn.functional.cross_entropy(o, t)))
    assert result.threads.mode == "fixed" and result.threads.threads == 2
    assert seen and set(seen) == {2}  # the loss ran inside the training steps
    assert torch.get_num_threads() == 1


def test_automatic_threads_time_every_step_and_restore_the_callers_count(tmp_path, monkeypatch, caller_threads):
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    monkeypatch.delenv("MKL_NUM_THREADS", raising=False)
    monkeypatch.setattr(vt, "usable_cpus", lambda: 2)
    recorded = []

    class Recording(ThreadTuner):
        def record(self, seconds):
            recorded.append((self.current, seconds))
            super().record(seconds)

    monkeypatch.setattr(vt, "ThreadTuner", Recording)
    torch.set_num_threads(2)
    result = pv.train(mlp, SPACE, **_settings(tmp_path, "auto"))
    assert len(recorded) == 4 * 3  # one per batched step (steps x batches_per_step)
    assert {count for count, _ in recorded} <= {1, 2} and all(s > 0 for _, s in recorded)
    assert result.threads.mode == "auto" and result.threads.candidates == (1, 2)
    assert result.threads.threads in (1, 2)
    assert torch.get_num_threads() == 2


def test_the_environment_wins_when_threads_is_not_given(tmp_path, monkeypatch, caller_threads):
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    torch.set_num_threads(1)
    result = pv.train(mlp, SPACE, **_settings(tmp_path, "env"))
    assert result.threads.mode == "environment" and result.threads.threads == 1


def test_spinning_openmp_threads_with_automatic_threads_are_warned_about(monkeypatch, caplog, caller_threads):
    import logging

    monkeypatch.setattr(vt, "usable_cpus", lambda: 2)
    monkeypatch.setenv("OMP_WAIT_POLICY", "active")
    with caplog.at_level(logging.WARNING, logger="pbtune.vectorized.threads"):
        with vt.managed_threads(1, "cpu") as fixed:
            assert fixed.candidates == (1,)
        assert "OMP_WAIT_POLICY" not in caplog.text  # a fixed count probes nothing
        with vt.managed_threads("auto", "cpu") as tuner:
            assert tuner.candidates == (1, 2)
    assert "OMP_WAIT_POLICY=ACTIVE with automatic threads" in caplog.text
