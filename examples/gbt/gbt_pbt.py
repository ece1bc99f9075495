"""PBT beyond neural networks: gradient-boosted trees that keep growing across PBT steps.

Each member is a scikit-learn ``HistGradientBoostingClassifier`` with ``warm_start``: one
PBT step adds ``trees_per_step`` boosting iterations with the member's current
``learning_rate``, ``max_depth``, ``max_leaf_nodes`` and ``l2_regularization``. After an
exploit the member continues the donor's ensemble with its perturbed hyperparameters, so the
result is a schedule (e.g. a large learning rate for the first trees, smaller ones later).

Score: validation log-loss (lower is better). ``evaluate()`` adds test accuracy and log-loss.

    pbtune run examples/gbt/gbt_small.yaml
    python examples/compare.py examples/gbt/gbt.yaml --seeds 0 1 2

Checkpoints are JSON, not pickles: the hyperparameter history of the ensemble. Loading one
replays that history (boosting is deterministic here), so no bytes are ever unpickled.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from functools import lru_cache
from typing import Any

import numpy as np

import pbtune

TREE_PARAMS = ("learning_rate", "max_depth", "max_leaf_nodes", "l2_regularization")
DEFAULTS: dict[str, Any] = {"learning_rate": 0.1, "max_depth": None, "max_leaf_nodes": 31,
                            "l2_regularization": 0.0, "trees_per_step": 10}


@lru_cache(maxsize=4)
def load_data(name: str = "breast_cancer", n_samples: int = 6000) -> tuple[np.ndarray, ...]:
    """``(x_train, y_train, x_val, y_val, x_test, y_test)``, a fixed 60/20/20 split.

    ``breast_cancer`` and ``digits`` are bundled with scikit-learn; ``hastie`` is the
    generated 10-feature benchmark of Hastie et al. (``make_hastie_10_2``, fixed seed).
    """
    from sklearn import datasets

    if name == "breast_cancer":
        x, y = datasets.load_breast_cancer(return_X_y=True)
    elif name == "digits":
        x, y = datasets.load_digits(return_X_y=True)
    elif name == "hastie":
        x, y = datasets.make_hastie_10_2(n_samples=n_samples, random_state=0)
    else:
        raise pbtune.InvalidConfigError("data", "trainable_args", "one of breast_cancer, digits, hastie", name)
    order = np.random.default_rng(0).permutation(len(x))
    a, b = int(0.6 * len(x)), int(0.8 * len(x))
    parts = (order[:a], order[a:b], order[b:])
    return tuple(arr for idx in parts for arr in (x[idx], y[idx]))


class BoostedTrees(pbtune.Trainable):
    """One step = ``trees_per_step`` more boosting iterations (an hparam or a trainable arg)."""

    def setup(self, hparams: Mapping[str, Any]) -> None:
        os.environ.setdefault("OMP_NUM_THREADS", "1")
        self.x, self.y, self.x_val, self.y_val, self.x_test, self.y_test = load_data(
            str(self.args.get("data", "breast_cancer")), int(self.args.get("n_samples", 6000)))
        self.history: list[tuple[int, dict[str, Any]]] = []  # (iterations after the fit, hparams used)
        self.model = self._new_model()
        self.set_hparams(hparams)

    def _new_model(self) -> Any:
        from sklearn.ensemble import HistGradientBoostingClassifier

        return HistGradientBoostingClassifier(max_iter=0, warm_start=True, early_stopping=False,
                                              random_state=int(self.args.get("seed", 0)))

    def _param(self, hparams: Mapping[str, Any], name: str) -> Any:
        return hparams.get(name, self.args.get(name, DEFAULTS[name]))

    def set_hparams(self, hparams: Mapping[str, Any]) -> None:
        self.hparams = {name: self._param(hparams, name) for name in (*TREE_PARAMS, "trees_per_step")}

    def _fit_to(self, iterations: int, hparams: Mapping[str, Any]) -> None:
        self.model.set_params(max_iter=iterations, **{k: hparams[k] for k in TREE_PARAMS})
        self.model.fit(self.x, self.y)

    def step(self) -> Mapping[str, float]:
        from sklearn.metrics import log_loss

        iterations = (self.history[-1][0] if self.history else 0) + int(self.hparams["trees_per_step"])
        self._fit_to(iterations, self.hparams)
        tree_params = {k: self.hparams[k] for k in TREE_PARAMS}
        if self.history and self.history[-1][1] == tree_params:
            self.history[-1] = (iterations, tree_params)  # same settings: one replay segment
        else:
            self.history.append((iterations, tree_params))
        proba = self.model.predict_proba(self.x_val)
        accuracy = float((self.model.classes_[proba.argmax(1)] == self.y_val).mean())
        return {"log_loss": float(log_loss(self.y_val, proba, labels=self.model.classes_)),
                "accuracy": accuracy, "iterations": float(iterations)}

    def evaluate(self) -> dict[str, float]:
        """Test-split figures (for examples/compare.py)."""
        from sklearn.metrics import log_loss

        proba = self.model.predict_proba(self.x_test)
        return {"test_accuracy": float((self.model.classes_[proba.argmax(1)] == self.y_test).mean()),
                "test_log_loss": float(log_loss(self.y_test, proba, labels=self.model.classes_))}

    def save(self, path: str) -> None:
        with open(path, "w", encoding="utf-8") as handle:
            json.dump({"history": [[n, hp] for n, hp in self.history]}, handle)

    def load(self, path: str) -> None:
        with open(path, encoding="utf-8") as handle:
            history = [(int(n), dict(hp)) for n, hp in json.load(handle)["history"]]
        self.model = self._new_model()
        for iterations, hparams in history:  # replay: deterministic, so the same ensemble
            self._fit_to(iterations, hparams)
        self.history = history


if __name__ == "__main__":
    config = pbtune.load_config(os.path.join(os.path.dirname(__file__), "gbt_small.yaml"))
    result = pbtune.run(config=config)
    print(f"best member {result.best.member_id}: validation log-loss {result.best.score:.4f} "
          f"with {dict(result.best.hparams)}")
