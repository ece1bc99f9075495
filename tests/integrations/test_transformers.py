"""Transformers: the PBT callback inside Trainer.train (exploit, scheduler, weight decay groups,
resume in another process) and search() over a population of Trainer copies."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

pytest.importorskip("transformers", reason="transformers is not installed (pip install 'pbtune[transformers]')")
pytest.importorskip("accelerate", reason="Trainer needs accelerate (pip install 'pbtune[transformers]')")

import torch  # noqa: E402
from hf_models import Snapshot, StopAfterFirstEvaluation, Tokens, args, tiny_bert, trainer  # noqa: E402
from integration_helpers import config_json, pbt_config, run_script  # noqa: E402

from pbtune import Population, open_store  # noqa: E402
from pbtune.integrations.transformers import PBTCallback, search  # noqa: E402

SPACE = {"learning_rate": {"type": "float", "low": 1e-5, "high": 1e-1, "log": True},
         "weight_decay": {"type": "float", "low": 0.0, "high": 0.2}}
INITIAL = [{"learning_rate": 5e-3, "weight_decay": 0.05}, {"learning_rate": 1e-4, "weight_decay": 0.1}]


def _query(model: Any) -> torch.Tensor:
    return model.bert.encoder.layer[0].attention.self.query.weight


def _donor_and_exploiter(tmp_path: Path) -> tuple[Any, Any, Any, Snapshot, Any]:
    config = pbt_config(tmp_path, space=SPACE, metric="eval_rank")
    population = Population(config, initial=INITIAL)
    # member 0 scores better (rank 0.1 < 0.9, mode min): member 1 copies it at its first evaluation
    donor = trainer(str(tmp_path / "m0"), tiny_bert(0), [PBTCallback(population.member(0), "eval_rank", finish=False),
                                                        StopAfterFirstEvaluation()],
                    compute_metrics=lambda p: {"rank": 0.1})
    donor.train()
    member = population.member(1)
    pbt = PBTCallback(member, "rank", finish=False)  # the eval_ prefix may be left out
    snapshot = Snapshot(pbt)
    other = trainer(str(tmp_path / "m1"), tiny_bert(1), [pbt, snapshot, StopAfterFirstEvaluation()],
                    compute_metrics=lambda p: {"rank": 0.9})
    other.train()
    return config, donor, member, snapshot, pbt


def test_exploit_gives_donor_weights_optimizer_and_scheduler_with_explored_hparams(tmp_path: Path) -> None:
    _, donor, member, snapshot, pbt = _donor_and_exploiter(tmp_path)
    assert [e.donor.member_id for e in pbt.exploits] == [0]
    seen = snapshot.seen
    assert seen is not None
    explored = member.hparams
    assert explored["learning_rate"] != pytest.approx(INITIAL[0]["learning_rate"])
    assert torch.equal(seen["weight"], _query(donor.model))
    assert torch.equal(seen["exp_avg"], donor.optimizer.state[_query(donor.model)]["exp_avg"])
    # linear decay over 12 steps, donor at step 4: the current lr is 8/12 of the explored peak
    assert seen["last_epoch"] == 4
    assert seen["base_lrs"] == pytest.approx([explored["learning_rate"]] * 2)
    assert seen["lrs"] == pytest.approx([explored["learning_rate"] * 8 / 12] * 2)
    # weight decay goes to the decay group only; the no-decay group (biases, norms) stays at 0
    assert seen["weight_decays"] == pytest.approx([explored["weight_decay"], 0.0])
    assert seen["args_lr"] == pytest.approx(explored["learning_rate"])
    assert seen["args_wd"] == pytest.approx(explored["weight_decay"])


@pytest.mark.slow  # a child process imports the framework: ~20 s on 2 busy cores
def test_resume_in_another_process(tmp_path: Path) -> None:
    config, donor, member, snapshot, _ = _donor_and_exploiter(tmp_path)
    assert snapshot.seen is not None
    out = tmp_path / "probe.pt"
    run_script("hf_models.py", config_json(config), "1", str(tmp_path / "m1-again"), str(out))
    seen = torch.load(out, weights_only=True)
    explored = member.hparams
    assert torch.equal(seen["weight"], snapshot.seen["weight"])
    assert torch.equal(seen["exp_avg"], snapshot.seen["exp_avg"])
    assert seen["last_epoch"] == 4 and seen["base_lrs"] == pytest.approx([explored["learning_rate"]] * 2)
    assert seen["lrs"] == pytest.approx([explored["learning_rate"] * 8 / 12] * 2)  # not the script's 0.3
    assert seen["weight_decays"] == pytest.approx([explored["weight_decay"], 0.0])
    assert seen["step"] == 2


def test_warmup_steps_as_a_hyperparameter_reshapes_the_schedule(tmp_path: Path) -> None:
    space = {"warmup_steps": {"type": "int", "low": 0, "high": 12}}
    population = Population(pbt_config(tmp_path, space=space), initial=[{"warmup_steps": 8}, {"warmup_steps": 0}])
    snapshot = Snapshot(at="begin")
    run = trainer(str(tmp_path / "w"), tiny_bert(0), [PBTCallback(population.member(0), finish=False), snapshot,
                                                      StopAfterFirstEvaluation()], warmup_steps=0)
    run.train()
    assert snapshot.seen is not None
    assert snapshot.seen["lrs"] == pytest.approx([0.0, 0.0])  # step 0 of an 8-step warmup
    assert run.lr_scheduler.get_last_lr() == pytest.approx([5e-3 * 4 / 8] * 2)  # 4 steps later: half way up


def test_search_runs_a_population_and_returns_the_best_run(tmp_path: Path) -> None:
    from transformers import Trainer

    base = Trainer(model_init=lambda: tiny_bert(0), args=args(str(tmp_path / "search")),
                   train_dataset=Tokens(64, 0), eval_dataset=Tokens(32, 1))
    best = search(base, SPACE, population=2, name="hf", seed=3, explore="perturb",
                  exploit={"name": "truncation", "quantile": 0.5})
    result = best.run_summary
    members = result.members
    assert all(m.state.value == "finished" and m.step == 3 for m in members)
    assert best.run_id == str(result.best.member_id)
    assert best.objective == min(m.score for m in members)
    assert best.hyperparameters == dict(result.best.hparams)
    saved = torch.load(result.checkpoint_path, weights_only=True)["state_dict"]
    assert torch.equal(base.model.state_dict()["classifier.weight"], saved["classifier.weight"])
    exploits = [e for e in open_store(result.storage).events("hf") if e.kind == "exploit"]
    assert exploits, "the worse of two members copies the better one at some evaluation"


def test_search_needs_model_init(tmp_path: Path) -> None:
    from pbtune.errors import InvalidConfigError

    plain = trainer(str(tmp_path / "x"), tiny_bert(0), [])
    with pytest.raises(InvalidConfigError, match="`model_init` of `search`"):
        search(plain, SPACE)
    plain.model_init = lambda: tiny_bert(0)
    plain.args = args(str(tmp_path / "x"), eval_strategy="no")
    with pytest.raises(InvalidConfigError, match="`eval_strategy` of `TrainingArguments`"):
        search(plain, SPACE)


def test_evaluate_outside_train_is_not_a_pbt_step(tmp_path: Path) -> None:
    member = Population(pbt_config(tmp_path, space=SPACE)).member(0)
    run = trainer(str(tmp_path / "e"), tiny_bert(0), [PBTCallback(member)])
    run.evaluate()
    assert member.step == 0
    assert isinstance(Tokens(4, 0)[0]["input_ids"], torch.Tensor)
