"""The core examples: the paper's toy quadratic and the digits MLP."""

from __future__ import annotations

import importlib.util
import statistics
import sys
from pathlib import Path

import pytest

import pbtune

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"


def _load(name: str):  # type: ignore[no-untyped-def]
    spec = importlib.util.spec_from_file_location(f"example_{name}", EXAMPLES / f"{name}.py")
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


def test_toy_quadratic_shows_the_papers_ordering() -> None:
    toy = _load("toy_quadratic")
    results = toy.compare(list(range(6)))
    mean = {method: statistics.mean(values) for method, values in results.items()}
    assert mean["pbt"] > mean["exploit_only"]
    assert mean["pbt"] > mean["explore_only"]
    assert min(mean["exploit_only"], mean["explore_only"]) > mean["grid"]
    assert mean["pbt"] <= 1.2 + 1e-9  # Q cannot exceed its maximum


def test_digits_mlp_improves_over_its_initial_population(tmp_path: Path) -> None:
    pytest.importorskip("torch")
    pytest.importorskip("sklearn")
    config = pbtune.load_config(str(EXAMPLES / "digits_mlp.yaml"), storage=f"sqlite:///{tmp_path}/d.db",
                                checkpoints=str(tmp_path / "ck"), budget=10)
    result = pbtune.run(config=config, progress=False)
    store = pbtune.open_store(config.storage)
    first = [s.score for s in store.scores(config.name) if s.step == 1]
    assert len(first) == config.population
    assert result.best.score > max(first)
    assert result.best.score > 0.5  # 10 classes: chance is 0.1


def test_digits_vectorized_example_trains_records_and_saves_the_best_member(tmp_path: Path, capsys) -> None:  # type: ignore[no-untyped-def]
    import torch

    example = _load("digits_vectorized")
    out = tmp_path / "best.pt"
    storage = f"sqlite:///{tmp_path}/pbt.db"
    result = example.main([
        "--population", "8", "--steps", "4", "--threads", "1", "--storage", storage,
        "--checkpoints", str(tmp_path / "ck"), "--out", str(out),
    ])
    assert "best member" in capsys.readouterr().out
    store = pbtune.open_store(storage)
    first = [s.score for s in store.scores("digits-vec") if s.step == 1]
    assert len(first) == 8 and result.best.score > statistics.mean(first)  # training helped
    assert {e.kind for e in store.events("digits-vec")} >= {"init", "exploit", "explore"}  # PBT happened
    model = example.make_mlp()
    model.load_state_dict(torch.load(out, weights_only=True))  # a plain state_dict of the unchanged model
    x, y, x_val, y_val = example.digits_split()
    with torch.no_grad():
        accuracy = (model(x_val).argmax(dim=1) == y_val).float().mean().item()
    assert accuracy == pytest.approx(result.best.score, abs=1e-6)


def test_digits_copier_and_donor_draw_different_batches_after_an_exploit(tmp_path: Path) -> None:
    torch = pytest.importorskip("torch")
    from pbtune.engine.trainable import member_seed

    digits = _load("digits_mlp")
    hparams = {"lr": 0.05, "momentum": 0.5}

    def trainable(member_id: int, step: int):  # type: ignore[no-untyped-def]
        made = digits.DigitsMLP(batches_per_step=2)
        made.member_id, made.seed = member_id, member_seed(0, member_id, step)
        made.setup(hparams)
        return made

    donor = trainable(1, 0)
    donor.step()
    path = str(tmp_path / "donor.pt")
    donor.save(path)
    copier = trainable(0, 1)  # member 0 exploits member 1 at step 1
    copier.load(path)
    resumed = trainable(1, 1)  # member 1 itself, resumed from its own checkpoint
    resumed.load(path)
    draw = lambda t: torch.randint(1000, (8,), generator=t.generator).tolist()  # noqa: E731
    after_donor, after_copier, after_resume = draw(donor), draw(copier), draw(resumed)
    assert after_copier != after_donor  # the copy explores other minibatches
    assert after_resume == after_donor  # a resume continues the member's own data order
    for name, value in donor.model.state_dict().items():  # with the donor's weights
        assert torch.equal(copier.model.state_dict()[name], value)
