"""PBT of a tiny BERT classifier with the Transformers ``Trainer``, via ``search()``.

The model is built from a config (no download) and the data set is generated: sequences of
integer tokens, labelled 1 when token 3 occurs. ``search`` trains a population of ``Trainer``
copies in this process, deciding at each evaluation, and returns a ``BestRun`` the way
``trainer.hyperparameter_search`` does::

    python examples/integrations/transformers_search.py --population 4 --steps 120
"""

from __future__ import annotations

import argparse
import tempfile
from typing import Any

import torch
from transformers import BertConfig, BertForSequenceClassification, Trainer, TrainingArguments

import pbtune
from pbtune.integrations.transformers import search

VOCAB = 32


class Tokens(torch.utils.data.Dataset):
    def __init__(self, n: int, seed: int) -> None:
        g = torch.Generator().manual_seed(seed)
        self.ids = torch.randint(4, VOCAB, (n, 12), generator=g)
        positive = torch.rand(n, generator=g) < 0.5
        where = torch.randint(0, 12, (n,), generator=g)
        self.ids[positive, where[positive]] = 3
        self.labels = positive.long()

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i: int) -> dict[str, Any]:
        return {"input_ids": self.ids[i], "labels": self.labels[i]}


def model_init() -> BertForSequenceClassification:
    torch.manual_seed(0)
    config = BertConfig(vocab_size=VOCAB, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                        intermediate_size=64, max_position_embeddings=16, num_labels=2)
    return BertForSequenceClassification(config)


def accuracy(prediction: Any) -> dict[str, float]:
    return {"accuracy": float((prediction.predictions.argmax(-1) == prediction.label_ids).mean())}


def main(argv: list[str] | None = None) -> Any:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--population", type=int, default=4)
    parser.add_argument("--steps", type=int, default=120, help="optimizer steps per member")
    parser.add_argument("--eval-steps", type=int, default=20, help="steps between evaluations (PBT steps)")
    parser.add_argument("--dir", default=None, help="output_dir (default: a temp dir)")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    training = TrainingArguments(
        output_dir=args.dir or tempfile.mkdtemp(prefix="pbtune-hf-"), max_steps=args.steps,
        per_device_train_batch_size=32, eval_strategy="steps", eval_steps=args.eval_steps, save_strategy="no",
        logging_strategy="no", report_to=[], use_cpu=not torch.cuda.is_available(), disable_tqdm=True, seed=0,
    )
    trainer = Trainer(model_init=model_init, args=training, train_dataset=Tokens(1024, 0),
                      eval_dataset=Tokens(256, 1), compute_metrics=accuracy)
    best = search(
        trainer,
        {"learning_rate": pbtune.Float(1e-5, 1e-2, log=True), "weight_decay": pbtune.Float(0.0, 0.1),
         "warmup_steps": pbtune.Int(0, 20)},
        population=args.population, metric="eval_loss", mode="min",
        exploit={"name": "truncation", "quantile": 0.25},
    )
    print(f"best member {best.run_id}: eval_loss {best.objective:.4f} with {best.hyperparameters}")
    for entry in best.run_summary.schedule:
        print(f"  from evaluation {entry.step}: {entry.hparams} ({entry.kind} as member {entry.member_id})")
    print("trainer.model now holds the best member's weights:", trainer.evaluate())
    return best


if __name__ == "__main__":
    main()
