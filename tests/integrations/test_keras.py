"""Keras 3 (torch backend): after an exploit the model holds the donor's weights and optimizer
variables with the explored hyperparameters, in the same fit and after a resume in another process."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

os.environ.setdefault("KERAS_BACKEND", "torch")
pytest.importorskip("keras", reason="keras is not installed (pip install 'pbtune[keras]')")

import numpy as np  # noqa: E402
from integration_helpers import config_json, pbt_config, run_script  # noqa: E402
from keras_models import Probe, Rank, TinyKerasTrainable, fit, tiny_model  # noqa: E402

from pbtune import Population  # noqa: E402
from pbtune.errors import PBTuneError  # noqa: E402
from pbtune.integrations.keras import PBTCallback  # noqa: E402

INITIAL = [{"lr": 0.05, "dropout": 0.1}, {"lr": 1e-4, "dropout": 0.3}]


def _callback(member: object, **kwargs: object) -> PBTCallback:
    return PBTCallback(member, "rank", attributes={"dropout": "drop.rate"}, finish=False, **kwargs)  # type: ignore


def _exploit(tmp_path: Path) -> tuple[object, object, object, PBTCallback, dict, object]:
    config = pbt_config(tmp_path, metric="rank")
    population = Population(config, initial=INITIAL)
    donor = tiny_model(**INITIAL[0], seed=0)
    fit(donor, [Rank(0.1), _callback(population.member(0))])
    member = population.member(1)
    model = tiny_model(**INITIAL[1], seed=1)
    callback = _callback(member)
    after = Probe()

    class AfterExploit(Probe):
        def on_epoch_end(self, epoch: int, logs: dict | None = None) -> None:
            if callback.exploits and not after.seen:
                after.seen = self.snapshot()

    probe = AfterExploit()
    fit(model, [Rank(0.9), callback, probe], epochs=2)  # the last epoch's report decides nothing
    return config, donor, member, callback, after.seen, model


def test_exploit_gives_donor_variables_with_explored_hparams(tmp_path: Path) -> None:
    _, donor, member, callback, seen, _ = _exploit(tmp_path)
    assert [e.donor.member_id for e in callback.exploits] == [0]
    explored = member.hparams
    assert {round(explored[k] / INITIAL[0][k], 6) for k in ("lr", "dropout")} <= {0.8, 1.2}
    np.testing.assert_array_equal(seen["kernel"], np.asarray(donor.get_layer("hidden").kernel.numpy()))
    donor_slots = [np.asarray(v.numpy()) for v in donor.optimizer.variables]
    names = [v.name for v in donor.optimizer.variables]
    for name, mine, theirs in zip(names, seen["slots"], donor_slots, strict=True):
        if name != "learning_rate":  # Adam's moments and iteration count are the donor's
            np.testing.assert_array_equal(mine, theirs, err_msg=name)
    assert seen["lr"] == pytest.approx(explored["lr"], rel=1e-6)
    assert seen["dropout"] == pytest.approx(explored["dropout"])


@pytest.mark.slow  # a child process imports the framework: ~20 s on 2 busy cores
def test_resume_in_another_process(tmp_path: Path) -> None:
    config, _, member, _, _, model = _exploit(tmp_path)
    final = Probe()
    final.set_model(model)
    last = final.snapshot()  # the member's last checkpoint: the epoch it trained after the exploit
    out = tmp_path / "probe.npz"
    run_script("keras_models.py", config_json(config), "1", str(out), env={"KERAS_BACKEND": "torch"})
    with np.load(out) as got:
        np.testing.assert_array_equal(got["kernel"], last["kernel"])
        for i, slot in enumerate(last["slots"]):
            np.testing.assert_allclose(got[f"slot{i}"], slot, rtol=1e-6)  # lr slot: the explored value
        assert float(got["lr"]) == pytest.approx(member.hparams["lr"], rel=1e-6)  # not the script's 0.3
        assert float(got["dropout"]) == pytest.approx(member.hparams["dropout"])
        assert int(got["step"]) == 3


def test_schedule_and_unknown_optimizer_attribute_fail_clearly(tmp_path: Path) -> None:
    import keras

    config = pbt_config(tmp_path, metric="val_loss",
                        space={"lr": {"type": "float", "low": 1e-4, "high": 1.0},
                               "momentum": {"type": "float", "low": 0.1, "high": 0.9}})
    member = Population(config).member(0)
    model = tiny_model(0.01, 0.0, seed=0)
    with pytest.raises(PBTuneError, match="'momentum' maps to the optimizer attribute 'momentum', which Adam"):
        fit(model, [PBTCallback(member)])
    scheduled = tiny_model(0.01, 0.0, seed=0)
    scheduled.compile(optimizer=keras.optimizers.SGD(keras.optimizers.schedules.ExponentialDecay(0.1, 10, 0.9)),
                      loss="mse")
    with pytest.raises(PBTuneError, match="cannot replace the optimizer's learning-rate schedule"):
        fit(scheduled, [PBTCallback(member)])


def test_dropout_built_without_rate_fails_clearly(tmp_path: Path) -> None:
    population = Population(pbt_config(tmp_path, metric="val_loss"), initial=INITIAL)
    with pytest.raises(PBTuneError, match="Dropout layer 'drop' was built with rate 0"):
        fit(tiny_model(0.01, 0.0, seed=0), [PBTCallback(population.member(0), attributes={"dropout": "drop.rate"})])


def _snapshot(model: object) -> dict:
    probe = Probe()
    probe.set_model(model)
    return probe.snapshot()


def test_trainable_load_then_set_hparams_gives_donor_variables_with_explored_hparams(tmp_path: Path) -> None:
    donor = TinyKerasTrainable()
    donor.setup({"lr": 0.05, "dropout": 0.1})
    donor.step()
    path = str(tmp_path / "donor.ckpt")  # no .npz suffix: the worker names checkpoints itself
    donor.save(path)
    theirs = _snapshot(donor.model)
    other = TinyKerasTrainable(seed=1)
    other.setup({"lr": 1e-4, "dropout": 0.3})
    other.step()
    other.load(path)
    assert _snapshot(other.model)["lr"] == pytest.approx(1e-4)  # load keeps its own hyperparameters
    other.set_hparams({"lr": 0.06, "dropout": 0.12})
    mine = _snapshot(other.model)
    np.testing.assert_array_equal(mine["kernel"], theirs["kernel"])
    names = [v.name for v in other.model.optimizer.variables]
    for name, a, b in zip(names, mine["slots"], theirs["slots"], strict=True):
        if name != "learning_rate":
            np.testing.assert_array_equal(a, b, err_msg=name)
    assert mine["lr"] == pytest.approx(0.06) and mine["dropout"] == pytest.approx(0.12)


def test_trainable_under_the_worker_loop(tmp_path: Path) -> None:
    from pbtune.engine.worker import Worker

    config = pbt_config(tmp_path, budget=2, metric="val_loss")
    population = Population(config, initial=INITIAL)
    Worker(config, TinyKerasTrainable, worker_id="w0").run()
    assert all(m.state.value == "finished" and m.step == 2 for m in population.members())
    exploits = [e for e in population.store.events("integ") if e.kind == "exploit"]
    assert [(e.member_id, e.donor_id) for e in exploits] == [(1, 0)]
