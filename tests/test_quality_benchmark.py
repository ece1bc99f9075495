"""benchmarks/quality.py: its JSON line has every figure, and the paired differences are the
per-seed differences of the test metric (not a timing test: the tiny run only checks structure)."""

from __future__ import annotations

import json
import math
import os
import statistics
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SCRIPT = os.path.join(ROOT, "benchmarks", "quality.py")
sys.path.insert(0, os.path.join(ROOT, "benchmarks"))

import quality  # noqa: E402
import quality_tasks  # noqa: E402


def test_paired_differences_mean_standard_error_and_wins_ties_losses() -> None:
    out = quality.paired([1.0, 2.0, 3.0], [1.0, 1.0, 5.0])
    assert out["diffs"] == [0.0, 1.0, -2.0]
    assert out["mean"] == pytest.approx(-1 / 3)
    assert out["se"] == pytest.approx(statistics.stdev([0.0, 1.0, -2.0]) / math.sqrt(3))
    assert (out["wins"], out["ties"], out["losses"]) == (1, 1, 1)
    assert quality.paired([0.5], [0.5 - 1e-12], tie=1e-9)["ties"] == 1
    with pytest.raises(ValueError, match="same seeds"):
        quality.paired([1.0, 2.0], [1.0])


def test_lineages_left_follows_exploits_back_to_the_root() -> None:
    from pbtune.types import EventRecord, MemberRecord, MemberState

    events = [
        EventRecord(1, "r", 0, 0, "init", 0.0), EventRecord(2, "r", 1, 0, "init", 0.0),
        EventRecord(3, "r", 2, 0, "init", 0.0),
        EventRecord(4, "r", 1, 4, "exploit", 0.0, donor_id=0, donor_step=4),
        EventRecord(5, "r", 2, 8, "exploit", 0.0, donor_id=1, donor_step=8),  # 2 <- 1 <- 0
    ]
    members = [MemberRecord("r", i, MemberState.FINISHED, 10, {}) for i in range(3)]
    assert quality_tasks.lineages_left(events, members) == 1
    assert quality_tasks.lineages_left(events[:3], members) == 3
    # generational: at step 4, 0 copies 1's own checkpoint, then 1 copies 0's checkpoint from
    # before 0's exploit (another key): a swap, two lineages, no cycle
    swap = [
        EventRecord(1, "r", 0, 0, "init", 0.0), EventRecord(2, "r", 1, 0, "init", 0.0),
        EventRecord(3, "r", 0, 4, "exploit", 0.0, donor_id=1, donor_step=4, donor_checkpoint="m1-s4",
                    checkpoint="m0-copy"),
        EventRecord(4, "r", 1, 4, "exploit", 0.0, donor_id=0, donor_step=4, donor_checkpoint="m0-s4",
                    checkpoint="m1-copy"),
    ]
    assert quality_tasks.lineages_left(swap, members[:2]) == 2
    # the same, but 1 copies the model 0 got by its exploit: both descend from 1
    swap[3] = EventRecord(4, "r", 1, 4, "exploit", 0.0, donor_id=0, donor_step=4, donor_checkpoint="m0-copy",
                          checkpoint="m1-copy")
    assert quality_tasks.lineages_left(swap, members[:2]) == 1


def test_script_runs_one_tiny_task_and_its_json_holds_the_per_seed_figures() -> None:
    env = {**os.environ, "PYTHONPATH": os.path.join(ROOT, "src") + os.pathsep + os.environ.get("PYTHONPATH", "")}
    proc = subprocess.run(
        [sys.executable, SCRIPT, "--tasks", "toy", "--methods", "random", "pbt", "--seeds", "2",
         "--population", "3", "--steps", "4"],
        capture_output=True, text=True, env=env, timeout=300, check=True,
    )
    figures = json.loads(proc.stdout.strip().splitlines()[-1])
    assert figures["seeds"] == 2 and figures["population"] == 3
    task = figures["tasks"]["toy"]
    assert task["steps"] == 4
    random, pbt = task["methods"]["random"], task["methods"]["pbt"]
    for row in (random, pbt):
        assert len(row["test"]) == len(row["validation"]) == len(row["lineages"]) == 2
        assert row["mean_test"] == pytest.approx(statistics.fmean(row["test"]))
        assert all(1 <= n <= 3 for n in row["lineages"])
        assert row["truly_best"] == sum(row["best_is_truly_best"])
    assert random["lineages"] == [3, 3]  # random search never exploits
    assert "vs_random" not in random
    diffs = [a - b for a, b in zip(pbt["test"], random["test"], strict=True)]
    assert pbt["vs_random"]["diffs"] == pytest.approx(diffs)
    assert pbt["vs_random"]["mean"] == pytest.approx(statistics.fmean(diffs))
    assert pbt["vs_random"]["se"] == pytest.approx(statistics.stdev(diffs) / math.sqrt(2))
    wins, ties, losses = (pbt["vs_random"][k] for k in ("wins", "ties", "losses"))
    assert (wins, ties, losses) == (sum(d > 1e-9 for d in diffs), sum(abs(d) <= 1e-9 for d in diffs),
                                    sum(d < -1e-9 for d in diffs))
    assert "random" in proc.stdout and "diff vs random" in proc.stdout  # the readable table


def test_a_method_the_installed_pbtune_rejects_is_skipped_with_a_note(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(quality.METHODS, "bogus", lambda steps: {"explore": "no-such-explore"})
    monkeypatch.setitem(quality.METHODS, "new_field", lambda steps: {"no_such_field": True})
    notes: list[str] = []
    task = quality_tasks.TASKS["toy"]
    for method in ("bogus", "new_field"):
        out = quality.run_method(task, method, [0, 1], population=2, steps=2, log=notes.append)
        assert set(out) == {"skipped"}
    assert "InvalidConfigError" in quality.run_method(task, "bogus", [0], 2, 2, notes.append)["skipped"]
    assert len(notes) == 3 and all("skipped" in note for note in notes)
    rows = quality.summarize(task, {"random": {"test": [1.0], "validation": [1.0], "lineages": [2]},
                                    "bogus": {"skipped": "x"}})
    assert rows["bogus"] == {"skipped": "x"} and rows["random"]["mean_test"] == 1.0
