"""The stacked population: exploit copies, member extraction, per-member dropout, chunking, checkpoints."""

from __future__ import annotations

import copy
import os

import pytest

torch = pytest.importorskip("torch", reason="the vectorized engine needs PyTorch (pip install 'pbtune[torch]')")
from torch import nn  # noqa: E402
from vectorized_helpers import CUDA, batches, blobs, bn_mlp, build_population, dropout_mlp, mlp  # noqa: E402

import pbtune.vectorized as pv  # noqa: E402
from pbtune.errors import CheckpointError, InvalidConfigError  # noqa: E402
from pbtune.vectorized._functional import resolve_loss  # noqa: E402
from pbtune.vectorized.chunking import ChunkPlan, chunk_slices, plan_chunks  # noqa: E402
from pbtune.vectorized.population import atomic_save, load_checkpoint  # noqa: E402


def _trained(factory=bn_mlp, spec=None, members=4, steps=5, tensor_hparams=(), extra=None):
    torch.manual_seed(0)
    models = [factory() for _ in range(members)]
    hparams = [{"lr": 0.01 * (i + 1), "beta1": 0.9 - 0.1 * i, **(extra or {})} for i in range(members)]
    pop = build_population(models, spec or pv.Adam(), hparams, tensor_hparams=tensor_hparams)
    x, y = blobs()
    for idx in batches(steps, members, len(x), 16):
        pop.train_step(x[idx], y[idx], slice(0, members))
    return pop, models


def _member_state(pop, i):
    opt = {name: t[i].clone() for name, t in pop.optimizer.state.items()}
    return pop.member_state_dict(i), opt, pop.optimizer.member_hparams(i), dict(pop.hparams[i])


def test_exploit_copies_parameters_batchnorm_buffers_optimizer_state_and_hparams():
    pop, _ = _trained()
    donor_before = _member_state(pop, 2)
    receiver_before = _member_state(pop, 0)
    assert not torch.equal(donor_before[0]["1.running_mean"], receiver_before[0]["1.running_mean"])
    assert not torch.equal(donor_before[1]["exp_avg"], receiver_before[1]["exp_avg"])

    pop.copy_members([2], [0])

    weights, opt, opt_hp, hp = _member_state(pop, 0)
    for name, value in donor_before[0].items():  # parameters and BN running_mean/var/num_batches_tracked
        assert torch.equal(weights[name], value), name
    for name, value in donor_before[1].items():  # exp_avg, exp_avg_sq, step count
        assert torch.equal(opt[name], value), name
    assert opt_hp == donor_before[2] and hp == donor_before[3]
    untouched = _member_state(pop, 1)[0]
    assert not torch.equal(untouched["0.weight"], weights["0.weight"])


def test_exploits_in_one_round_read_the_state_from_before_the_round():
    pop, _ = _trained(spec=pv.SGD(), extra={"momentum": 0.9})
    a, b = _member_state(pop, 0), _member_state(pop, 1)
    pop.copy_members([1, 0], [0, 1])  # a swap
    assert torch.equal(pop.member_state_dict(0)["0.weight"], b[0]["0.weight"])
    assert torch.equal(pop.member_state_dict(1)["0.weight"], a[0]["0.weight"])
    assert torch.equal(pop.optimizer.state["momentum_buffer"][1], a[1]["momentum_buffer"])


def test_a_member_extracts_as_a_plain_state_dict_with_the_same_outputs():
    pop, _ = _trained()
    x, _ = blobs(20, seed=3)
    outputs = pop.forward(x, slice(0, 4))  # eval mode: BN uses the running statistics
    for i in range(4):
        model = bn_mlp()
        model.load_state_dict(pop.member_state_dict(i))  # strict: same keys as model_fn()
        model.eval()
        torch.testing.assert_close(model(x), outputs[i], rtol=1e-5, atol=1e-6)


def test_tied_and_frozen_parameters_are_kept():
    class Tied(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.embed = nn.Linear(6, 6, bias=False)
            self.frozen = nn.Linear(6, 6)
            self.frozen.requires_grad_(False)
            self.head = nn.Linear(6, 3)
            self.out = self.embed  # the same module twice: its weight appears under two keys

        def forward(self, x):
            return self.head(self.out(self.frozen(self.embed(x))))

    torch.manual_seed(0)
    models = [Tied() for _ in range(2)]
    pop = build_population(models, pv.SGD(), [{"lr": 0.1}] * 2)
    frozen = models[1].frozen.weight.detach().clone()
    x, y = blobs()
    for idx in batches(3, 2, len(x), 8):
        pop.train_step(x[idx], y[idx], slice(0, 2))
    state = pop.member_state_dict(1)
    assert torch.equal(state["frozen.weight"], frozen)  # never updated
    assert torch.equal(state["embed.weight"], state["out.weight"])
    model = Tied()
    model.load_state_dict(state)
    torch.testing.assert_close(model(x[:5]), pop.forward(x[:5], slice(1, 2))[0])


def test_per_member_dropout_probability():
    torch.manual_seed(0)
    models = [nn.Sequential(nn.Linear(6, 16), nn.Softplus(), nn.Dropout(0.3)) for _ in range(3)]  # outputs > 0
    rates = [0.0, 0.5, 0.9]
    pop = build_population(models, pv.SGD(), [{"lr": 0.1, "dropout": r} for r in rates], tensor_hparams=["dropout"])
    assert pop.dropout_modules == ["2"]
    probe = torch.randn(4000, 6)
    clean = pop.forward(probe, slice(0, 3))  # eval mode: no dropout
    noisy = pop.forward(probe, slice(0, 3), train=True)
    for i, rate in enumerate(rates):
        dropped = (noisy[i] == 0).float().mean().item()
        assert abs(dropped - rate) < 0.02, (i, dropped)
        kept = noisy[i] != 0
        torch.testing.assert_close(noisy[i][kept], clean[i][kept] / (1 - rate))  # inverted-dropout scaling
    # members draw independent masks even with the same rate
    pop.set_hparams(2, {"lr": 0.1, "dropout": 0.5})
    noisy = pop.forward(probe, slice(0, 3), train=True)
    assert not torch.equal(noisy[1] == 0, noisy[2] == 0)
    with pytest.raises(InvalidConfigError, match="`dropout` of `hparams of member 0` must be in \\[0, 1\\)"):
        pop.set_hparams(0, {"lr": 0.7, "dropout": 1.0})
    assert pop.optimizer.member_hparams(0)["lr"] == 0.1 and pop.hparams[0]["dropout"] == 0.0  # all or nothing


def test_dropout_zero_member_trains_like_the_model_without_dropout():
    torch.manual_seed(0)
    base = dropout_mlp()
    pop = build_population(
        [base, base],
        pv.SGD(),
        [{"lr": 0.1, "dropout": 0.0}, {"lr": 0.1, "dropout": 0.7}],
        tensor_hparams=["dropout"],
    )
    alone = copy.deepcopy(base)
    alone[2].p = 0.0
    opt = torch.optim.SGD(alone.parameters(), lr=0.1)
    x, y = blobs()
    for idx in batches(8, 2, len(x), 16):
        pop.train_step(x[idx], y[idx], slice(0, 2))
        opt.zero_grad()
        torch.nn.functional.cross_entropy(alone(x[idx[0]]), y[idx[0]]).backward()
        opt.step()
    for name, value in alone.state_dict().items():
        torch.testing.assert_close(pop.member_state_dict(0)[name], value, rtol=1e-5, atol=1e-6)
    assert not torch.allclose(pop.member_state_dict(1)["0.weight"], alone.state_dict()["0.weight"])


def test_chunked_steps_give_the_same_members_as_one_batched_step():
    torch.manual_seed(0)
    models = [bn_mlp() for _ in range(5)]
    hparams = [{"lr": 0.05 * (i + 1), "momentum": 0.9} for i in range(5)]
    whole = build_population(models, pv.SGD(), hparams)
    chunked = build_population(models, pv.SGD(), hparams)
    x, y = blobs()
    for idx in batches(4, 5, len(x), 16):
        whole.train_step(x[idx], y[idx], slice(0, 5))
        for rows in chunk_slices(5, 2):
            chunked.train_step(x[idx[rows]], y[idx[rows]], rows)
    for i in range(5):
        for name, value in whole.member_state_dict(i).items():
            torch.testing.assert_close(chunked.member_state_dict(i)[name], value, rtol=1e-6, atol=1e-7)


def test_chunk_plan_splits_when_memory_is_short(monkeypatch):
    torch.manual_seed(0)
    pop = build_population([mlp() for _ in range(8)], pv.SGD(), [{"lr": 0.1}] * 8)
    x, y = blobs()
    index = torch.zeros(2, 16, dtype=torch.long)
    plan = plan_chunks(pop, x[index], y[index])
    assert plan.chunk_size == 8 and plan.chunks == 1 and plan.per_member_bytes > 0
    import pbtune.vectorized.chunking as chunking

    monkeypatch.setattr(chunking, "available_bytes", lambda device: plan.per_member_bytes * 3)
    small = plan_chunks(pop, x[index], y[index], memory_fraction=1.0)
    assert small.chunk_size == 3 and small.chunks == 3
    assert "in 3 chunks of up to 3 members" in small.describe()
    assert plan_chunks(pop, x[index], y[index], chunk_size=5).chunk_size == 5
    with pytest.raises(InvalidConfigError, match="`chunk_size`"):
        plan_chunks(pop, x[index], y[index], chunk_size=0)
    assert ChunkPlan(10, 4, 0, 0, 0, False).chunks == 3
    assert chunk_slices(5, 2) == [slice(0, 2), slice(2, 4), slice(4, 5)]


def test_population_state_round_trips_through_an_atomic_weights_only_file(tmp_path):
    pop, _ = _trained()
    path = str(tmp_path / "pop.pt")
    atomic_save({"format": "pbtune.vectorized/1", "population": pop.state_dict()}, path)
    assert [p for p in os.listdir(tmp_path) if p != "pop.pt"] == []  # no temporary file left
    data = load_checkpoint(path)
    torch.manual_seed(5)
    other = build_population([bn_mlp() for _ in range(4)], pv.Adam(), [{"lr": 0.5}] * 4)
    other.load_state_dict(data["population"])
    for i in range(4):
        mine_items = other.member_state_dict(i).items()
        for (name, value), (_, mine) in zip(pop.member_state_dict(i).items(), mine_items, strict=True):
            assert torch.equal(value, mine), name
        assert other.hparams[i] == pop.hparams[i]
    for name, tensor in pop.optimizer.state.items():
        assert torch.equal(other.optimizer.state[name], tensor)
    with pytest.raises(InvalidConfigError, match="population"):
        build_population([bn_mlp() for _ in range(3)], pv.Adam(), [{"lr": 0.5}] * 3).load_state_dict(data["population"])
    (tmp_path / "junk.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(CheckpointError):
        load_checkpoint(str(tmp_path / "junk.pt"))


def test_models_of_different_shapes_are_rejected():
    with pytest.raises(InvalidConfigError, match="same architecture"):
        pv.StackedPopulation([nn.Linear(3, 2), nn.Linear(3, 4)], pv.SGD())


def test_a_weights_only_copy_keeps_the_receivers_hyperparameters():
    pop, _ = _trained(spec=pv.SGD(), extra={"momentum": 0.9})
    own = dict(pop.hparams[0]), pop.optimizer.member_hparams(0)
    pop.copy_members([3], [0], copy_hparams=False)
    assert torch.equal(pop.member_state_dict(0)["0.weight"], pop.member_state_dict(3)["0.weight"])
    assert torch.equal(pop.optimizer.state["momentum_buffer"][0], pop.optimizer.state["momentum_buffer"][3])
    assert (dict(pop.hparams[0]), pop.optimizer.member_hparams(0)) == own


@CUDA
def test_on_cuda_the_chunk_plan_is_measured_and_chunks_train_like_one_batch(monkeypatch):
    torch.manual_seed(0)
    models = [bn_mlp() for _ in range(6)]
    hparams = [{"lr": 0.05 * (i + 1), "momentum": 0.9} for i in range(6)]
    whole = build_population(models, pv.SGD(), hparams, device="cuda")
    chunked = build_population(models, pv.SGD(), hparams, device="cuda")
    x, y = (t.cuda() for t in blobs())
    index = torch.zeros(6, 16, dtype=torch.long, device="cuda")
    plan = plan_chunks(whole, x[index], y[index])
    assert plan.measured and plan.per_member_bytes > 0 and plan.chunks == 1  # a real probe on the GPU
    import pbtune.vectorized.chunking as chunking

    monkeypatch.setattr(chunking, "available_bytes", lambda device: plan.per_member_bytes * 2)
    small = plan_chunks(chunked, x[index], y[index], memory_fraction=1.0)
    assert small.chunk_size == 2 and small.chunks == 3
    for idx in batches(4, 6, len(x), 16):
        idx = idx.cuda()
        whole.train_step(x[idx], y[idx], slice(0, 6))
        for rows in chunk_slices(6, small.chunk_size):
            chunked.train_step(x[idx[rows]], y[idx[rows]], rows)
    for i in range(6):
        state = chunked.member_state_dict(i)
        bn_mlp().load_state_dict(state)  # a CUDA member loads into a fresh CPU model
        for name, value in whole.member_state_dict(i).items():
            torch.testing.assert_close(state[name], value, rtol=1e-5, atol=1e-6)


def _gelu_mlp() -> nn.Module:
    return nn.Sequential(nn.Linear(6, 16), nn.GELU(), nn.Linear(16, 16, bias=False), nn.Linear(16, 3))


@pytest.mark.parametrize(
    "factory, tensor_hparams, loss",
    [
        (mlp, (), "cross_entropy"),
        (_gelu_mlp, (), "mse"),
        (dropout_mlp, ("dropout",), "cross_entropy"),  # member dropout 0: masks keep everything
        (mlp, ("label_smoothing",), "cross_entropy"),  # a loss that reads the members' hparams
    ],
)
def test_the_sequential_fast_path_trains_like_the_vmap_path(factory, tensor_hparams, loss):
    torch.manual_seed(0)
    models = [factory() for _ in range(4)]
    extra = {"dropout": 0.0} if "dropout" in tensor_hparams else {}
    extra.update({"label_smoothing": 0.1} if "label_smoothing" in tensor_hparams else {})
    hparams = [{"lr": 0.05 * (i + 1), "momentum": 0.9, **extra} for i in range(4)]
    pops = {}
    for fast in (True, False):
        pop = pv.StackedPopulation(
            [copy.deepcopy(m) for m in models], pv.SGD(), tensor_hparams=tensor_hparams, fast_path=fast
        )
        for i, hp in enumerate(hparams):
            pop.set_hparams(i, hp)
        pop.set_loss(*resolve_loss(loss, label_smoothing="label_smoothing" in tensor_hparams))
        pops[fast] = pop
    assert pops[True]._layers is not None and pops[False]._layers is None  # noqa: SLF001
    x, y = blobs()
    targets = torch.nn.functional.one_hot(y, 3).float() if loss == "mse" else y
    for idx in batches(5, 4, len(x), 16):
        losses = [pops[fast].train_step(x[idx], targets[idx], slice(0, 4)) for fast in (True, False)]
        torch.testing.assert_close(losses[0], losses[1], rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(pops[True].params, pops[False].params, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(pops[True].forward(x, slice(0, 4)), pops[False].forward(x, slice(0, 4)))


def test_models_outside_the_fast_path_use_vmap():
    assert build_population([bn_mlp()], pv.SGD(), [{"lr": 0.1}])._layers is None  # noqa: SLF001  BatchNorm
    linear = nn.Linear(6, 6)
    tied = nn.Sequential(linear, nn.ReLU(), linear)  # one module twice
    assert build_population([tied], pv.SGD(), [{"lr": 0.1}])._layers is None  # noqa: SLF001
    assert build_population([mlp()], pv.SGD(), [{"lr": 0.1}])._layers is not None  # noqa: SLF001
