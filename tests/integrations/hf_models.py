"""A tiny BERT classifier built from a config (no download), an integer dataset, and a resume script."""

from __future__ import annotations

import json
import sys
from typing import Any

import torch
from transformers import BertConfig, BertForSequenceClassification, Trainer, TrainerCallback, TrainingArguments

from pbtune.integrations.transformers import PBTCallback

VOCAB = 32


def tiny_bert(seed: int = 0) -> BertForSequenceClassification:
    torch.manual_seed(seed)
    config = BertConfig(vocab_size=VOCAB, hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
                        intermediate_size=32, max_position_embeddings=16, num_labels=2)
    return BertForSequenceClassification(config)


class Tokens(torch.utils.data.Dataset):
    """Label 1 when token 3 occurs in the sequence: learnable by a one-layer model."""

    def __init__(self, n: int, seed: int) -> None:
        g = torch.Generator().manual_seed(seed)
        self.ids = torch.randint(4, VOCAB, (n, 8), generator=g)
        flip = torch.rand(n, generator=g) < 0.5
        self.ids[flip, 2] = 3
        self.labels = flip.long()

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i: int) -> dict[str, Any]:
        return {"input_ids": self.ids[i], "labels": self.labels[i]}


def args(out: str, **overrides: Any) -> TrainingArguments:
    settings: dict[str, Any] = dict(
        output_dir=out, max_steps=12, per_device_train_batch_size=8, eval_strategy="steps", eval_steps=4,
        save_strategy="no", logging_strategy="no", report_to=[], use_cpu=True, disable_tqdm=True,
        learning_rate=5e-3, weight_decay=0.01, seed=0, dataloader_num_workers=0,
    )
    settings.update(overrides)
    return TrainingArguments(**settings)


class StopAfterFirstEvaluation(TrainerCallback):
    def on_evaluate(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        control.should_training_stop = True


class Snapshot(TrainerCallback):
    """What the model and optimizer hold right after PBTCallback ran (it is listed before this one)."""

    def __init__(self, pbt: PBTCallback | None = None, at: str = "exploit") -> None:
        self.pbt, self.at = pbt, at
        self.seen: dict[str, Any] | None = None

    def _take(self, model: Any, optimizer: Any, scheduler: Any, args: Any) -> dict[str, Any]:
        weight = model.bert.encoder.layer[0].attention.self.query.weight
        inner = getattr(scheduler, "scheduler", scheduler)
        return {
            "weight": weight.detach().clone(),
            "exp_avg": optimizer.state[weight]["exp_avg"].clone() if weight in optimizer.state else None,
            "lrs": [g["lr"] for g in optimizer.param_groups],
            "weight_decays": [g["weight_decay"] for g in optimizer.param_groups],
            "base_lrs": list(inner.base_lrs), "last_epoch": inner.last_epoch,
            "args_lr": args.learning_rate, "args_wd": args.weight_decay,
        }

    def on_train_begin(self, args: Any, state: Any, control: Any, **kw: Any) -> None:
        if self.at == "begin":
            self.seen = self._take(kw["model"], kw["optimizer"], kw["lr_scheduler"], args)

    def on_evaluate(self, args: Any, state: Any, control: Any, **kw: Any) -> None:
        if self.at == "exploit" and self.seen is None and self.pbt is not None and self.pbt.exploits:
            self.seen = self._take(kw["model"], kw["optimizer"], kw["lr_scheduler"], args)


def trainer(out: str, model: Any, callbacks: list[Any], compute_metrics: Any = None, **overrides: Any) -> Trainer:
    return Trainer(model=model, args=args(out, **overrides), train_dataset=Tokens(64, 0), eval_dataset=Tokens(32, 1),
                   callbacks=callbacks, compute_metrics=compute_metrics)


def resume(config_json: str, member_id: int, out_dir: str, out: str) -> None:
    """Rejoin ``member_id`` in a fresh process; save what train() started from."""
    from pbtune import Population, RunConfig

    member = Population(RunConfig.from_dict(json.loads(config_json))).member(member_id)
    snapshot = Snapshot(at="begin")
    pbt = PBTCallback(member, "eval_rank", finish=False)
    run = trainer(out_dir, tiny_bert(seed=99), [pbt, snapshot, StopAfterFirstEvaluation()],
                  compute_metrics=lambda p: {"rank": 0.5}, learning_rate=0.3)
    run.train()
    assert snapshot.seen is not None
    torch.save({**snapshot.seen, "step": member.step}, out)


if __name__ == "__main__":
    resume(sys.argv[1], int(sys.argv[2]), sys.argv[3], sys.argv[4])
