"""The vectorized engine end to end: store records, lineage, decisions, resume, validation, CLI."""

from __future__ import annotations

import os
import platform
import subprocess
import sys

import pytest

torch = pytest.importorskip("torch", reason="the vectorized engine needs PyTorch (pip install 'pbtune[torch]')")
import torch.nn.functional as F  # noqa: E402
from typer.testing import CliRunner  # noqa: E402
from vectorized_helpers import CUDA, blobs, bn_mlp, dropout_mlp, mlp  # noqa: E402

import pbtune.vectorized as pv  # noqa: E402
from pbtune import Float, Tournament  # noqa: E402
from pbtune.errors import InvalidConfigError, PBTuneError  # noqa: E402
from pbtune.lineage import schedule  # noqa: E402
from pbtune.store import open_store  # noqa: E402
from pbtune.types import MemberState  # noqa: E402

SPACE = {"lr": Float(0.001, 1.0, log=True), "momentum": Float(0.0, 0.95)}


def _settings(tmp_path, name="vec", **overrides):
    x, y = blobs(96)
    xv, yv = blobs(60, seed=1)
    settings = dict(
        population=6,
        data=(x, y),
        eval_data=(xv, yv),
        batch_size=16,
        batches_per_step=2,
        steps=6,
        ready={"interval": 2},
        exploit={"name": "truncation", "quantile": 0.34},
        seed=3,
        name=name,
        storage=f"sqlite:///{tmp_path}/pbt.db",
        checkpoints=str(tmp_path / "ck"),
    )
    settings.update(overrides)
    return settings


def test_run_records_members_scores_and_lineage_in_the_store(tmp_path):
    result = pv.train(mlp, SPACE, **_settings(tmp_path))
    store = open_store(f"sqlite:///{tmp_path}/pbt.db")
    members = store.list_members("vec")
    assert len(members) == 6 and all(m.state is MemberState.FINISHED and m.step == 6 for m in members)
    scores = store.scores("vec")
    assert len(scores) == 36
    for m in range(6):
        assert [s.step for s in scores if s.member_id == m] == [1, 2, 3, 4, 5, 6]
        assert all("loss" in s.metrics for s in scores if s.member_id == m)
    events = store.events("vec")
    assert sum(e.kind == "init" for e in events) == 6
    exploits = [e for e in events if e.kind == "exploit"]
    explores = [e for e in events if e.kind == "explore"]
    assert exploits and len(explores) == len(exploits)
    by_key = {(s.member_id, s.step): s.score for s in scores}
    for e in exploits:
        assert e.step in (2, 4) and e.donor_step == e.step
        assert by_key[(e.donor_id, e.step)] > by_key[(e.member_id, e.step)]  # copied a better member
        follow = next(x for x in explores if x.member_id == e.member_id and x.step == e.step)
        assert follow.old_hparams == e.new_hparams and " --(" in follow.summary
    # the schedule replays through the donors and ends at each member's current hyperparameters
    for m in members:
        entries = schedule(events, m.member_id)
        assert entries[-1].hparams == dict(m.hparams)
    exploited = exploits[-1].member_id
    assert any(entry.member_id != exploited for entry in schedule(events, exploited))
    # the best member's final weights are in the checkpoint store and load into model_fn()
    assert result.best.member_id == max(members, key=lambda m: (m.score, -m.member_id)).member_id
    model = mlp()
    model.load_state_dict(torch.load(result.checkpoint_path, weights_only=True))
    for name, value in result.state_dict().items():
        assert torch.equal(model.state_dict()[name], value)


def test_cli_status_best_and_lineage_work_on_a_vectorized_run(tmp_path):
    from pbtune.cli import app

    pv.train(mlp, SPACE, **_settings(tmp_path, name="clirun"))
    runner = CliRunner()
    url = f"sqlite:///{tmp_path}/pbt.db"
    status = runner.invoke(app, ["status", "clirun", "--storage", url, "--json"])
    assert status.exit_code == 0, status.output
    assert '"state": "finished"' in status.output
    best = runner.invoke(app, ["best", "clirun", "--storage", url])
    assert best.exit_code == 0 and '"schedule"' in best.output
    events = open_store(url).events("clirun")
    member = next(e.member_id for e in events if e.kind == "exploit")
    lineage = runner.invoke(app, ["lineage", "clirun", str(member), "--storage", url])
    assert lineage.exit_code == 0 and "exploit" in lineage.output


def _population_state(engine):
    pop = engine.population
    return (
        pop.params.clone(),
        {k: v.clone() for k, v in pop.constants.items()},
        {k: v.clone() for k, v in pop.optimizer.state.items()},
        [dict(h) for h in pop.hparams],
    )


def _assert_same_population(reference, resumed):
    """Parameters, buffers, optimizer state and hyperparameters are identical, bit for bit."""
    for ref, got in zip(_population_state(reference), _population_state(resumed), strict=True):
        if isinstance(ref, torch.Tensor):
            assert torch.equal(ref, got)
        elif isinstance(ref, dict):
            assert ref.keys() == got.keys() and all(torch.equal(ref[k], got[k]) for k in ref)
        else:
            assert ref == got


def test_resume_from_the_population_checkpoint_continues_bit_for_bit(tmp_path):
    space = {**SPACE, "dropout": Float(0.0, 0.5)}  # dropout: the random stream must resume too
    common = dict(checkpoint_interval=2, steps=7)
    reference = pv.VectorizedPBT(dropout_mlp, space, **_settings(tmp_path, name="ref", **common))
    reference.run()
    split = pv.VectorizedPBT(dropout_mlp, space, **_settings(tmp_path, name="split", **common))
    split.run(until=3)  # "crash" after step 3: the population checkpoint holds step 3
    assert all(m.step == 3 and not m.state.is_final for m in split.store.list_members("split"))
    resumed = pv.VectorizedPBT(dropout_mlp, space, **_settings(tmp_path, name="split", **common))
    resumed.run()
    _assert_same_population(reference, resumed)
    store = reference.store

    def history(run):
        scores = [(s.member_id, s.step, s.score) for s in store.scores(run)]
        events = [(e.member_id, e.step, e.kind, e.donor_id, e.new_hparams) for e in store.events(run)]
        return sorted(scores), sorted(events, key=repr)

    assert history("ref") == history("split")


@pytest.fixture
def every_core_busy(monkeypatch):
    """Automatic writes as when torch's threads use every core: store inline, checkpoint file on a thread."""
    from pbtune.vectorized import loop

    monkeypatch.setattr(loop.os, "cpu_count", lambda: torch.get_num_threads())


def test_resume_with_the_checkpoint_file_on_its_own_thread_continues_bit_for_bit(tmp_path, every_core_busy):
    common = dict(checkpoint_interval=2, steps=6)
    reference = pv.VectorizedPBT(mlp, SPACE, **_settings(tmp_path, name="ref", background_writes=False, **common))
    reference.run()
    split = pv.VectorizedPBT(mlp, SPACE, **_settings(tmp_path, name="split", **common))
    split.run(until=3)  # the file written on the thread must be complete when run() returns
    assert pv.load_checkpoint(split.checkpoint_path)["engine"]["step"] == 3
    pv.VectorizedPBT(mlp, SPACE, **_settings(tmp_path, name="split", **common)).run()
    def scores(run):
        return sorted((s.member_id, s.step, s.score) for s in reference.store.scores(run))

    assert scores("ref") == scores("split")


def test_an_error_writing_the_checkpoint_file_on_its_thread_reaches_the_caller(tmp_path, every_core_busy, monkeypatch):
    from pbtune.vectorized import persistence

    def full_disk(payload, path):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(persistence, "atomic_save", full_disk)
    with pytest.raises(OSError, match="No space left"):
        pv.VectorizedPBT(mlp, SPACE, **_settings(tmp_path, name="full", steps=4)).run()


def test_a_failure_while_finishing_leaves_a_run_that_resumes(tmp_path, monkeypatch):
    settings = _settings(tmp_path, name="late", steps=4, checkpoint_interval=2)
    failing = pv.VectorizedPBT(mlp, SPACE, **settings)

    def broken_disk(*args, **kwargs):
        raise OSError(5, "I/O error writing the best member's weights")

    from pbtune.vectorized import persistence

    with monkeypatch.context() as patched, pytest.raises(OSError, match="best member's weights"):
        patched.setattr(persistence, "report_with_weights", broken_disk)
        failing.run()
    assert not any(m.state.is_final for m in failing.store.list_members("late"))  # finishing comes last
    result = pv.VectorizedPBT(mlp, SPACE, **settings).run()  # resumes from the step-2 checkpoint
    members = result.members
    assert all(m.state is MemberState.FINISHED and m.step == 4 for m in members)
    assert result.best.checkpoint is not None


def test_a_trained_run_is_not_restarted_without_its_checkpoint(tmp_path):
    settings = _settings(tmp_path, name="once", checkpoint=False, steps=2)
    pv.train(mlp, SPACE, **settings)
    with pytest.raises(PBTuneError, match="already has trained members"):
        pv.train(mlp, SPACE, **settings)


def test_tournament_and_chunking_run_and_match_the_unchunked_run(tmp_path):
    kwargs = dict(exploit=Tournament(), steps=4)
    whole = pv.VectorizedPBT(bn_mlp, SPACE, **_settings(tmp_path, name="whole", **kwargs))
    whole.run()
    chunked = pv.VectorizedPBT(bn_mlp, SPACE, **_settings(tmp_path, name="chunked", chunk_size=4, **kwargs))
    result = chunked.run()
    assert result.chunk_plan.chunk_size == 4 and result.chunk_plan.chunks == 2
    torch.testing.assert_close(chunked.population.params, whole.population.params, rtol=1e-5, atol=1e-6)
    assert [dict(h) for h in chunked.population.hparams] == [dict(h) for h in whole.population.hparams]


def test_a_loss_with_hparams_gets_each_members_values(tmp_path):
    seen = []

    def tempered(outputs, targets, hparams):
        seen.append(hparams["temperature"].shape)  # one member's 0-d tensor inside vmap
        return F.cross_entropy(outputs / hparams["temperature"], targets)

    space = {"lr": Float(0.01, 0.5, log=True), "temperature": Float(0.5, 4.0)}
    result = pv.train(
        mlp,
        space,
        loss=tempered,
        metric="loss",
        optimizer=pv.Adam(lr=0.01),
        **_settings(tmp_path, name="temp", steps=2),
    )
    assert seen and all(shape == torch.Size([]) for shape in seen)
    assert result.best.score is not None and "temperature" in result.best.hparams


def test_adamw_with_label_smoothing_and_no_eval_data_scores_the_training_loss(tmp_path):
    space = {
        "lr": Float(1e-3, 1e-1, log=True),
        "beta1": Float(0.5, 0.95),
        "label_smoothing": Float(0.0, 0.2),
    }
    settings = _settings(tmp_path, name="adamw", steps=2, eval_data=None, optimizer={"name": "adamw"})
    pv.train(mlp, space, **settings)
    store = open_store(settings["storage"])
    cfg = store.get_run("adamw").config
    assert cfg["mode"] == "min"
    for s in store.scores("adamw"):
        assert s.score == pytest.approx(s.metrics["loss"])


@pytest.mark.parametrize(
    ("space", "message"),
    [
        (
            {"lr": Float(0.01, 0.1), "batch_size": {"type": "int", "low": 16, "high": 128}},
            "`batch_size` of `space` must be absent: per-member batch size is not vectorizable",
        ),
        (
            {"lr": Float(0.01, 0.1), "width": {"type": "int", "low": 8, "high": 64}},
            "`width` of `space` must be a vectorizable hyperparameter",
        ),
        (
            {"lr": Float(0.01, 0.1), "act": ["relu", "tanh"]},
            "only numeric hyperparameters are vectorizable",
        ),
        (
            {"lr": Float(0.01, 0.1), "dropout": Float(0.0, 1.0)},
            "`dropout` of `space` must be a probability below 1",
        ),
        (
            {"lr": Float(0.01, 0.1), "beta1": Float(0.5, 0.9)},
            "`beta1` of `space` must be a vectorizable",
        ),  # SGD
    ],
)
def test_spaces_that_cannot_be_vectorized_are_rejected_with_the_field(tmp_path, space, message):
    with pytest.raises(InvalidConfigError, match=message.replace("[", "\\[")):
        pv.VectorizedPBT(mlp, space, **_settings(tmp_path))


def test_other_settings_are_validated(tmp_path):
    with pytest.raises(InvalidConfigError, match="`mode` of `vectorized.train`"):
        pv.VectorizedPBT(mlp, SPACE, metric=lambda out, y: out.mean(), **_settings(tmp_path))
    with pytest.raises(InvalidConfigError, match="`data` of `vectorized.train`"):
        pv.VectorizedPBT(mlp, SPACE, **_settings(tmp_path, data=[1, 2, 3]))
    with pytest.raises(InvalidConfigError, match="`loss` of `vectorized.train`"):
        pv.VectorizedPBT(mlp, {**SPACE, "label_smoothing": Float(0.0, 0.1)}, loss="mse", **_settings(tmp_path))
    with pytest.raises(InvalidConfigError, match="`dropout` of `space` must be used by an nn.Dropout"):
        pv.train(mlp, {**SPACE, "dropout": Float(0.0, 0.5)}, **_settings(tmp_path, name="nodrop"))
    if not torch.cuda.is_available():
        with pytest.raises(InvalidConfigError, match="`device` of `vectorized.train` must be an available device"):
            pv.VectorizedPBT(mlp, SPACE, **_settings(tmp_path, device="cuda"))


def test_importing_the_package_does_not_import_torch():
    code = "import sys, pbtune.vectorized, pbtune.cli; assert 'torch' not in sys.modules, 'torch imported'"
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60)


@CUDA
def test_the_engine_trains_on_cuda(tmp_path):
    result = pv.train(bn_mlp, SPACE, **_settings(tmp_path, name="cuda", device="cuda"))
    assert result.population.params.is_cuda
    assert len(open_store(f"sqlite:///{tmp_path}/pbt.db").scores("cuda")) == 36


@CUDA
def test_resume_on_cuda_continues_bit_for_bit(tmp_path):
    space = {**SPACE, "dropout": Float(0.0, 0.5)}  # the CUDA random stream must resume too
    common = dict(checkpoint_interval=2, steps=5, device="cuda")
    reference = pv.VectorizedPBT(dropout_mlp, space, **_settings(tmp_path, name="ref", **common))
    reference.run()
    pv.VectorizedPBT(dropout_mlp, space, **_settings(tmp_path, name="split", **common)).run(until=2)
    resumed = pv.VectorizedPBT(dropout_mlp, space, **_settings(tmp_path, name="split", **common))
    resumed.run()
    assert resumed.population.params.is_cuda
    _assert_same_population(reference, resumed)


def test_weights_only_exploit_keeps_the_receivers_hyperparameters(tmp_path):
    settings = _settings(
        tmp_path, name="wonly", steps=4, exploit={"name": "truncation", "quantile": 0.34, "copy_hparams": False}
    )
    engine = pv.VectorizedPBT(mlp, SPACE, **settings)
    engine.run()
    exploits = [e for e in engine.store.events("wonly") if e.kind == "exploit"]
    assert exploits
    for e in exploits:
        assert e.new_hparams == e.old_hparams and e.summary.endswith("(weights only)")


def test_a_model_that_cannot_be_vmapped_fails_with_a_clear_error(tmp_path):
    def cumulative_bn():  # momentum=None averages with a Python float of a batched counter
        return torch.nn.Sequential(torch.nn.Linear(6, 8), torch.nn.BatchNorm1d(8, momentum=None), torch.nn.Linear(8, 3))

    with pytest.raises(PBTuneError, match="cannot run under torch.func.vmap"):
        pv.train(cumulative_bn, SPACE, **_settings(tmp_path, name="novmap", steps=1))


def test_background_writer_keeps_order_and_reraises_the_first_error():
    from pbtune.vectorized._writer import BackgroundWriter

    done: list[int] = []
    writer = BackgroundWriter()
    for i in range(50):
        writer.submit(lambda i=i: done.append(i))
    writer.drain()
    assert done == list(range(50))

    def boom() -> None:
        raise RuntimeError("store down")

    writer.submit(boom)
    writer.submit(lambda: done.append(99))  # after a failure nothing else runs (it would be out of order)
    with pytest.raises(RuntimeError, match="store down"):
        writer.drain()
    writer.close()
    assert 99 not in done


def test_inline_and_background_writes_record_the_same_run(tmp_path):
    def history(run, **kw):
        engine = pv.VectorizedPBT(mlp, SPACE, **_settings(tmp_path, name=run, steps=4, **kw))
        engine.run()
        store = engine.store
        return (
            [(s.member_id, s.step, s.score) for s in store.scores(run)],
            [(e.member_id, e.step, e.kind, e.donor_id, e.new_hparams) for e in store.events(run)],
        )

    assert history("inline", background_writes=False) == history("background", background_writes=True)
    with pytest.raises(InvalidConfigError, match="background_writes"):
        pv.VectorizedPBT(mlp, SPACE, **_settings(tmp_path, name="bad", background_writes="yes"))


def test_writes_overlap_the_training_only_when_a_core_is_free(tmp_path, monkeypatch):
    from pbtune.vectorized import loop

    seen = []
    real = loop.BackgroundWriter

    def writer(enabled=True, name="pbtune-vectorized-writer"):
        seen.append((name.rsplit("-", 1)[-1], enabled))
        return real(enabled=enabled, name=name)

    monkeypatch.setattr(loop, "BackgroundWriter", writer)
    threads = torch.get_num_threads()
    try:
        for count, cores in ((2, 2), (1, 2)):
            torch.set_num_threads(count)
            monkeypatch.setattr(loop.os, "cpu_count", lambda cores=cores: cores)
            pv.VectorizedPBT(mlp, SPACE, **_settings(tmp_path, name=f"auto{count}", steps=1)).run()
    finally:
        torch.set_num_threads(threads)
    # every core busy training: store writes inline, the checkpoint file (disk waits) on its own
    # thread; a core free: everything on the writer thread
    assert seen == [("writer", False), ("files", True), ("writer", True)]


def test_cli_reads_a_population_checkpoint_and_extracts_a_member(tmp_path):
    from pbtune.cli import app

    engine = pv.VectorizedPBT(bn_mlp, SPACE, **_settings(tmp_path, name="ckcli", steps=2))
    engine.run()
    path = engine.checkpoint_path
    runner = CliRunner()
    shown = runner.invoke(app, ["vectorized", "info", path])
    assert shown.exit_code == 0 and "run ckcli: step 2, 6 members" in shown.output
    out = tmp_path / "best.pt"
    done = runner.invoke(app, ["vectorized", "extract", path, "--out", str(out)])
    assert done.exit_code == 0, done.output
    scores = pv.load_checkpoint(path)["engine"]["scores"]
    best = max(range(6), key=lambda i: (scores[i], -i))
    assert f"member {best} of run ckcli" in done.output
    model = bn_mlp()
    model.load_state_dict(torch.load(out, weights_only=True))  # BN buffers included
    for name, value in engine.population.member_state_dict(best).items():
        assert torch.equal(model.state_dict()[name], value)
    bad = runner.invoke(app, ["vectorized", "extract", path, "--member", "17", "--out", str(out)])
    assert bad.exit_code == 2 and "MEMBER must be" in bad.output


@pytest.mark.skipif(
    not sys.platform.startswith("linux") or platform.libc_ver()[0] != "glibc",
    reason="malloc tuning applies to glibc on Linux only",
)
def test_malloc_tuning_applies_on_glibc_and_can_be_switched_off():
    code = "from pbtune.vectorized._malloc import tune_malloc; print(tune_malloc(), tune_malloc())"
    env = {k: v for k, v in os.environ.items() if k != "PBTUNE_MALLOC_TUNING"}
    tuned = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=60)
    assert tuned.stdout.split() == ["True", "True"]  # applied, and the second call reports the same
    env["PBTUNE_MALLOC_TUNING"] = "0"
    off = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=60)
    assert off.stdout.split() == ["False", "False"]
