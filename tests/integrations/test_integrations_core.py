"""Framework-neutral parts of the integrations: lazy imports with actionable errors, and the rules
that apply hyperparameters to torch optimizers, LR schedulers and modules."""

from __future__ import annotations

import subprocess
import sys

import pytest
from integration_helpers import SRC

from pbtune.errors import InvalidConfigError, PBTuneError

torch = pytest.importorskip("torch")

from pbtune.integrations import _torch  # noqa: E402


def _python(code: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-c", code], env={"PYTHONPATH": str(SRC), "PATH": ""},
                          capture_output=True, text=True, timeout=120)


def test_import_pbtune_imports_no_framework() -> None:
    done = _python("import sys, pbtune, pbtune.integrations; "
                   "print(sorted(m for m in ('lightning', 'transformers', 'keras', 'wandb') if m in sys.modules))")
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "[]"


@pytest.mark.parametrize(("module", "blocked", "extra"), [
    ("pbtune.integrations.lightning", ["lightning", "pytorch_lightning"], "lightning"),
    ("pbtune.integrations.transformers", ["transformers"], "transformers"),
    ("pbtune.integrations.keras", ["keras"], "keras"),
])
def test_missing_framework_names_the_extra(module: str, blocked: list[str], extra: str) -> None:
    # a None entry in sys.modules makes `import name` raise ImportError, as if not installed
    block = "; ".join(f"sys.modules[{name!r}] = None" for name in blocked)
    done = _python(f"import sys; {block}; import {module}")
    assert done.returncode != 0
    assert f"pip install 'pbtune[{extra}]'" in done.stderr


def test_missing_wandb_names_the_extra() -> None:
    done = _python(
        "import sys; sys.modules['wandb'] = None\n"
        "from pbtune.integrations.wandb import WandbMonitor\n"
        "from pbtune.report.data import RunData\n"
        "from pbtune.types import MemberRecord, MemberState\n"
        "data = RunData('r', {}, (MemberRecord('r', 0, MemberState.RUNNING, 0, {}),), (), ())\n"
        "WandbMonitor()._start(data, 0)\n"
    )
    assert done.returncode != 0
    assert "pip install 'pbtune[wandb]'" in done.stderr


def test_lazy_names_of_the_package() -> None:
    import pbtune.integrations as integrations

    assert "WandbMonitor" in integrations.__all__
    with pytest.raises(AttributeError):
        integrations.NoSuchThing  # noqa: B018


def _model_and_adam() -> tuple[torch.nn.Module, torch.optim.Optimizer]:
    model = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.LayerNorm(4), torch.nn.Dropout(0.1))
    decay = [p for p in model.parameters() if p.dim() >= 2]
    no_decay = [p for p in model.parameters() if p.dim() < 2]
    optimizer = torch.optim.AdamW([{"params": decay, "weight_decay": 0.01},
                                   {"params": no_decay, "weight_decay": 0.0}], lr=0.1)
    return model, optimizer


def test_optimizer_rules_lr_betas_eps_and_decay_groups() -> None:
    _, optimizer = _model_and_adam()
    keys, _ = _torch.check_keys(None, None, "t")
    applied = _torch.apply_optimizer_hparams(
        optimizer, {"lr": 0.02, "beta1": 0.8, "adam_beta2": 0.95, "eps": 1e-6, "weight_decay": 0.3, "other": 1},
        keys, where="t")
    assert set(applied) == {"lr", "beta1", "adam_beta2", "eps", "weight_decay"}
    for group in optimizer.param_groups:
        assert group["lr"] == 0.02 and group["betas"] == (0.8, 0.95) and group["eps"] == 1e-6
    assert [g["weight_decay"] for g in optimizer.param_groups] == [0.3, 0.0]  # biases/norms keep no decay


def test_lr_under_a_scheduler_keeps_the_schedule_factor() -> None:
    _, optimizer = _model_and_adam()
    scheduler = torch.optim.lr_scheduler.StepLR(optimizer, step_size=1, gamma=0.5)
    optimizer.step()
    scheduler.step()
    scheduler.step()  # lr = 0.1 * 0.25
    keys, _ = _torch.check_keys(None, None, "t")
    _torch.apply_optimizer_hparams(optimizer, {"lr": 0.4}, keys, scheduler=scheduler, where="t")
    assert [g["lr"] for g in optimizer.param_groups] == pytest.approx([0.1, 0.1])  # 0.4 * 0.25
    assert scheduler.base_lrs == [0.4, 0.4] and scheduler.get_last_lr() == pytest.approx([0.1, 0.1])
    optimizer.step()
    scheduler.step()  # the schedule goes on from the new base
    assert [g["lr"] for g in optimizer.param_groups] == pytest.approx([0.05, 0.05])


def test_unknown_keys_and_attributes_fail_clearly() -> None:
    model, optimizer = _model_and_adam()
    keys, attrs = _torch.check_keys({"mom": "momentum", "lr": None}, {"p": "2.p"}, "t")
    assert "lr" not in keys and keys["mom"] == "momentum"
    with pytest.raises(PBTuneError, match="'mom' maps to the optimizer's 'momentum', which AdamW"):
        _torch.apply_optimizer_hparams(optimizer, {"mom": 0.9}, keys, where="t")
    assert _torch.apply_module_attributes(model, {"p": 0.4}, attrs, where="t") == {"p": 0.4}
    assert model[2].p == 0.4
    with pytest.raises(PBTuneError, match="has no such attribute"):
        _torch.apply_module_attributes(model, {"p": 0.4}, {"p": "2.rate"}, where="t")
    with pytest.raises(InvalidConfigError, match=r"`attributes\['p'\]` of `t`"):
        _torch.check_keys(None, {"p": ".x"}, "t")


def test_state_file_round_trip_and_mismatch(tmp_path: object) -> None:
    model, optimizer = _model_and_adam()
    model(torch.ones(2, 3)).sum().backward()
    optimizer.step()
    path = f"{tmp_path}/s.pt"
    _torch.save_state(path, model, [optimizer])
    other, other_opt = _model_and_adam()
    _torch.load_state(path, other, [other_opt], where="t")
    assert torch.equal(other[0].weight, model[0].weight)
    first = model[0].weight
    assert torch.equal(other_opt.state[other[0].weight]["exp_avg"], optimizer.state[first]["exp_avg"])
    with pytest.raises(PBTuneError, match="the checkpoint has 1 optimizers, this training has 0"):
        _torch.load_state(path, other, [], where="t")
    torch.save({"state_dict": {}}, f"{tmp_path}/plain.pt")
    with pytest.raises(PBTuneError, match="not a pbtune torch checkpoint"):
        _torch.load_state(f"{tmp_path}/plain.pt", other, where="t")
