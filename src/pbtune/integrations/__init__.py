"""Framework integrations: PBT inside Lightning, Transformers and Keras training, W&B logging.

Each lives in its own module and needs its extra; nothing here imports a framework until asked:

* :mod:`pbtune.integrations.lightning` (``pbtune[lightning]``): ``PBTCallback``, ``LightningTrainable``
* :mod:`pbtune.integrations.transformers` (``pbtune[transformers]``): ``PBTCallback``, ``search``
* :mod:`pbtune.integrations.keras` (``pbtune[keras]``): ``PBTCallback``, ``KerasTrainable``
* :mod:`pbtune.integrations.wandb` (``pbtune[wandb]``): ``WandbMonitor``

Example::

    from pbtune.integrations.lightning import PBTCallback
"""

from __future__ import annotations

import importlib
from typing import Any

_LAZY = {
    "LightningPBTCallback": ("pbtune.integrations.lightning", "PBTCallback"),
    "LightningTrainable": ("pbtune.integrations.lightning", "LightningTrainable"),
    "TransformersPBTCallback": ("pbtune.integrations.transformers", "PBTCallback"),
    "KerasPBTCallback": ("pbtune.integrations.keras", "PBTCallback"),
    "KerasTrainable": ("pbtune.integrations.keras", "KerasTrainable"),
    "WandbMonitor": ("pbtune.integrations.wandb", "WandbMonitor"),
}

__all__ = sorted(_LAZY)


def __getattr__(name: str) -> Any:
    found = _LAZY.get(name)
    if found is None:
        raise AttributeError(f"module 'pbtune.integrations' has no attribute {name!r}")
    module, attr = found
    return getattr(importlib.import_module(module), attr)
