"""A tiny Keras regression model (torch backend) for the integration tests; also a resume script."""

from __future__ import annotations

import json
import os
import sys
from typing import Any

os.environ.setdefault("KERAS_BACKEND", "torch")

import keras  # noqa: E402
import numpy as np  # noqa: E402

from pbtune.integrations.keras import KerasTrainable, PBTCallback  # noqa: E402


def data(seed: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(64, 4)).astype("float32")
    y = (x @ np.array([[1.0], [-2.0], [0.5], [3.0]], dtype="float32")).astype("float32")
    return x[:48], y[:48], x[48:], y[48:]


def tiny_model(lr: float, dropout: float, seed: int) -> keras.Model:
    keras.utils.set_random_seed(seed)
    model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(8, activation="relu", name="hidden"),
                              keras.layers.Dropout(dropout, name="drop"), keras.layers.Dense(1, name="out")])
    model.compile(optimizer=keras.optimizers.Adam(learning_rate=lr), loss="mse")
    return model


class TinyKerasTrainable(KerasTrainable):
    attributes = {"dropout": "drop.rate"}

    def build(self, hparams: Any) -> keras.Model:
        return tiny_model(hparams["lr"], hparams["dropout"], seed=int(self.args.get("seed", 0)))

    def data(self) -> dict[str, Any]:
        x, y, xv, yv = data()
        return {"x": x, "y": y, "validation_data": (xv, yv), "batch_size": 16, "shuffle": False}


class Rank(keras.callbacks.Callback):
    """Adds a fixed ``rank`` to the epoch logs, so which member copies which is known in advance."""

    def __init__(self, rank: float) -> None:
        super().__init__()
        self.rank = rank

    def on_epoch_end(self, epoch: int, logs: dict[str, Any] | None = None) -> None:
        assert logs is not None
        logs["rank"] = self.rank


class Probe(keras.callbacks.Callback):
    def __init__(self) -> None:
        super().__init__()
        self.seen: dict[str, Any] = {}

    def snapshot(self) -> dict[str, Any]:
        optimizer = self.model.optimizer
        return {
            "kernel": keras.ops.convert_to_numpy(self.model.get_layer("hidden").kernel).copy(),
            "slots": [keras.ops.convert_to_numpy(v).copy() for v in optimizer.variables],
            "lr": float(keras.ops.convert_to_numpy(optimizer.learning_rate)),
            "dropout": float(self.model.get_layer("drop").rate),
        }

    def on_train_begin(self, logs: dict[str, Any] | None = None) -> None:
        self.seen = self.snapshot()


def fit(model: keras.Model, callbacks: list[Any], epochs: int = 1) -> None:
    x, y, xv, yv = data()
    model.fit(x, y, validation_data=(xv, yv), epochs=epochs, batch_size=16, verbose=0, shuffle=False,
              callbacks=callbacks)


def resume(config_json: str, member_id: int, out: str) -> None:
    from pbtune import Population, RunConfig

    member = Population(RunConfig.from_dict(json.loads(config_json))).member(member_id)
    probe = Probe()
    model = tiny_model(lr=0.3, dropout=0.05, seed=99)
    fit(model, [Rank(0.5), PBTCallback(member, "rank", attributes={"dropout": "drop.rate"}, finish=False), probe])
    np.savez(out, kernel=probe.seen["kernel"], lr=probe.seen["lr"], dropout=probe.seen["dropout"],
             step=member.step, **{f"slot{i}": s for i, s in enumerate(probe.seen["slots"])})


if __name__ == "__main__":
    resume(sys.argv[1], int(sys.argv[2]), sys.argv[3])
