"""The examples under examples/integrations run end to end with small settings."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType

import pytest
from integration_helpers import run_script

from pbtune import open_store

EXAMPLES = Path(__file__).resolve().parents[2] / "examples" / "integrations"


def _load(name: str) -> ModuleType:
    spec = importlib.util.spec_from_file_location(f"example_{name}", EXAMPLES / f"{name}.py")
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


def test_transformers_search_example(tmp_path: Path) -> None:
    pytest.importorskip("transformers", reason="transformers is not installed (pip install 'pbtune[transformers]')")
    pytest.importorskip("accelerate", reason="accelerate is not installed (pip install 'pbtune[transformers]')")
    best = _load("transformers_search").main(["--population", "2", "--steps", "24", "--eval-steps", "8",
                                              "--dir", str(tmp_path)])
    members = best.run_summary.members
    assert len(members) == 2 and all(m.state.value == "finished" and m.step == 3 for m in members)
    assert best.objective == min(m.score for m in members)


def test_wandb_example_writes_offline_runs(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    pytest.importorskip("wandb", reason="wandb is not installed (pip install 'pbtune[wandb]')")
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    result = _load("wandb_toy").main(["--dir", str(tmp_path), "--population", "2", "--budget", "10"])
    assert all(m.step == 10 for m in result.members)
    assert len(list((tmp_path / "wandb").glob("offline-run-*/run-*.wandb"))) == 2


@pytest.mark.slow  # one process per member, each importing Lightning: ~40-80 s on a shared machine
@pytest.mark.parametrize("engine", [False, True], ids=["callback-processes", "pbtune-run"])
def test_lightning_example(tmp_path: Path, engine: bool) -> None:
    pytest.importorskip("lightning", reason="lightning is not installed (pip install 'pbtune[lightning]')")
    pytest.importorskip("sklearn", reason="the example's data comes with scikit-learn")
    run_script(str(EXAMPLES / "lightning_digits.py"), "--population", "2", "--epochs", "3", "--dir", str(tmp_path),
               *(["--engine"] if engine else []), timeout=600)
    members = open_store(f"sqlite:///{tmp_path}/pbtune.db").list_members("lightning-digits")
    assert all(m.state.value == "finished" and m.step == 3 for m in members)


@pytest.mark.slow  # one process per member, each importing Keras and torch
def test_keras_example(tmp_path: Path) -> None:
    pytest.importorskip("pbtune.integrations.keras", reason="keras is not installed (pip install 'pbtune[keras]')")
    pytest.importorskip("sklearn", reason="the example's data comes with scikit-learn")
    run_script(str(EXAMPLES / "keras_digits.py"), "--population", "2", "--epochs", "3", "--dir", str(tmp_path),
               env={"KERAS_BACKEND": "torch"}, timeout=600)
    members = open_store(f"sqlite:///{tmp_path}/pbtune.db").list_members("keras-digits")
    assert all(m.state.value == "finished" and m.step == 3 for m in members)
