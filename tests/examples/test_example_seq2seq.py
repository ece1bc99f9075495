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


LEXICON = """# toy lexicon :: in the trans-de-en format
Hund {m} [zool.] | Hunde {pl} | Haushund {m} :: dog; hound | dogs | domestic dog
Katze {f} | Katzen {pl} :: cat | cats
Haus {n} | Häuser {pl} :: house | houses
Apfel {m} | Äpfel {pl} :: apple | apples
Blume {f} | Blumen {pl} :: flower | flowers
Auto {n} | Autos {pl} :: car | cars
Hund {m} :: canine
sehen {vt} | sehend | gesehen | er/sie sieht | ich/er/sie sah | er/sie hat/hatte gesehen :: to see | seeing | seen | he/she sees | I/he/she saw | he/she has/had seen
finden; vorfinden {vt} | findend | gefunden | er/sie findet | ich/er/sie fand | er/sie hat/hatte gefunden :: to find {found; found} | finding | found | he/she finds | I/he/she found | he/she has/had found
kaufen {vt} | kaufend | gekauft | er/sie kauft | ich/er/sie kaufte | er/sie hat/hatte gekauft :: to buy | buying | bought | he/she buys | I/he/she bought | he/she has/had bought
anrufen {vt} | anrufend | angerufen | er/sie ruft an | ich/er/sie rief an | er/sie hat/hatte angerufen :: to call | calling | called | he/she calls | I/he/she called | he/she has/had called
laufen {vi} | laufend | gelaufen | er/sie läuft | ich/er/sie lief | er/sie ist/war gelaufen :: to run | running | run | he/she runs | I/he/she ran | he/she has/had run
rot {adj} :: red
groß {adj} | größer | am größten :: big | bigger | biggest
alt {adj} | älter | am ältesten :: old | older | oldest
dunkel {adj} :: dark
"""  # noqa: E501


def write_toy_lexicon(path: str) -> str:
    with open(path, "w", encoding="utf-8") as handle:
        handle.write(LEXICON)
    return path


def _synthetic():
    spec = importlib.util.spec_from_file_location("seq2seq_synthetic_example", example_path("seq2seq", "synthetic.py"))
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


def test_lexicon_reads_genders_plurals_and_verb_forms(tmp_path):
    syn = _synthetic()
    lexicon, counts = syn.read_lexicon(write_toy_lexicon(str(tmp_path / "lex")))
    assert {n.de: (n.gender, n.de_plural, n.en, n.en_plural) for n in lexicon.nouns}["Hund"] == ("m", "Hunde", "dog",
                                                                                                "dogs")
    assert len(lexicon.nouns) == 6  # the second Hund entry has no plural: skipped
    assert {v.de: v for v in lexicon.verbs}["finden"] == syn.Verb("finden", "findet", "gefunden", "find", "finds",
                                                                  "found")
    # separable (ruft an) and intransitive perfect-with-sein (ist gelaufen) verbs are left out
    assert sorted(v.de for v in lexicon.verbs) == ["finden", "kaufen", "sehen"]
    assert dict(lexicon.adjectives) == {"rot": "red", "groß": "big", "alt": "old"}  # dunkel -> dunkle: left out
    assert counts["hund"] == 2  # German tokens: "Hund" in two entries (Hunde, Haushund are other words)
    top = syn.lexicon(str(tmp_path / "lex"), 1, 1, 1)
    assert top.nouns[0].de == "Hund" and len(top.verbs) == len(top.adjectives) == 1
    with pytest.raises(FileNotFoundError, match="apt-get install trans-de-en"):
        syn.read_lexicon(str(tmp_path / "missing"))


def test_grammar_agrees_reorders_and_is_deterministic(tmp_path):
    syn = _synthetic()
    path = write_toy_lexicon(str(tmp_path / "lex"))
    pairs = syn.generate(path, 400, seed=3)
    assert pairs == syn.generate(path, 400, seed=3) and pairs != syn.generate(path, 400, seed=4)
    assert len(set(pairs)) == 400
    for de, en in pairs:
        assert de[0].isupper() and en[0].isupper() and de.endswith(".") and en.endswith(".")
        if en.startswith("Yesterday"):  # perfect, fronted: auxiliary second, participle last; English simple past
            assert de.split()[1] in ("hat", "haben") and de.split()[-1][:-1] in ("gesehen", "gefunden", "gekauft")
            assert en.split()[-3] in ("saw", "found", "bought") or en.split()[-4] in ("saw", "found", "bought")
        if de.endswith(" nicht."):
            assert " does not " in en or " do not " in en
        if ", weil " in de:  # verb-final subordinate clause
            assert de.split()[-1][:-1] in ("sieht", "sehen", "findet", "finden", "kauft", "kaufen")
            assert " because " in en
    german = " ".join(de for de, _ in pairs)
    assert "den Hund" in german and "einen Hund" in german and "der Hund" in german  # accusative/nominative
    assert any(de.startswith("Heute ") and en.startswith("Today the ") or en.startswith("Today a")
               for de, en in pairs)
    english = [en for _, en in pairs]
    assert any(" an old " in e or e.startswith("An ") for e in english)  # a/an follows the English word
    assert not any(" a old " in e or " a apple" in e for e in english)
    assert any(" großen " in de for de, _ in pairs) and any(" großer " in de for de, _ in pairs)


def test_epochs_per_step_is_a_pass_over_the_training_split(tmp_path):
    s2s = _module()
    args = {"data": "synthetic", "data_file": write_toy_lexicon(str(tmp_path / "lex")), "pairs": 220, "emb": 16,
            "hidden": 32, "dev_size": 10}
    a = s2s.Seq2Seq(**args)
    a.setup({"lr": 3e-3, "batch_size": 16, "epochs": 1.0})
    n_train = len(a.data["train"][0])
    assert n_train == 220 - 2 * 50 and a.sentences_this_step() == n_train
    seen = [i for _ in range(n_train // 16) for i in a._batch()]
    assert len(set(seen)) == len(seen)  # no sentence twice within one pass
    metrics = a.step()
    assert metrics["work"] >= n_train and metrics["work"] < n_train + 16 + n_train
    a.set_hparams({"lr": 3e-3, "batch_size": 16, "epochs": 0.5})
    assert a.sentences_this_step() == n_train // 2
    assert a.step()["work"] == 64  # 60 sentences rounded up to whole batches of 16
    b = s2s.Seq2Seq(**args)
    b.setup({"lr": 3e-3, "batch_size": 16})
    assert b.sentences_this_step() == 2048  # no epochs: the fixed sentences_per_step


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
    data_file = write_toy_lexicon(str(tmp_path / "lex"))
    out = run_small("seq2seq", "seq2seq_small.yaml",  # the toy lexicon, and 600 pairs instead of 1500 (time)
                    trainable_args={**_small_args(), "data_file": data_file, "pairs": 600, "dev_size": 50})
    assert out.better(out.best_final, out.best_initial)
    assert out.best_final > 10.0  # BLEU of an untrained model is ~0


def test_dictionary_sentences_still_train(tmp_path):
    s2s = _module()
    data_file = write_toy_dictionary(str(tmp_path / "toy"), 400)
    a = s2s.Seq2Seq(data_file=data_file, data="dictionary", emb=16, hidden=32, sentences_per_step=64, dev_size=20)
    a.setup({"lr": 3e-3, "batch_size": 32})
    assert a.step()["work"] == 64


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
    assert out.better(out.best_final, out.best_initial) and out.best_final > 5.0
    assert all(0.0 <= score <= 100.0 for score in out.final.values())
