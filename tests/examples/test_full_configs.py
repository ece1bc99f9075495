"""Every example's full config loads and trains: 2 members x 2 steps, with the config's own
model, data and search space and only the per-step work made smaller where it takes minutes.

The small configs' tests check that PBT improves; this one catches a full config that drifted
from its trainable (a renamed argument, a space key the trainable ignores, a missing file).
"""

from __future__ import annotations

import os

import pytest

pytest.importorskip("torch")

from conftest import example_path  # noqa: E402

import pbtune  # noqa: E402

# (folder, config, overrides of trainable_args, modules it needs)
FULL_CONFIGS = [
    ("gbt", "gbt.yaml", {}, ["sklearn"]),
    ("forest", "forest.yaml", {}, ["sklearn"]),
    ("forest", "extra_trees.yaml", {}, ["sklearn"]),
    ("gan", "gan.yaml", {"iters_per_step": 10, "eval_samples": 200}, ["sklearn"]),
    ("mnist", "mnist_fc.yaml", {"batches_per_step": 20, "val_size": 500}, []),
    ("mnist", "mnist_conv.yaml", {"batches_per_step": 10, "val_size": 500}, []),
    ("rl", "cartpole.yaml", {"updates_per_step": 2}, ["gymnasium"]),
    ("seq2seq", "seq2seq.yaml", {"pairs": 600, "dev_size": 20}, ["sacrebleu"]),
    ("seq2seq", "seq2seq_medium.yaml", {"pairs": 600, "dev_size": 20}, ["sacrebleu"]),
]


@pytest.mark.parametrize(
    "folder, name, shrink, modules", FULL_CONFIGS, ids=[f"{f}/{n}" for f, n, _, _ in FULL_CONFIGS]
)
def test_full_config_trains_two_members_for_two_steps(run_small, folder, name, shrink, modules):
    for module in modules:
        pytest.importorskip(module)
    full = pbtune.load_config(example_path(folder, name))
    data_file = full.trainable_args.get("data_file")
    if data_file and not os.path.exists(data_file):
        pytest.skip(f"{name} reads {data_file}: apt-get install trans-de-en")
    out = run_small(
        folder,
        name,
        population=2,
        workers=1,
        budget=2,
        ready={"interval": 1},
        trainable_args={**full.trainable_args, **shrink},
    )
    assert out.config.space == full.space  # the full search space, not a stand-in
    assert len(out.final) == 2  # both members finished with a finite score
    steps = sorted((r.member_id, r.step) for r in out.store.scores(out.config.name))
    assert steps == [(0, 1), (0, 2), (1, 1), (1, 2)]
