"""Log a PBT run to Weights & Biases: one W&B run per member, grouped under the PBT run.

Trains the paper's toy-style quadratic (no framework needed) on local workers with a
:class:`pbtune.integrations.wandb.WandbMonitor`. Offline by default (nothing leaves the
machine; ``wandb sync <dir>/wandb/offline-run-*`` uploads later)::

    python examples/integrations/wandb_toy.py              # offline
    WANDB_MODE=online python examples/integrations/wandb_toy.py --project my-pbt
"""

from __future__ import annotations

import argparse
import os
import tempfile

import pbtune
from pbtune.integrations.wandb import WandbMonitor


def main(argv: list[str] | None = None) -> pbtune.RunResult:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--project", default="pbtune-toy")
    parser.add_argument("--population", type=int, default=4)
    parser.add_argument("--budget", type=int, default=40)
    parser.add_argument("--dir", default=None, help="store, checkpoints and W&B files (default: a temp dir)")
    args = parser.parse_args(argv)
    os.environ.setdefault("WANDB_MODE", "offline")
    root = args.dir or tempfile.mkdtemp(prefix="pbtune-wandb-")
    config = pbtune.RunConfig(
        name="wandb-toy", population=args.population, budget=args.budget, workers=1,
        space={"lr": pbtune.Float(0.001, 0.3, log=True)}, ready={"interval": 5},
        trainable="pbtune.testing.trainables:Quadratic",
        storage=f"sqlite:///{root}/pbtune.db", checkpoints=os.path.join(root, "checkpoints"),
    )
    monitor = WandbMonitor(project=args.project, dir=root)
    result = pbtune.run(config=config, monitors=[monitor], progress="quiet")
    print(f"best member {result.best.member_id}: score {result.best_score:.6f}; W&B files under {root}/wandb")
    return result


if __name__ == "__main__":
    main()
