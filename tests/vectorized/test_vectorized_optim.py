"""One vectorized member follows the trajectory of the same model trained alone with torch.optim."""

from __future__ import annotations

import copy

import pytest

torch = pytest.importorskip("torch", reason="the vectorized engine needs PyTorch (pip install 'pbtune[torch]')")
import torch.nn.functional as F  # noqa: E402
from vectorized_helpers import CUDA, batches, blobs, bn_mlp, build_population, mlp, train_alone  # noqa: E402

import pbtune.vectorized as pv  # noqa: E402
from pbtune.errors import InvalidConfigError  # noqa: E402

STEPS = 25
# Float32 rounding differs (fused multiply-adds, batched matmuls): a few ulps per step.
TOL = {"rtol": 1e-5, "atol": 1e-6}


def _compare(
    models,
    pop,
    make_opts,
    hparams,
    *,
    loss_alone=F.cross_entropy,
    steps=STEPS,
    x=None,
    y=None,
    device="cpu",
):
    if x is None:
        x, y = blobs()
    x, y = x.to(device), y.to(device)
    indices = [i.to(device) for i in batches(steps, len(models), len(x), 16)]
    alone = [
        train_alone(copy.deepcopy(m).to(device), make_opts[k], x, y, [idx[k] for idx in indices], loss_alone)
        for k, m in enumerate(models)
    ]
    for t, idx in enumerate(indices):
        pop.train_step(x[idx], y[idx], slice(0, len(models)))
        for k in range(len(models)):
            got = pop.member_state_dict(k)
            for name, expected in alone[k][t].items():
                torch.testing.assert_close(
                    got[name],
                    expected,
                    **TOL,
                    msg=lambda m, k=k, t=t, name=name: f"member {k} step {t} {name}: {m}",
                )


def _models(count, factory=mlp, seed=0):
    torch.manual_seed(seed)
    return [factory() for _ in range(count)]


@pytest.mark.parametrize("nesterov", [False, True])
def test_sgd_with_momentum_weight_decay_matches_torch_optim(nesterov):
    hparams = [
        {"lr": 0.05, "momentum": 0.9, "weight_decay": 1e-3, "nesterov": nesterov},
        {"lr": 0.2, "momentum": 0.5, "weight_decay": 0.0, "nesterov": nesterov},
        {"lr": 0.01, "momentum": 0.0, "weight_decay": 5e-2, "nesterov": False},  # plain SGD
    ]
    models = _models(3)
    pop = build_population(models, pv.SGD(), hparams)
    make = [lambda ps, h=h: torch.optim.SGD(ps, **h) for h in hparams]
    _compare(models, pop, make, hparams)


def test_sgd_members_may_mix_nesterov():
    hparams = [
        {"lr": 0.1, "momentum": 0.9, "nesterov": True},
        {"lr": 0.1, "momentum": 0.9, "nesterov": False},
    ]
    models = _models(2)
    pop = build_population(models, pv.SGD(), hparams)
    make = [lambda ps, h=h: torch.optim.SGD(ps, **h) for h in hparams]
    _compare(models, pop, make, hparams)


@pytest.mark.parametrize("kind", ["adam", "adamw"])
def test_adam_and_adamw_match_torch_optim(kind):
    hparams = [
        {"lr": 1e-2, "beta1": 0.9, "beta2": 0.999, "eps": 1e-8, "weight_decay": 0.0},
        {"lr": 3e-3, "beta1": 0.8, "beta2": 0.99, "eps": 1e-6, "weight_decay": 1e-2},
        {"lr": 5e-2, "beta1": 0.5, "beta2": 0.9, "eps": 1e-4, "weight_decay": 0.1},
    ]
    spec = pv.Adam() if kind == "adam" else pv.AdamW()
    cls = torch.optim.Adam if kind == "adam" else torch.optim.AdamW
    models = _models(3)
    pop = build_population(models, spec, hparams)
    make = [
        lambda ps, h=h: cls(
            ps,
            lr=h["lr"],
            betas=(h["beta1"], h["beta2"]),
            eps=h["eps"],
            weight_decay=h["weight_decay"],
        )
        for h in hparams
    ]
    _compare(models, pop, make, hparams)


def test_batchnorm_statistics_follow_the_member_trained_alone():
    hparams = [{"lr": 0.1, "momentum": 0.9}, {"lr": 0.02, "momentum": 0.0}]
    models = _models(2, bn_mlp)
    pop = build_population(models, pv.SGD(), hparams)
    make = [lambda ps, h=h: torch.optim.SGD(ps, **h) for h in hparams]
    _compare(models, pop, make, hparams, steps=10)  # running_mean/var/num_batches_tracked are in the state_dict


def test_per_member_label_smoothing_matches_cross_entropy_with_label_smoothing():
    smoothing = [0.0, 0.1, 0.3]
    hparams = [{"lr": 0.1, "label_smoothing": s} for s in smoothing]
    models = _models(3)
    pop = build_population(models, pv.SGD(), hparams, tensor_hparams=["label_smoothing"])
    make = [lambda ps: torch.optim.SGD(ps, lr=0.1)] * 3
    x, y = blobs()
    indices = batches(10, 3, len(x), 16)
    for k, s in enumerate(smoothing):
        alone = train_alone(
            copy.deepcopy(models[k]),
            make[k],
            x,
            y,
            [i[k] for i in indices],
            lambda out, t, s=s: F.cross_entropy(out, t, label_smoothing=s),
        )
        if k == 0:
            reference = alone
        else:
            assert not torch.allclose(alone[-1]["0.weight"], reference[-1]["0.weight"])  # smoothing matters
        models[k].final = alone[-1]
    for idx in indices:
        pop.train_step(x[idx], y[idx], slice(0, 3))
    for k in range(3):
        for name, expected in models[k].final.items():
            torch.testing.assert_close(pop.member_state_dict(k)[name], expected, **TOL)


def test_extracted_optimizer_state_continues_in_torch_optim():
    """A member's weights + optimizer state, loaded into plain torch, keep the member's trajectory."""
    hparams = [{"lr": 1e-2, "beta1": 0.9, "beta2": 0.99, "eps": 1e-8, "weight_decay": 0.01}] * 2
    models = _models(2)
    pop = build_population(models, pv.AdamW(), hparams)
    x, y = blobs()
    indices = batches(12, 2, len(x), 16)
    for idx in indices[:6]:
        pop.train_step(x[idx], y[idx], slice(0, 2))
    model = mlp()
    model.load_state_dict(pop.member_state_dict(1))
    opt = torch.optim.AdamW(model.parameters())
    opt.load_state_dict(pop.member_optimizer_state(1))
    for idx in indices[6:]:
        pop.train_step(x[idx], y[idx], slice(0, 2))
        opt.zero_grad()
        F.cross_entropy(model(x[idx[1]]), y[idx[1]]).backward()
        opt.step()
    for name, value in model.state_dict().items():
        torch.testing.assert_close(pop.member_state_dict(1)[name], value, **TOL)


def test_optimizer_hyperparameters_are_validated():
    with pytest.raises(InvalidConfigError, match="`beta1` of `Adam` must be"):
        pv.Adam(beta1=1.0)
    opt = pv.SGD().create(population=2, dim=3, device="cpu", dtype=torch.float32)
    with pytest.raises(InvalidConfigError, match="`lr` of `hparams of member 1`"):
        opt.set_member(1, {"lr": -0.1})
    from pbtune.vectorized.optim import optimizer_from_config

    with pytest.raises(InvalidConfigError, match="`optimizer` of `vectorized.train`"):
        optimizer_from_config({"name": "lbfgs"})
    with pytest.raises(InvalidConfigError, match="`betas` of `optimizer \\(adam\\)`"):
        optimizer_from_config({"name": "adam", "betas": (0.9, 0.99)})


@CUDA
def test_sgd_and_adam_match_torch_optim_on_cuda():
    for spec, cls, hp, kwargs in (
        (
            pv.SGD(),
            torch.optim.SGD,
            {"lr": 0.05, "momentum": 0.9, "weight_decay": 1e-3, "nesterov": True},
            {"lr": 0.05, "momentum": 0.9, "weight_decay": 1e-3, "nesterov": True},
        ),
        (
            pv.Adam(),
            torch.optim.Adam,
            {"lr": 1e-2, "beta1": 0.9, "beta2": 0.99, "eps": 1e-8, "weight_decay": 0.0},
            {"lr": 1e-2, "betas": (0.9, 0.99), "eps": 1e-8},
        ),
    ):
        models = _models(2)
        pop = build_population(models, spec, [hp, hp], device="cuda")
        _compare(models, pop, [lambda ps, cls=cls, kwargs=kwargs: cls(ps, **kwargs)] * 2, [hp, hp], device="cuda")
