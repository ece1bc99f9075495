"""The report commands of ``pbtune``, run through the real CLI app on a real run's store."""

from __future__ import annotations

import csv
import io
import json
import os
from typing import Any

import pytest
from report_helpers import SmallRun
from typer.testing import CliRunner

from pbtune.cli import app
from pbtune.lineage import schedule
from pbtune.report.data import model_age

runner = CliRunner()


def _invoke(*args: str) -> Any:
    return runner.invoke(app, list(args), catch_exceptions=False)


def test_schedule_json_and_csv(small_run: SmallRun) -> None:
    storage = small_run.config.storage
    best = small_run.result.best.member_id
    entries = schedule(small_run.data.events, best)
    done = _invoke("schedule", "toy", "best", "--storage", storage)
    assert done.exit_code == 0
    assert json.loads(done.stdout) == [
        {"step": e.step, "hparams": dict(e.hparams), "from_member": e.member_id, "kind": e.kind} for e in entries
    ]
    member = next(m.member_id for m in small_run.data.members if len(schedule(small_run.data.events, m.member_id)) > 1)
    done = _invoke("schedule", "toy", str(member), "--format", "csv", "--storage", storage)
    assert done.exit_code == 0
    rows = list(csv.DictReader(io.StringIO(done.stdout)))
    assert [(int(r["step"]), float(r["lr"])) for r in rows] == [
        (e.step, e.hparams["lr"]) for e in schedule(small_run.data.events, member)
    ]


def test_schedule_to_a_file(small_run: SmallRun, tmp_path: Any) -> None:
    path = str(tmp_path / "s.json")
    done = _invoke("schedule", "toy", "0", "--out", path, "--storage", small_run.config.storage)
    assert done.exit_code == 0
    with open(path, encoding="utf-8") as handle:
        assert [e["step"] for e in json.load(handle)] == [e.step for e in schedule(small_run.data.events, 0)]


def test_replay_best_reproduces_its_score(small_run: SmallRun, tmp_path: Any) -> None:
    best = small_run.result.best
    save = str(tmp_path / "replayed.json")
    done = _invoke("replay", "toy", "--member", "best", "--json", "--save", save, "--storage", small_run.config.storage)
    assert done.exit_code == 0, done.stdout
    out = json.loads(done.stdout)
    assert out["member"] == best.member_id
    assert out["steps"] == model_age(small_run.data.events, best.member_id, best.step)
    assert out["score"] == out["member_score"] == best.score
    assert os.path.exists(save)
    longer = _invoke("replay", "toy", "-m", "best", "--steps", "40", "--json", "--storage", small_run.config.storage)
    assert json.loads(longer.stdout)["steps"] == 40
    text = _invoke("replay", "toy", "--storage", small_run.config.storage)
    assert "identical to the member's" in text.stdout


def test_replay_with_overridden_trainable_arguments(small_run: SmallRun) -> None:
    done = _invoke("replay", "toy", "--arg", "target=5.0", "--json", "--storage", small_run.config.storage)
    assert done.exit_code == 0
    out = json.loads(done.stdout)
    assert out["score"] != out["member_score"]  # another target: another objective
    assert -((out["metrics"]["theta"] - 5.0) ** 2) == pytest.approx(out["score"])


def test_export_then_refuse_to_overwrite(small_run: SmallRun, tmp_path: Any) -> None:
    out = str(tmp_path / "exported")
    done = _invoke("export", "toy", "--member", "best", "--out", out, "--storage", small_run.config.storage)
    assert done.exit_code == 0
    assert sorted(os.listdir(out)) == ["checkpoint.ckpt", "member.json"]
    again = runner.invoke(app, ["export", "toy", "--out", out, "--storage", small_run.config.storage])
    assert again.exit_code == 2
    assert "must be a new or empty folder" in again.stderr
    forced = _invoke("export", "toy", "-m", "0", "--out", out, "--force", "--storage", small_run.config.storage)
    assert forced.exit_code == 0
    with open(os.path.join(out, "member.json"), encoding="utf-8") as handle:
        assert json.load(handle)["member"] == 0


def test_plot_report_and_tensorboard_commands_write_files(small_run: SmallRun, tmp_path: Any) -> None:
    storage = small_run.config.storage
    done = _invoke("plot", "toy", "--out", str(tmp_path / "plots"), "--format", "svg", "--storage", storage)
    assert done.exit_code == 0
    names = ("hparams", "lineage", "schedule", "scores")
    assert sorted(os.listdir(tmp_path / "plots")) == [f"toy-{n}.svg" for n in names]
    done = _invoke("report", "toy", "--out", str(tmp_path / "r.html"), "--storage", storage)
    assert done.exit_code == 0 and done.stdout.strip() == str(tmp_path / "r.html")
    assert os.path.getsize(tmp_path / "r.html") > 10_000
    done = _invoke("tensorboard", "toy", "--logdir", str(tmp_path / "tb"), "--storage", storage)
    assert done.exit_code == 0
    assert sorted(os.listdir(tmp_path / "tb" / "toy")) == [f"member-{m.member_id:03d}" for m in small_run.data.members]


def test_watch_quiet_on_a_finished_run(small_run: SmallRun) -> None:
    done = _invoke("watch", "toy", "--quiet", "--storage", small_run.config.storage)
    assert done.exit_code == 0
    total = small_run.config.population * small_run.config.budget
    assert done.stdout.strip().splitlines() == [
        f"run toy: {total}/{total} steps (100%), best {small_run.result.best.score:.6g} "
        f"(member {small_run.result.best.member_id}), "
        f"{sum(e.kind == 'exploit' for e in small_run.data.events)} exploits, 4/4 members done"
    ]


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["schedule", "nope"], "no run named 'nope'"),
        (["schedule", "toy", "9"], "`member` of `run 'toy'` must be 'best' or one of [0, 1, 2, 3]; got '9'"),
        (["replay", "toy", "--arg", "novalue"], "`--arg` of `replay` must be KEY=VALUE; got 'novalue'"),
        (["replay", "toy", "--trainable", "nowhere:Nothing"], "`trainable` of `config`"),
        (["export", "toy", "--out", "x", "--checkpoints", "/nonexistent/ck"], "is missing from /nonexistent/ck"),
    ],
)
def test_errors_are_one_clear_line(small_run: SmallRun, args: list[str], message: str) -> None:
    done = runner.invoke(app, [*args, "--storage", small_run.config.storage])
    assert done.exit_code == 2
    assert message in done.stderr
    assert "Traceback" not in done.stderr


def test_bad_formats_are_refused_by_the_option_parser(small_run: SmallRun) -> None:
    done = runner.invoke(app, ["plot", "toy", "--format", "jpg", "--storage", small_run.config.storage])
    assert done.exit_code == 2
    flat = " ".join(done.stderr.replace("│", " ").split())  # rich draws the message in a box
    assert "'jpg' is not one of 'png', 'svg'" in flat


def test_report_commands_never_create_a_store(tmp_path: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    """issue 14 item 11: read commands open the store read-only; an empty folder stays empty."""
    monkeypatch.chdir(tmp_path)
    for command in (["schedule", "toy"], ["plot", "toy"], ["export", "toy", "--out", "x"]):
        done = runner.invoke(app, command)
        assert done.exit_code == 2 and "no runs in sqlite:///pbtune-runs/pbtune.db" in done.stderr, done.stderr
    assert list(tmp_path.iterdir()) == []
