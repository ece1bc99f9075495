"""Shared by the integration tests (imported as a top-level module, like tests/server's helpers)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

from pbtune.config import RunConfig

HERE = Path(__file__).resolve().parent
SRC = HERE.parent.parent / "src"


def pbt_config(tmp_path: Path, name: str = "integ", **overrides: Any) -> RunConfig:
    """Two members, a decision at every report; the worse member always copies the better one."""
    settings: dict[str, Any] = dict(
        name=name, population=2, budget=3, mode="min", metric="val_loss", ready={"interval": 1},
        space={"lr": {"type": "float", "low": 1e-5, "high": 1.0, "log": True},
               "dropout": {"type": "float", "low": 0.0, "high": 0.5}},
        exploit={"name": "truncation", "quantile": 0.5}, explore="perturb", seed=7,
        storage=f"sqlite:///{tmp_path}/pbt.db", checkpoints=str(tmp_path / "ckpts"),
    )
    settings.update(overrides)
    return RunConfig(**settings)


def run_script(script: str, *args: str, env: dict[str, str] | None = None, timeout: float = 240) -> None:
    """Run a helper module of this folder in a fresh interpreter (the "another process" checks)."""
    environment = {**os.environ, "PYTHONPATH": os.pathsep.join([str(SRC), str(HERE)]), "OMP_NUM_THREADS": "1",
                   **(env or {})}
    done = subprocess.run([sys.executable, str(HERE / script), *args], env=environment, capture_output=True,
                          text=True, timeout=timeout)
    if done.returncode != 0:
        raise AssertionError(f"{script} failed ({done.returncode}):\n{done.stdout[-3000:]}\n{done.stderr[-6000:]}")


def config_json(config: RunConfig) -> str:
    return json.dumps(config.to_dict())
