"""The GAN example and its classifier-based Inception Score / FID."""

from __future__ import annotations

import importlib.util
import os
import sys

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("scipy")

from conftest import example_path  # noqa: E402


def _module():
    spec = importlib.util.spec_from_file_location("gan_pbt_example", example_path("gan", "gan_pbt.py"))
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


def test_scores_tell_real_digits_from_junk():
    gan = _module()
    _, _, heldout, labels = gan.digits()
    real_is = gan.inception_score(heldout)
    assert real_is > 8.0  # ten classes, confidently recognised
    one_digit = heldout[labels == 3]
    assert gan.inception_score(one_digit) < 1.5  # a single mode scores near 1
    noise = torch.rand(500, 64, generator=torch.Generator().manual_seed(0))
    assert gan.frechet_distance(heldout[:200]) < 10 < gan.frechet_distance(noise)


def test_small_config_improves_over_initial_population(run_small, tmp_path):
    gan = _module()
    out = run_small("gan", "gan_small.yaml")
    assert out.better(out.best_final, out.best_initial)
    best = min(out.store.list_members(out.config.name), key=lambda m: -(m.score or 0))
    last = [s for s in out.store.scores(out.config.name, best.member_id)][-1]
    assert last.metrics["fid"] > 0 and "inception_score" in last.metrics
    trainable = gan.DigitsGAN(**out.config.trainable_args)
    trainable.setup(best.hparams)
    path = gan.save_grid(trainable.samples(20), str(tmp_path / "grid.png"))
    assert os.path.getsize(path) > 1000
