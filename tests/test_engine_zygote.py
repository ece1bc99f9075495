"""The local engine's workers fork from a warm zygote that imports the trainable by name."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import pytest

SRC = str(Path(__file__).resolve().parents[1] / "src")

SCRIPT = textwrap.dedent(
    """
    import json, os, sys
    import pbtune

    with open(os.environ["MARKS"], "a") as handle:  # who executes this file, and as what
        handle.write(__name__ + "\\n")


    class Count(pbtune.Trainable):
        def setup(self, hparams):
            self.x, self.total = hparams["x"], 0.0

        def step(self):
            self.total += self.x
            return {"score": self.total}

        def save(self, path):
            open(path, "w").write(repr(self.total))

        def load(self, path):
            self.total = float(open(path).read())


    if __name__ == "__main__":
        folder = sys.argv[1]
        pids = []
        for name in ("first", "second"):  # two runs from one process: the zygote stays warm
            result = pbtune.run(Count, name=name, progress=False, population=4, workers=2, budget=6,
                                ready={"interval": 3}, space={"x": {"type": "float", "low": 0.1, "high": 1.0}},
                                storage=f"sqlite:///{folder}/{name}.db", checkpoints=f"{folder}/ck-{name}")
            store = pbtune.open_store(f"sqlite:///{folder}/{name}.db")
            assert all(m.step == 6 for m in store.list_members(name))
        print(json.dumps({"best": result.best.score}))
    """
)


def _env(tmp_path: Path) -> dict[str, str]:
    return dict(os.environ, MARKS=str(tmp_path / "marks"),
                PYTHONPATH=os.pathsep.join(p for p in (SRC, os.environ.get("PYTHONPATH")) if p))


@pytest.mark.skipif(not hasattr(os, "fork"), reason="the zygote forks")
def test_workers_never_rerun_the_scripts_main_and_one_zygote_serves_both_runs(tmp_path: Path) -> None:
    script = tmp_path / "train.py"
    script.write_text(SCRIPT)
    done = subprocess.run([sys.executable, str(script), str(tmp_path)], capture_output=True, text=True,
                          env=_env(tmp_path), timeout=240)
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout.strip().splitlines()[-1])["best"] > 0
    marks = (tmp_path / "marks").read_text().split()
    # the script ran once as __main__ (the driver) and was imported once by name (the zygote),
    # not once per worker (2 workers x 2 runs) as spawn's re-run of __main__ did
    assert marks.count("__main__") == 1
    assert len(marks) == 2 and marks[1].startswith("pbtune_user_"), marks


@pytest.mark.skipif(not hasattr(os, "fork"), reason="the zygote forks")
def test_pbtune_run_command_prestarts_the_zygote_and_finishes(tmp_path: Path) -> None:
    trainable = tmp_path / "count.py"
    trainable.write_text(SCRIPT)
    config = {"name": "cli", "trainable": f"{trainable}:Count", "population": 2, "workers": 2, "budget": 4,
              "ready": {"interval": 2}, "space": {"x": {"type": "float", "low": 0.1, "high": 1.0}},
              "storage": f"sqlite:///{tmp_path}/cli.db", "checkpoints": str(tmp_path / "ck")}
    (tmp_path / "run.json").write_text(json.dumps(config))
    done = subprocess.run([sys.executable, "-m", "pbtune", "run", str(tmp_path / "run.json"), "--quiet"],
                          capture_output=True, text=True, env=_env(tmp_path), cwd=tmp_path, timeout=240)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "best member" in done.stdout
    marks = (tmp_path / "marks").read_text().split()
    assert len(marks) == 1 and marks[0].startswith("pbtune_user_"), marks  # the zygote's import only


@pytest.mark.parametrize(
    ("source", "error", "match"),
    [("raise RuntimeError('cannot import me')\n", RuntimeError, "cannot import me"),
     ("x = 1\n", ValueError, "`trainable` of `config` must be an importable Trainable"),
     ("Nothing = 1\n", ValueError, "`trainable` of `config` must be a subclass of pbtune.Trainable")],
)
def test_a_trainable_the_zygote_cannot_load_fails_in_the_driver(
    tmp_path: Path, source: str, error: type[Exception], match: str
) -> None:
    import pbtune

    broken = tmp_path / "broken.py"
    broken.write_text(source)
    with pytest.raises(error, match=match):
        pbtune.run(f"{broken}:Nothing", name="b", progress=False, population=2, budget=2,
                   space={"x": {"type": "float", "low": 0.1, "high": 1.0}},
                   storage=f"sqlite:///{tmp_path}/b.db", checkpoints=str(tmp_path / "ck"))


def test_concurrent_runs_of_different_trainables_keep_their_own_workers(tmp_path: Path) -> None:
    import threading

    import pbtune

    outcome: dict[str, Any] = {}

    def drive(name: str, trainable: str) -> None:
        try:
            outcome[name] = pbtune.run(
                trainable, name=name, progress=False, population=3, workers=1, budget=8, ready={"interval": 4},
                space={"x": {"type": "float", "low": 0.1, "high": 1.0}, "lr": {"type": "float", "low": 0.01,
                                                                               "high": 0.1}},
                trainable_args={"step_seconds": 0.01} if name == "quadratic" else {},
                storage=f"sqlite:///{tmp_path}/{name}.db", checkpoints=str(tmp_path / f"ck-{name}"))
        except BaseException as exc:  # surfaced below
            outcome[name] = exc

    threads = [threading.Thread(target=drive, args=("quadratic", "pbtune.testing.trainables:Quadratic")),
               threading.Thread(target=drive, args=("counter", "pbtune.testing.trainables:Counter"))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=240)
    for name in ("quadratic", "counter"):
        assert not isinstance(outcome[name], BaseException), outcome[name]
        members = pbtune.open_store(f"sqlite:///{tmp_path}/{name}.db").list_members(name)
        assert [m.step for m in members] == [8, 8, 8]


MAIN_FILE_SCRIPT = textwrap.dedent(
    """
    import os, sys
    import pbtune


    class WhereAmI(pbtune.Trainable):
        def setup(self, hparams):
            self.x, self.total = hparams["x"], 0.0
            main = sys.modules["__main__"]  # the driver's script if forked from it; `-c` if fresh
            with open(os.environ["MARKS"], "a") as handle:
                handle.write(f"{getattr(main, '__file__', None)}\\n")
            if os.environ.get("THREADS"):  # OpenMP with 2 threads after the driver ran its pool
                import torch

                torch.set_num_threads(2)
                self.total += float((torch.ones(1 << 18) * self.x).sum()) * 0.0

        def step(self):
            self.total += self.x
            return {"score": self.total}

        def save(self, path):
            open(path, "w").write(repr(self.total))

        def load(self, path):
            self.total = float(open(path).read())


    if __name__ == "__main__":
        if os.environ.get("THREADS"):
            import torch

            torch.set_num_threads(2)
            x = torch.randn(600, 600)
            for _ in range(5):
                x = (x @ x).tanh()  # torch's OpenMP pool now runs in this thread
        folder = sys.argv[1]
        pbtune.run(WhereAmI, name="w", progress=False, population=2, workers=2, budget=4, ready={"interval": 2},
                   space={"x": {"type": "float", "low": 0.1, "high": 1.0}},
                   storage=f"sqlite:///{folder}/w.db", checkpoints=f"{folder}/ck")
    """
)


def _where_workers_ran(tmp_path: Path, timeout: float = 240, **env: str) -> set[str]:
    script = tmp_path / "where.py"
    script.write_text(MAIN_FILE_SCRIPT)
    done = subprocess.run([sys.executable, str(script), str(tmp_path)], capture_output=True, text=True,
                          env={**_env(tmp_path), **env}, timeout=timeout)
    assert done.returncode == 0, done.stdout + done.stderr
    return set((tmp_path / "marks").read_text().split())


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="the driver is forked on Linux only")
def test_a_script_forks_its_zygote_so_workers_start_with_the_scripts_imports(tmp_path: Path) -> None:
    assert _where_workers_ran(tmp_path) == {str(tmp_path / "where.py")}


def test_pbtune_zygote_fresh_starts_a_fresh_interpreter_instead(tmp_path: Path) -> None:
    assert _where_workers_ran(tmp_path, PBTUNE_ZYGOTE="fresh") == {"None"}


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="the driver is forked on Linux only")
def test_workers_forked_after_the_driver_ran_torch_threads_can_use_threads(tmp_path: Path) -> None:
    pytest.importorskip("torch")
    # libgomp keeps its pool per thread: a child forked from the thread that ran it hangs in its
    # first parallel region. The zygote is forked from a fresh thread, so this run finishes.
    assert _where_workers_ran(tmp_path, timeout=120, THREADS="1") == {str(tmp_path / "where.py")}


def test_the_driver_is_not_forked_with_threads_a_wal_database_cuda_or_when_told_not_to(tmp_path: Path) -> None:
    code = textwrap.dedent(
        f"""
        import os, sqlite3, threading
        from pbtune.engine._driver_fork import fork_blocker

        print(fork_blocker())
        stop = threading.Event()
        thread = threading.Thread(target=stop.wait, name="user-thread")
        thread.start()
        print(fork_blocker())
        stop.set()
        thread.join()
        db = sqlite3.connect({str(tmp_path / "x.db")!r})
        db.execute("PRAGMA journal_mode=WAL")
        db.execute("CREATE TABLE t (x)")
        print(fork_blocker())
        db.close()
        import ctypes, shutil, _ctypes  # any shared library, loaded under the CUDA driver's name
        fake = shutil.copy(_ctypes.__file__, {str(tmp_path / "libcuda.so.1")!r})
        ctypes.CDLL(fake)
        print(fork_blocker())
        os.environ["PBTUNE_ZYGOTE"] = "fresh"
        print(fork_blocker())
        """
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=_env(tmp_path),
                          timeout=60, check=True)
    lines = done.stdout.splitlines()
    if sys.platform.startswith("linux"):
        assert lines[0] == "None"
        assert lines[1] == "threads are running: user-thread"
        assert lines[2].startswith("an SQLite database is open in WAL mode") and "x.db" in lines[2]
        assert lines[3] == "the CUDA driver is loaded"  # torch.cuda.is_available() loads it: forks lose CUDA
    assert lines[4] == "PBTUNE_ZYGOTE=fresh" or not sys.platform.startswith("linux")


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="the driver is forked on Linux only")
def test_a_forked_zygote_does_not_keep_another_zygotes_pipe_open() -> None:
    from pbtune.engine._zygote import Zygote

    fresh = Zygote("pbtune.testing.trainables:Counter")
    assert fresh.wait_ready() is None
    forked = Zygote("pbtune.testing.trainables:Quadratic", fork=True)
    try:
        assert forked.wait_ready() is None
        fresh.close(timeout=10)  # EOF on its request pipe: it leaves (were the pipe held, this times out)
        assert fresh._process.poll() == 0  # left on EOF, not killed after the timeout
    finally:
        forked.close()
    assert forked._process.poll() is not None


def test_pbtune_run_reads_the_trainable_ahead_of_the_cli_only_when_sure(tmp_path: Path) -> None:
    from pbtune.__main__ import _config_trainable

    config = {"name": "ahead", "trainable": "count.py:Count", "space": {"x": {"type": "float", "low": 0, "high": 1}}}
    (tmp_path / "run.json").write_text(json.dumps(config))
    (tmp_path / "bad.yaml").write_text("name: [unclosed\n")
    path = str(tmp_path / "run.json")
    assert _config_trainable([path, "--quiet", "--workers", "3"]) == f"{tmp_path / 'count.py'}:Count"
    assert _config_trainable([str(tmp_path / "bad.yaml")]) is None  # the CLI reports that error itself
    assert _config_trainable([path, path]) is None
    assert _config_trainable(["--quiet"]) is None
