"""Lightning: after an exploit the member trains the donor's weights and optimizer state with the
explored hyperparameters, in the same fit, after a resume in another process, through a server
and under the worker loop."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

pytest.importorskip("lightning", reason="lightning is not installed (pip install 'pbtune[lightning]')")

import lightning.pytorch as L  # noqa: E402
import torch  # noqa: E402
from integration_helpers import config_json, pbt_config, run_script  # noqa: E402
from lightning_models import Probe, TinyModule, TinyTrainable, loaders, quiet_trainer  # noqa: E402

from pbtune import Population  # noqa: E402
from pbtune.errors import PBTuneError  # noqa: E402
from pbtune.integrations.lightning import PBTCallback  # noqa: E402

INITIAL = [{"lr": 0.05, "dropout": 0.1}, {"lr": 1e-5, "dropout": 0.3}]  # member 1 learns nothing: it is worse


def _train(member: Any, module: TinyModule, *, epochs: int = 1, finish: bool = False,
           extra: list[Any] | None = None) -> tuple[Any, PBTCallback]:
    callback = PBTCallback(member, monitor="val_loss", attributes={"dropout": "drop.p"}, finish=finish)
    trainer = quiet_trainer(max_epochs=epochs, callbacks=[callback, *(extra or [])])
    train, val = loaders()
    trainer.fit(module, train, val)
    return trainer, callback


class AfterExploit(L.Callback):
    """The module and optimizer right after the PBT callback's first exploit (it runs before this one)."""

    def __init__(self) -> None:
        self.pbt: PBTCallback | None = None
        self.seen: dict[str, Any] = {}

    def on_validation_end(self, trainer: Any, pl_module: Any) -> None:
        assert self.pbt is not None
        if self.pbt.exploits and not self.seen:
            optimizer = trainer.optimizers[0]
            configs = trainer.lr_scheduler_configs
            self.seen = {"weight": pl_module.net.weight.detach().clone(), "lr": optimizer.param_groups[0]["lr"],
                         "exp_avg": optimizer.state[pl_module.net.weight]["exp_avg"].clone(),
                         "dropout": pl_module.drop.p,
                         "base_lr": configs[0].scheduler.base_lrs[0] if configs else None,
                         "last_epoch": configs[0].scheduler.last_epoch if configs else None}


def _train_until_exploit(member: Any, module: TinyModule) -> tuple[Any, PBTCallback, dict[str, Any]]:
    """Two epochs: the decision after the first one copies the donor (the last one decides nothing)."""
    probe = AfterExploit()
    callback = PBTCallback(member, monitor="val_loss", attributes={"dropout": "drop.p"}, finish=False)
    probe.pbt = callback
    trainer = quiet_trainer(max_epochs=2, callbacks=[callback, probe])
    train, val = loaders()
    trainer.fit(module, train, val)
    return trainer, callback, probe.seen


def _adam_state(trainer: Any, module: TinyModule) -> torch.Tensor:
    return trainer.optimizers[0].state[module.net.weight]["exp_avg"].clone()


@pytest.mark.parametrize("scheduler", [False, True], ids=["no-scheduler", "lambda-scheduler"])
def test_exploit_loads_donor_state_and_applies_explored_hparams(tmp_path: Path, scheduler: bool) -> None:
    population = Population(pbt_config(tmp_path), initial=INITIAL)
    donor = TinyModule(**INITIAL[0], scheduler=scheduler, seed=0)
    donor_trainer, donor_callback = _train(population.member(0), donor)
    assert donor_callback.exploits == []  # its only report ends the fit: no decision
    member = population.member(1)
    module = TinyModule(**INITIAL[1], scheduler=scheduler, seed=1)
    assert not torch.equal(module.net.weight, donor.net.weight)

    _, callback, seen = _train_until_exploit(member, module)

    assert [e.donor.member_id for e in callback.exploits] == [0]
    explored = callback.exploits[0].hparams
    assert explored != INITIAL[0] and explored != INITIAL[1]  # perturbed from the donor's
    assert {round(explored[k] / INITIAL[0][k], 6) for k in ("lr", "dropout")} <= {0.8, 1.2}
    # the donor's weights and Adam moments, not the member's own
    assert torch.equal(seen["weight"], donor.net.weight)
    assert torch.equal(seen["exp_avg"], _adam_state(donor_trainer, donor))
    if scheduler:  # lr is the schedule's base; the current lr keeps the donor's schedule factor
        donor_scheduler = donor_trainer.lr_scheduler_configs[0].scheduler
        assert seen["base_lr"] == pytest.approx(explored["lr"])
        assert seen["last_epoch"] == donor_scheduler.last_epoch
        assert seen["lr"] == pytest.approx(explored["lr"] * 0.5 ** donor_scheduler.last_epoch)
    else:
        assert seen["lr"] == pytest.approx(explored["lr"])
    assert seen["dropout"] == pytest.approx(explored["dropout"])
    kinds = [e.kind for e in population.store.events("integ") if e.member_id == 1]
    assert kinds[-2:] == ["exploit", "explore"]


def test_training_goes_on_with_the_explored_lr_in_the_same_fit(tmp_path: Path) -> None:
    population = Population(pbt_config(tmp_path), initial=INITIAL)
    _train(population.member(0), TinyModule(**INITIAL[0], seed=0))
    member = population.member(1)
    module = TinyModule(**INITIAL[1], seed=1)
    seen: list[float] = []

    class LrAtEpochStart(Probe):
        def on_train_epoch_start(self, trainer: Any, pl_module: Any) -> None:
            seen.append(trainer.optimizers[0].param_groups[0]["lr"])

    _train(member, module, epochs=2, extra=[LrAtEpochStart()])
    assert seen[0] == pytest.approx(INITIAL[1]["lr"])
    first_explored = population.store.events("integ")  # epoch 2 trained with the hparams of the first exploit
    explores = [e for e in first_explored if e.member_id == 1 and e.kind == "explore"]
    assert seen[1] == pytest.approx(explores[0].new_hparams["lr"])
    assert len(explores) == 1 and member.step == 2  # the last validation reports and decides nothing


@pytest.mark.slow  # a child process imports the framework: ~20 s on 2 busy cores
def test_resume_in_another_process_restores_weights_optimizer_and_hparams(tmp_path: Path) -> None:
    config = pbt_config(tmp_path)
    population = Population(config, initial=INITIAL)
    _train(population.member(0), TinyModule(**INITIAL[0], seed=0))
    member = population.member(1)
    module = TinyModule(**INITIAL[1], seed=1)
    trainer, callback, _ = _train_until_exploit(member, module)  # then a second epoch with the explored hparams
    assert callback.exploits
    out = tmp_path / "probe.pt"

    run_script("lightning_models.py", config_json(config), "1", str(out))

    seen = torch.load(out, weights_only=True)
    assert torch.equal(seen["weight"], module.net.weight)  # its last checkpoint, not the fresh module's
    assert torch.equal(seen["exp_avg"], _adam_state(trainer, module))
    assert seen["lr"] == pytest.approx(callback.exploits[0].hparams["lr"])  # explored, not the module's 0.5
    assert seen["dropout"] == pytest.approx(callback.exploits[0].hparams["dropout"])
    assert seen["step"] == 3  # the member kept counting


def test_through_a_server_with_pbtclient(tmp_path: Path) -> None:
    pytest.importorskip("fastapi", reason="the server extra is not installed")
    from pbtune.server.client import PBTClient
    from pbtune.server.runner import PBTServer

    key = "integration-key-0123456789"
    server = PBTServer(0, key, config=pbt_config(tmp_path), upload_dir=str(tmp_path / "uploads")).start()
    clients: list[PBTClient] = []
    try:
        for member_id in (0, 1):
            clients.append(PBTClient(server.url, None, key, member_id=member_id, checkpoint_mode="upload",
                                     cache_dir=str(tmp_path / f"cache{member_id}"), retry_seconds=5.0))
        lr0 = clients[0].hparams["lr"]
        lr1 = clients[1].hparams["lr"]
        # the member with the smaller sampled lr trains second and is made worse by a zero lr
        first, second = (0, 1) if lr0 >= lr1 else (1, 0)
        donor = TinyModule(lr=0.05, seed=0)
        _train(clients[first], donor)
        module = TinyModule(lr=1e-5, seed=1)
        _, callback, seen = _train_until_exploit(clients[second], module)
        assert [e.donor.member_id for e in callback.exploits] == [first]
        explored = callback.exploits[0].hparams
        assert torch.equal(seen["weight"], donor.net.weight)
        assert seen["lr"] == pytest.approx(explored["lr"])
        assert explored["lr"] != pytest.approx(clients[first].hparams["lr"])
        assert clients[second].hparams == explored
    finally:
        for client in clients:
            client.close()
        server.stop()


def test_trainable_under_the_worker_loop(tmp_path: Path) -> None:
    from pbtune.engine.worker import Worker

    config = pbt_config(tmp_path, budget=3)
    population = Population(config, initial=INITIAL)
    Worker(config, TinyTrainable, worker_id="w0").run()
    members = population.members()
    assert all(m.state.value == "finished" and m.step == 3 for m in members)
    events = population.store.events("integ")
    exploits = [e for e in events if e.kind == "exploit"]
    assert exploits and (exploits[0].member_id, exploits[0].donor_id) == (1, 0)


def test_trainable_load_then_set_hparams_gives_donor_state_with_explored_lr(tmp_path: Path) -> None:
    donor = TinyTrainable()
    donor.setup({"lr": 0.05, "dropout": 0.1})
    donor.step()
    path = str(tmp_path / "donor.pt")
    donor.save(path)
    donor_weight = donor.module.net.weight.detach().clone()
    donor_moment = _adam_state(donor.trainer, donor.module)

    other = TinyTrainable(seed=1)
    other.setup({"lr": 1e-5, "dropout": 0.3})
    other.step()
    other.load(path)
    other.set_hparams({"lr": 0.06, "dropout": 0.12})
    assert torch.equal(other.module.net.weight, donor_weight)
    assert other.module.drop.p == pytest.approx(0.12)
    probe = Probe()
    other.trainer_kwargs = lambda: {"accelerator": "cpu", "callbacks": [probe]}  # type: ignore[method-assign]
    other.step()
    assert probe.seen["lr"] == pytest.approx(0.06)
    assert torch.equal(probe.seen["weight"], donor_weight)
    assert torch.equal(probe.seen["exp_avg"], donor_moment)


def test_missing_metric_and_bad_member_fail_clearly(tmp_path: Path) -> None:
    from pbtune.errors import InvalidConfigError

    with pytest.raises(InvalidConfigError, match="`member` of `lightning.PBTCallback`"):
        PBTCallback(object())  # type: ignore[arg-type]
    population = Population(pbt_config(tmp_path), initial=INITIAL)
    callback = PBTCallback(population.member(0), monitor="val_acc")
    trainer = quiet_trainer(callbacks=[callback])
    train, val = loaders()
    with pytest.raises(PBTuneError, match="'val_acc' is not among the logged metrics"):
        trainer.fit(TinyModule(), train, val)


def test_unknown_optimizer_key_is_an_error_not_a_silent_drop(tmp_path: Path) -> None:
    config = pbt_config(tmp_path, space={"lr": {"type": "float", "low": 1e-4, "high": 1.0},
                                         "momentum": {"type": "float", "low": 0.1, "high": 0.9}})
    member = Population(config).member(0)
    trainer = quiet_trainer(callbacks=[PBTCallback(member)])
    train, val = loaders()
    with pytest.raises(PBTuneError, match="'momentum' maps to the optimizer's 'momentum', which Adam"):
        trainer.fit(TinyModule(), train, val)


@pytest.mark.slow  # spawns a worker process that imports Lightning: ~20-40 s on a busy machine
def test_process_engine_runs_the_lightning_trainable(tmp_path: Path) -> None:
    from integration_helpers import HERE

    import pbtune

    config = pbt_config(tmp_path, budget=3, workers=1, trainable=f"{HERE / 'lightning_models.py'}:TinyTrainable")
    result = pbtune.run(config=config, progress=False, initial=INITIAL)
    assert all(m.state.value == "finished" and m.step == 3 for m in result.members)
    assert any(entry for entry in result.schedule)
    saved = torch.load(result.checkpoint_path, weights_only=True)
    module = TinyModule()
    module.load_state_dict(saved["state_dict"])  # the best member's weights load into a fresh module
    assert saved["optimizer_states"] and saved["optimizer_states"][0]["param_groups"][0]["lr"] == pytest.approx(
        result.best.hparams["lr"])


@pytest.mark.slow  # a `pbtune worker` process that imports Lightning
def test_pbtune_worker_runs_the_lightning_trainable(tmp_path: Path) -> None:
    import os
    import subprocess
    import sys

    from integration_helpers import HERE, SRC

    config = pbt_config(tmp_path, budget=2, trainable=f"{HERE / 'lightning_models.py'}:TinyTrainable")
    population = Population(config, initial=INITIAL)
    done = subprocess.run([sys.executable, "-m", "pbtune.cli", "worker", "--run", "integ", "--storage", config.storage,
                           "--poll", "0.1"], env={**os.environ, "PYTHONPATH": str(SRC)},
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    members = population.members()
    assert all(m.state.value == "finished" and m.step == 2 for m in members)
    exploits = [e for e in population.store.events("integ") if e.kind == "exploit"]
    assert [(e.member_id, e.donor_id) for e in exploits] == [(1, 0)]


def test_a_hyperparameter_no_rule_applies_is_named_once(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    space = {"lr": {"type": "float", "low": 1e-4, "high": 1.0}, "batch": {"type": "int", "low": 8, "high": 64}}
    member = Population(pbt_config(tmp_path, space=space)).member(0)
    with caplog.at_level("WARNING", logger="pbtune.integrations"):
        _train(member, TinyModule(), epochs=2)
    named = [r.getMessage() for r in caplog.records if "'batch'" in r.getMessage()]
    assert len(named) == 1 and "on_hparams" in named[0]
    assert not any("'lr'" in r.getMessage() for r in caplog.records)
