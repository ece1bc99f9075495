"""PBT of the digits MLP with the vectorized engine: the whole population as one batched model.

Tunes lr, momentum and weight decay of SGD for ``make_mlp`` (64-128-10, unchanged model code)
on scikit-learn's bundled digits, all members in this one process:

    python examples/digits_vectorized.py                      # population 32, 20 PBT steps
    python examples/digits_vectorized.py --population 128 --steps 40 --out best.pt

Then ``pbtune status digits-vec`` / ``pbtune lineage digits-vec best`` read the run from the
store, and ``--out`` saves the best member as a plain ``state_dict``. See docs/vectorized.md.
"""

from __future__ import annotations

import argparse
import os
import sys

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from digits_mlp import digits_split, make_mlp  # noqa: E402

import pbtune.vectorized as pv  # noqa: E402
from pbtune import Float  # noqa: E402

SPACE = {
    "lr": Float(1e-3, 0.5, log=True),
    "momentum": Float(0.0, 0.99),
    "weight_decay": Float(1e-6, 1e-2, log=True),
}


def main(argv: list[str] | None = None) -> pv.VectorizedResult:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--population", type=int, default=32)
    parser.add_argument("--steps", type=int, default=20, help="PBT steps of 50 minibatches each")
    parser.add_argument("--name", default="digits-vec")
    parser.add_argument("--storage", default="sqlite:///pbtune-runs/pbtune.db")
    parser.add_argument("--checkpoints", default="pbtune-runs/checkpoints")
    parser.add_argument("--device", default="auto", help="auto (CUDA when present), cpu, cuda, cuda:1, ...")
    parser.add_argument("--threads", type=int, default=min(2, os.cpu_count() or 1), help="torch threads")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", help="write the best member's state_dict here")
    args = parser.parse_args(argv)

    torch.set_num_threads(args.threads)
    x, y, x_val, y_val = digits_split()
    result = pv.train(
        make_mlp,
        SPACE,
        population=args.population,
        data=(x, y),
        eval_data=(x_val, y_val),
        loss="cross_entropy",
        metric="accuracy",
        optimizer=pv.SGD(),
        batch_size=64,
        batches_per_step=50,
        steps=args.steps,
        ready={"interval": 2},
        exploit={"name": "truncation", "quantile": 0.25},
        explore="perturb_or_resample",
        name=args.name,
        storage=args.storage,
        checkpoints=args.checkpoints,
        device=("cuda" if torch.cuda.is_available() else "cpu") if args.device == "auto" else args.device,
        seed=args.seed,
    )
    print(
        f"{result.member_steps} member-steps in {result.elapsed_s:.2f} s "
        f"({result.member_steps / result.elapsed_s:.0f} per second); {result.chunk_plan.describe()}"
    )
    print(f"best member {result.best.member_id}: accuracy {result.best.score:.4f}, {dict(result.best.hparams)}")
    print(f"store: {args.storage} (run {args.name!r}); population checkpoint: {result.population_checkpoint}")
    if args.out:
        torch.save(result.state_dict(), args.out)
        print(f"best member's state_dict: {args.out}")
    return result


if __name__ == "__main__":
    main()
