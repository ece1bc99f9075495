"""PBT of a Keras 3 MLP (PyTorch backend) on scikit-learn's bundled digits with the Keras callback.

Each member is its own process running ``model.fit`` with
:class:`pbtune.integrations.keras.PBTCallback`; they meet in the population store. Tunes Adam's
learning rate and the dropout rate; the score is the validation loss::

    python examples/integrations/keras_digits.py --population 4 --epochs 8
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import os
import tempfile
from collections.abc import Mapping
from typing import Any

os.environ.setdefault("KERAS_BACKEND", "torch")

import keras  # noqa: E402
import numpy as np  # noqa: E402

import pbtune  # noqa: E402
from pbtune.integrations.keras import PBTCallback  # noqa: E402


def digits(seed: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    from sklearn.datasets import load_digits

    data = load_digits()
    x = (data.data / 16.0).astype("float32")
    order = np.random.default_rng(seed).permutation(len(x))
    train, val = order[:1400], order[1400:]
    return x[train], data.target[train], x[val], data.target[val]


def build(hparams: Mapping[str, Any], seed: int) -> keras.Model:
    keras.utils.set_random_seed(seed)
    model = keras.Sequential([
        keras.Input((64,)), keras.layers.Dense(128, activation="relu"),
        keras.layers.Dropout(max(hparams["dropout"], 1e-3), name="drop"),  # rate > 0: Keras needs it at build
        keras.layers.Dense(10),
    ])
    model.compile(optimizer=keras.optimizers.Adam(hparams["learning_rate"]),
                  loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True), metrics=["accuracy"])
    return model


def make_config(root: str, population: int, epochs: int) -> pbtune.RunConfig:
    return pbtune.RunConfig(
        name="keras-digits", population=population, budget=epochs, mode="min", metric="val_loss",
        space={"learning_rate": pbtune.Float(1e-4, 1e-1, log=True), "dropout": pbtune.Float(0.001, 0.5)},
        ready={"interval": 2}, exploit={"name": "truncation", "quantile": 0.25}, seed=0,
        storage=f"sqlite:///{root}/pbtune.db", checkpoints=os.path.join(root, "checkpoints"),
    )


def train_member(config_dict: Mapping[str, Any], member_id: int, epochs: int) -> None:
    member = pbtune.Population(pbtune.RunConfig.from_dict(config_dict)).member(member_id)
    x, y, xv, yv = digits()
    model = build(member.hparams, seed=member_id)
    model.fit(x, y, validation_data=(xv, yv), epochs=epochs, batch_size=64, verbose=0,
              callbacks=[PBTCallback(member, monitor="val_loss", attributes={"dropout": "drop.rate"})])


def main(argv: list[str] | None = None) -> pbtune.RunResult:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--population", type=int, default=4)
    parser.add_argument("--epochs", type=int, default=8)
    parser.add_argument("--dir", default=None, help="where the store and checkpoints go (default: a temp dir)")
    args = parser.parse_args(argv)
    config = make_config(args.dir or tempfile.mkdtemp(prefix="pbtune-keras-"), args.population, args.epochs)
    population = pbtune.Population(config)
    context = mp.get_context("spawn")
    procs = [context.Process(target=train_member, args=(config.to_dict(), i, args.epochs))
             for i in range(args.population)]
    for proc in procs:
        proc.start()
    for proc in procs:
        proc.join()
    from pbtune.engine.local import summarize

    result = summarize(config, population.store, population.checkpoints)
    print(f"best member {result.best.member_id}: val_loss {result.best_score:.4f} with {result.best.hparams}")
    for entry in result.schedule:
        print(f"  from step {entry.step}: {entry.hparams} ({entry.kind} as member {entry.member_id})")
    return result


if __name__ == "__main__":
    main()
