"""The fast path's hand-written gradients equal autograd's, layer by layer and loss by loss."""

from __future__ import annotations

import copy

import pytest

torch = pytest.importorskip("torch", reason="the vectorized engine needs PyTorch (pip install 'pbtune[torch]')")
import torch.nn.functional as F  # noqa: E402
from torch import nn  # noqa: E402
from vectorized_helpers import blobs, build_population, mlp  # noqa: E402

import pbtune.vectorized as pv  # noqa: E402

MEMBERS = 4


def _gradients(pop, x, y, *, manual):
    saved = pop._grad_fn  # noqa: SLF001
    answers = []

    def spy(*args):
        answers.append(saved(*args))
        return answers[-1]

    pop._grad_fn = spy if manual else None  # noqa: SLF001  None: the autograd route of the same fast path
    try:
        grads, losses = pop.gradients(x, y, slice(0, MEMBERS))
    finally:
        pop._grad_fn = saved  # noqa: SLF001
    if manual:  # the hand-written gradients answered (no silent fall-back to autograd)
        assert len(answers) == 1 and answers[0] is not None
    return grads.clone(), losses.clone()


def _compare(factory, loss="cross_entropy", tensor_hparams=(), extra=None, targets=None):
    torch.manual_seed(0)
    models = [factory() for _ in range(MEMBERS)]
    hparams = [{"lr": 0.1, **(extra(i) if extra else {})} for i in range(MEMBERS)]
    pop = build_population(models, pv.SGD(), hparams, loss=loss, tensor_hparams=tensor_hparams)
    assert pop._grad_fn is not None  # noqa: SLF001
    x, y = blobs()
    idx = torch.randint(0, len(x), (MEMBERS, 16), generator=torch.Generator().manual_seed(3))
    y = (targets(y) if targets else y)[idx]
    manual_grads, manual_losses = _gradients(pop, x[idx], y, manual=True)
    auto_grads, auto_losses = _gradients(pop, x[idx], y, manual=False)
    assert auto_grads.abs().sum() > 0
    torch.testing.assert_close(manual_losses, auto_losses, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(manual_grads, auto_grads, rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize(
    "activation",
    [nn.ReLU(), nn.ReLU(inplace=True), nn.Tanh(), nn.Sigmoid(), nn.LeakyReLU(0.2), nn.GELU(), nn.GELU("tanh"),
     nn.SiLU(), nn.Hardtanh(-0.5, 0.5), nn.ReLU6(), nn.Identity()],
    ids=lambda m: repr(m),
)
def test_each_activation_backward_matches_autograd(activation):
    _compare(lambda: nn.Sequential(nn.Linear(6, 16), copy.deepcopy(activation), nn.Linear(16, 16),
                                   copy.deepcopy(activation), nn.Linear(16, 3)))


def test_activations_in_a_row_match_autograd():
    # the first may overwrite the linear output in place; the second must not overwrite the first's
    _compare(lambda: nn.Sequential(nn.Linear(6, 16), nn.Tanh(), nn.Sigmoid(), nn.ReLU(), nn.Linear(16, 3)))
    _compare(lambda: nn.Sequential(nn.Linear(6, 16), nn.ReLU(), nn.Dropout(0.0), nn.Tanh(), nn.Linear(16, 3)))


def test_frozen_layers_and_layers_without_bias_match_autograd():
    def factory():
        model = nn.Sequential(nn.Linear(6, 16), nn.ReLU(), nn.Linear(16, 16, bias=False), nn.ReLU(), nn.Linear(16, 3))
        model[0].requires_grad_(False)  # frozen first layer: no input gradient is computed at all
        model[4].bias.requires_grad_(False)
        return model

    _compare(factory)


def test_label_smoothing_per_member_and_mse_match_autograd():
    _compare(mlp, tensor_hparams=("label_smoothing",), extra=lambda i: {"label_smoothing": 0.05 * i})
    _compare(mlp, loss="mse", targets=lambda y: F.one_hot(y, 3).float())


def test_member_dropout_masks_the_forward_and_the_backward_alike():
    torch.manual_seed(0)
    models = [nn.Sequential(nn.Linear(6, 16), nn.ReLU(), nn.Dropout(0.5), nn.Linear(16, 3)) for _ in range(MEMBERS)]
    rates = [0.0, 0.2, 0.5, 0.8]
    pop = build_population(models, pv.SGD(), [{"lr": 0.1, "dropout": r} for r in rates], tensor_hparams=("dropout",))
    x, y = blobs()
    idx = torch.randint(0, len(x), (MEMBERS, 12), generator=torch.Generator().manual_seed(3))
    torch.manual_seed(7)
    grads, losses = _gradients(pop, x[idx], y[idx], manual=True)
    # the same mask, drawn as the fast path draws it (feature-major [members, hidden 16, batch 12]),
    # applied by autograd to each member's own model
    torch.manual_seed(7)
    draws = torch.rand(MEMBERS, 16, 12)
    for i, (model, rate) in enumerate(zip(models, rates, strict=True)):
        mask = (draws[i].T < 1.0 - rate).float() / (1.0 - rate)
        hidden = torch.relu(model[0](x[idx[i]])) * mask
        expected = F.cross_entropy(model[3](hidden), y[idx[i]])
        expected_grads = torch.autograd.grad(expected, list(model.parameters()))
        torch.testing.assert_close(losses[i], expected.detach(), rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(grads[i], torch.cat([g.reshape(-1) for g in expected_grads]), rtol=1e-4, atol=1e-6)


def test_layers_or_losses_without_a_hand_written_backward_use_autograd():
    torch.manual_seed(0)
    softplus = [nn.Sequential(nn.Linear(6, 8), nn.Softplus(), nn.Linear(8, 3)) for _ in range(MEMBERS)]
    pop = build_population(softplus, pv.SGD(), [{"lr": 0.1}] * MEMBERS)
    assert pop._layers is not None and pop._grad_fn is None  # noqa: SLF001
    custom = pv.StackedPopulation([mlp() for _ in range(MEMBERS)], pv.SGD())
    custom.set_loss(lambda out, y: F.cross_entropy(out, y), False)
    assert custom._grad_fn is None  # noqa: SLF001
    # class probabilities as targets: the hand-written loss takes only class indices; autograd runs
    full = build_population([mlp() for _ in range(MEMBERS)], pv.SGD(), [{"lr": 0.1}] * MEMBERS)
    x, y = blobs()
    probabilities = F.one_hot(y[:16], 3).float().expand(MEMBERS, 16, 3)
    _, losses = full.gradients(x[:16].expand(MEMBERS, 16, 6), probabilities, slice(0, MEMBERS))
    assert losses.shape == (MEMBERS,) and torch.isfinite(losses).all()


@pytest.mark.parametrize(
    ("spec", "extra"),
    [
        (pv.SGD(), lambda i: {"momentum": 0.3 * i, "weight_decay": 1e-2 * i, "nesterov": i % 2 == 1}),
        (pv.Adam(), lambda i: {"weight_decay": 1e-2 * i}),
        (pv.AdamW(), lambda i: {"weight_decay": 1e-2 * (i + 1)}),
    ],
    ids=["sgd", "adam", "adamw"],
)
@pytest.mark.parametrize("activation", [nn.ReLU, nn.Softplus], ids=["fast-path", "autograd"])
def test_weight_decay_added_as_the_gradients_are_stored_gives_the_same_weights(spec, extra, activation):
    torch.manual_seed(0)
    models = [nn.Sequential(nn.Linear(6, 16), activation(), nn.Linear(16, 3)) for _ in range(MEMBERS)]
    hparams = [{"lr": 0.05, **extra(i)} for i in range(MEMBERS)]
    folded, plain = (build_population(models, spec, hparams) for _ in range(2))
    rows = slice(0, MEMBERS)
    # SGD and Adam add weight decay to the gradient: the fast path does it as it stores them
    assert (folded.optimizer.gradient_decay(rows) is None) == (type(spec) is pv.AdamW)
    x, y = blobs()
    g = torch.Generator().manual_seed(5)
    for _ in range(6):
        idx = torch.randint(0, len(x), (MEMBERS, 16), generator=g)
        folded.train_step(x[idx], y[idx], rows)
        grads, _ = plain.gradients(x[idx], y[idx], rows)  # plain gradients, decay added by the optimizer
        plain.optimizer.step(plain.params[rows], grads, rows)
    assert not torch.equal(folded.params, build_population(models, spec, hparams).params)  # it trained
    assert torch.equal(folded.params, plain.params)
    for name, tensor in folded.optimizer.state.items():
        assert torch.equal(tensor, plain.optimizer.state[name]), name
