"""The vectorized population engine: PBT with the whole population as one batched PyTorch model.

Importing this package is cheap (the CLI imports it); torch is imported when a name is used.

Example::

    import pbtune.vectorized as pv
    result = pv.train(make_mlp, {"lr": pbtune.Float(1e-3, 0.5, log=True)}, population=32,
                      data=(x, y), eval_data=(xv, yv), batch_size=64, batches_per_step=25, steps=40,
                      ready={"interval": 4}, name="digits-vec")
"""

from __future__ import annotations

import importlib
from typing import Any

__all__ = [
    "Adam",
    "AdamW",
    "ChunkPlan",
    "SGD",
    "StackedPopulation",
    "VectorizedPBT",
    "VectorizedResult",
    "extract_member",
    "load_checkpoint",
    "member_init_seed",
    "train",
]

_WHERE = {
    "Adam": "optim",
    "AdamW": "optim",
    "SGD": "optim",
    "ChunkPlan": "chunking",
    "StackedPopulation": "population",
    "load_checkpoint": "checkpoint_file",
    "extract_member": "checkpoint_file",
    "VectorizedPBT": "engine",
    "VectorizedResult": "engine",
    "member_init_seed": "settings",
    "train": "engine",
}


def __getattr__(name: str) -> Any:
    module = _WHERE.get(name)
    if module is None:
        raise AttributeError(f"module 'pbtune.vectorized' has no attribute {name!r}")
    try:
        loaded = importlib.import_module(f"pbtune.vectorized.{module}")
    except ModuleNotFoundError as exc:
        if exc.name == "torch":
            raise ImportError("pbtune.vectorized needs PyTorch: pip install 'pbtune[torch]'") from exc
        raise
    return getattr(loaded, name)


def __dir__() -> list[str]:
    return sorted(__all__)
