"""The translation example: parser, model pieces, and its small config end to end."""

from __future__ import annotations

import importlib.util
import os
import random
import sys

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("sacrebleu")

from conftest import example_path  # noqa: E402

SUBJECTS = [("der Hund", "the dog"), ("die Katze", "the cat"), ("der Mann", "the man"), ("die Frau", "the woman"),
            ("das Kind", "the child"), ("der Lehrer", "the teacher")]
VERBS = [("sieht", "sees"), ("mag", "likes"), ("ruft", "calls"), ("sucht", "looks for"), ("hört", "hears")]
OBJECTS = [("den Ball", "the ball"), ("das Haus", "the house"), ("den Baum", "the tree"), ("die Blume", "the flower"),
           ("das Auto", "the car"), ("den Vogel", "the bird")]
PLACES = [("heute", "today"), ("oft", "often"), ("im Garten", "in the garden"), ("am Morgen", "in the morning")]


def write_toy_dictionary(path: str, n: int = 1500) -> str:
    """A generated corpus in the trans-de-en format (``German :: English``, `` | `` alternatives)."""
    rng = random.Random(0)
    lines = ["# toy dictionary :: generated for tests", "Hund {m} :: dog"]  # a word entry: filtered out
    for _ in range(n // 2):
        pair = []
        for _ in range(2):
            (sd, se), (vd, ve), (od, oe), (pd, pe) = (rng.choice(x) for x in (SUBJECTS, VERBS, OBJECTS, PLACES))
            pair.append((f"{sd.capitalize()} {vd} {od} {pd}.", f"{se.capitalize()} {ve} {oe} {pe}."))
        lines.append(f"{pair[0][0]} | {pair[1][0]} {{m}} :: {pair[0][1]} | {pair[1][1]}")
    with open(path, "w", encoding="utf-8") as handle:
        handle.write("\n".join(lines) + "\n")
    return path


def _module():
    spec = importlib.util.spec_from_file_location("seq2seq_pbt_example", example_path("seq2seq", "seq2seq_pbt.py"))
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


def test_parser_keeps_aligned_sentence_pairs(tmp_path):
    s2s = _module()
    path = tmp_path / "de-en"
    path.write_text("# header :: x\n"
                    "Aal {m} | Aale {pl} :: eel | eels\n"
                    "Er packte mich am Arm. [ugs.] :: He seized me by the arm.\n"
                    "Das ist gut. | Das ist schlecht. :: That is good.\n"
                    "Sie kommt (bald) nach Hause. :: She is coming home (soon).\n")
    assert s2s.sentence_pairs(str(path)) == [("Er packte mich am Arm.", "He seized me by the arm."),
                                             ("Sie kommt nach Hause.", "She is coming home.")]
    assert s2s.detokenize(s2s.tokenize("He seized me, by the arm!")) == "he seized me, by the arm!"
    with pytest.raises(FileNotFoundError, match="apt-get install trans-de-en"):
        s2s.sentence_pairs(str(tmp_path / "missing"))


def test_batch_size_changes_updates_and_checkpoint_round_trip(tmp_path):
    s2s = _module()
    data_file = write_toy_dictionary(str(tmp_path / "toy"), 400)
    a = s2s.Seq2Seq(data_file=data_file, emb=16, hidden=32, sentences_per_step=64, dev_size=20)
    a.setup({"lr": 3e-3, "batch_size": 16})
    a.step()
    updates = lambda t: sum(int(s["step"]) for s in t.optimizer.state.values()) // len(t.optimizer.state)  # noqa: E731
    assert updates(a) == 4
    a.set_hparams({"lr": 3e-3, "batch_size": 32})
    a.step()
    assert updates(a) == 6  # 64 sentences in batches of 32: two more updates
    a.save(str(tmp_path / "c.pt"))
    b = s2s.Seq2Seq(data_file=data_file, emb=16, hidden=32, sentences_per_step=64, dev_size=20)
    b.setup({"lr": 1e-2, "batch_size": 128, "recurrent_dropout": 0.3})
    b.load(str(tmp_path / "c.pt"))
    src = a.data["dev"][0][:10]
    assert b.translate(src) == a.translate(src)
    assert b.optimizer.param_groups[0]["lr"] == 1e-2 and b.batch_size == 128  # its own hparams, donor's weights
    b.model.train()
    assert not torch.equal(b.model._mask(4), torch.ones(4, 32))
    b.model.eval()
    assert torch.equal(b.model._mask(4), torch.ones(4, 32))


def test_small_config_improves_bleu_over_initial_population(run_small, tmp_path):
    data_file = write_toy_dictionary(str(tmp_path / "toy"))
    out = run_small("seq2seq", "seq2seq_small.yaml",
                    trainable_args={**_small_args(), "data_file": data_file, "limit": 0, "vocab_size": 100})
    assert out.better(out.best_final, out.best_initial)
    assert out.best_final > 1.0  # BLEU of an untrained model is ~0


def _small_args():
    import pbtune

    return dict(pbtune.load_config(example_path("seq2seq", "seq2seq_small.yaml")).trainable_args)


@pytest.mark.slow
@pytest.mark.skipif(not os.path.exists("/usr/share/trans/de-en"), reason="needs `apt-get install trans-de-en`")
def test_small_config_on_the_real_dictionary(run_small):
    out = run_small("seq2seq", "seq2seq_small.yaml")
    losses = {}
    for record in out.store.scores(out.config.name):
        losses.setdefault(record.member_id, []).append(record.metrics["loss"])
    assert all(values[-1] < values[0] for values in losses.values())
    assert all(0.0 <= score <= 100.0 for score in out.final.values())
