"""PBT of a tree ensemble as the paper's task describes it: the number of trees grows during
training and the maximum depth is tuned.

Each member is a scikit-learn ``RandomForestClassifier`` (or ``ExtraTreesClassifier`` with
``trainable_args.model: extra_trees``) with ``warm_start``: one PBT step adds
``trees_per_step`` trees grown with the member's current ``max_depth``, ``max_features`` and
``min_samples_leaf``. After an exploit a member keeps the donor's trees and adds its own, so
the final forest mixes trees of several depths: a schedule over the ensemble.

Score: validation log-loss (lower is better; the forest's averaged votes, clipped at 1e-3 so
that one confidently wrong vote of a small forest does not dominate). ``evaluate()`` adds
test accuracy and log-loss on a held-out split no member ever sees.

    pbtune run examples/forest/forest_small.yaml
    python examples/compare.py examples/forest/forest.yaml --seeds 0 1 2 3 4

Checkpoints are JSON, not pickles: the ensemble's hyperparameter history. Loading one
replays it (a forest with an integer ``random_state`` grows the same trees), so no bytes are
ever unpickled.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from functools import lru_cache
from typing import Any

import numpy as np

import pbtune

TREE_PARAMS = ("max_depth", "max_features", "min_samples_leaf")
DEFAULTS: dict[str, Any] = {"max_depth": 8, "max_features": 0.3, "min_samples_leaf": 1, "trees_per_step": 10}
MODELS = ("random_forest", "extra_trees")
CLIP = 1e-3


@lru_cache(maxsize=4)
def load_data(name: str = "breast_cancer", n_samples: int = 6000, noise: float = 0.0) -> tuple[np.ndarray, ...]:
    """``(x_train, y_train, x_val, y_val, x_test, y_test)``, a fixed 60/20/20 split.

    ``breast_cancer`` and ``digits`` are bundled with scikit-learn; ``hastie`` is Hastie et
    al.'s 10-feature problem (``make_hastie_10_2``); ``noisy`` is ``make_classification``
    (20 features, 8 informative, 3 classes) with a fraction ``noise`` of labels flipped, where
    deep trees overfit. Both generated sets use a fixed seed.
    """
    from sklearn import datasets

    if name == "breast_cancer":
        x, y = datasets.load_breast_cancer(return_X_y=True)
    elif name == "digits":
        x, y = datasets.load_digits(return_X_y=True)
    elif name == "hastie":
        x, y = datasets.make_hastie_10_2(n_samples=n_samples, random_state=0)
    elif name == "noisy":
        x, y = datasets.make_classification(n_samples=n_samples, n_features=20, n_informative=8, n_redundant=4,
                                            n_classes=3, flip_y=noise, class_sep=0.8, random_state=0)
    else:
        raise pbtune.InvalidConfigError("data", "trainable_args", "one of breast_cancer, digits, hastie, noisy", name)
    order = np.random.default_rng(0).permutation(len(x))
    a, b = int(0.6 * len(x)), int(0.8 * len(x))
    parts = (order[:a], order[a:b], order[b:])
    return tuple(arr for idx in parts for arr in (x[idx], y[idx]))


def clipped_log_loss(y: np.ndarray, proba: np.ndarray, classes: np.ndarray) -> float:
    """Mean negative log-probability of the true class, probabilities clipped to [CLIP, 1]."""
    index = np.searchsorted(classes, y)
    return float(-np.log(np.clip(proba[np.arange(len(y)), index], CLIP, 1.0)).mean())


class Forest(pbtune.Trainable):
    """One step = ``trees_per_step`` more trees (an hparam, or a trainable arg if not tuned)."""

    def setup(self, hparams: Mapping[str, Any]) -> None:
        os.environ.setdefault("OMP_NUM_THREADS", "1")
        model = str(self.args.get("model", "random_forest"))
        if model not in MODELS:
            raise pbtune.InvalidConfigError("model", "trainable_args", f"one of {', '.join(MODELS)}", model)
        self.kind = model
        self.x, self.y, self.x_val, self.y_val, self.x_test, self.y_test = load_data(
            str(self.args.get("data", "breast_cancer")), int(self.args.get("n_samples", 6000)),
            float(self.args.get("noise", 0.0)))
        self.history: list[tuple[int, dict[str, Any]]] = []  # (trees after the fit, hparams used)
        self.model = self._new_model()
        self.set_hparams(hparams)

    def _new_model(self) -> Any:
        from sklearn.ensemble import ExtraTreesClassifier, RandomForestClassifier

        cls = RandomForestClassifier if self.kind == "random_forest" else ExtraTreesClassifier
        return cls(n_estimators=0, warm_start=True, n_jobs=1, random_state=int(self.args.get("seed", 0)))

    def set_hparams(self, hparams: Mapping[str, Any]) -> None:
        self.hparams = {name: hparams.get(name, self.args.get(name, DEFAULTS[name]))
                        for name in (*TREE_PARAMS, "trees_per_step")}

    def _fit_to(self, trees: int, hparams: Mapping[str, Any]) -> None:
        self.model.set_params(n_estimators=trees, **{k: hparams[k] for k in TREE_PARAMS})
        self.model.fit(self.x, self.y)

    @property
    def trees(self) -> int:
        return self.history[-1][0] if self.history else 0

    def step(self) -> Mapping[str, float]:
        trees = self.trees + int(self.hparams["trees_per_step"])
        tree_params = {k: self.hparams[k] for k in TREE_PARAMS}
        self._fit_to(trees, tree_params)
        if self.history and self.history[-1][1] == tree_params:
            self.history[-1] = (trees, tree_params)  # same settings: one replay segment
        else:
            self.history.append((trees, tree_params))
        # work: trees grown this step (steps differ in cost when trees_per_step is tuned)
        return {**self._scores(self.x_val, self.y_val), "trees": float(trees),
                "work": float(self.hparams["trees_per_step"])}

    def _scores(self, x: np.ndarray, y: np.ndarray) -> dict[str, float]:
        proba = self.model.predict_proba(x)
        classes = self.model.classes_
        return {"log_loss": clipped_log_loss(y, proba, classes),
                "accuracy": float((classes[proba.argmax(1)] == y).mean())}

    def evaluate(self) -> dict[str, float]:
        """Test-split figures (for examples/compare.py)."""
        return {f"test_{k}": v for k, v in self._scores(self.x_test, self.y_test).items()}

    def save(self, path: str) -> None:
        with open(path, "w", encoding="utf-8") as handle:
            json.dump({"history": [[n, hp] for n, hp in self.history]}, handle)

    def load(self, path: str) -> None:
        with open(path, encoding="utf-8") as handle:
            history = [(int(n), dict(hp)) for n, hp in json.load(handle)["history"]]
        self.model = self._new_model()
        for trees, hparams in history:  # replay: same random_state, same trees
            self._fit_to(trees, hparams)
        self.history = history


if __name__ == "__main__":
    config = pbtune.load_config(os.path.join(os.path.dirname(__file__), "forest_small.yaml"))
    result = pbtune.run(config=config)
    print(f"best member {result.best.member_id}: validation log-loss {result.best.score:.4f} "
          f"with {dict(result.best.hparams)}")
