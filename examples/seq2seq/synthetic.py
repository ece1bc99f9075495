"""A synthetic German -> English language pair with real vocabulary (for the translation example).

Content words come from Debian's ``trans-de-en`` dictionary (``/usr/share/trans/de-en``):
nouns with their gender and plural (``Hund {m} | Hunde {pl} :: dog | dogs``), transitive
verbs with their conjugated forms (``er/sie sieht``, ``gesehen``, ``he/she sees``, ``saw``) and
adjectives (``gut {adj} :: good``); the first sense listed is the translation, and the most
frequent words of the dictionary (counted over its German side) are kept. Sentences come from
a small grammar that carries the structure a translator has to learn:

* case and gender agreement of articles and adjectives (``der gute Hund`` / ``den guten Hund``
  / ``ein guter Hund`` -> ``the good dog`` / ``a good dog``), plural nouns and verbs;
* verb-second inversion after a fronted adverb (``Heute sieht der Hund ...`` -> ``Today the dog sees ...``);
* the perfect with its participle at the end (``... hat die Katze gesehen.`` -> ``... saw the cat.``);
* negation with ``nicht`` at the end vs English do-support (``does not see``);
* modal verbs with the infinitive at the end (``will ... sehen`` -> ``wants to see``);
* verb-final subordinate clauses (``..., weil der Hund die Katze sieht.`` -> ``... because the dog sees the cat.``);
* ``a``/``an`` chosen by the next English word, ``oft`` moving to ``often`` before the verb.

Everything is deterministic given the dictionary file and the seed. The meaning is nonsense
("the good pole describes a town"), but the mapping is exact, so BLEU against these references
measures how much of the grammar and the lexicon a model has learned.
"""

from __future__ import annotations

import collections
import os
import random
import re
from dataclasses import dataclass
from functools import lru_cache

_ANNOTATION = re.compile(r"\{[^}]*\}|\[[^\]]*\]|<[^>]*>|\([^)]*\)")
_WORD = re.compile(r"^[a-zäöüß]+$")
_NOUN = re.compile(r"^([A-ZÄÖÜ][a-zäöüß]+) \{([mfn])\}")
_TOKEN = re.compile(r"\w+")

# Closed-class words: the grammar, written here (the dictionary gives the open classes).
DEFINITE = {("nom", "m"): "der", ("nom", "f"): "die", ("nom", "n"): "das", ("nom", "pl"): "die",
            ("acc", "m"): "den", ("acc", "f"): "die", ("acc", "n"): "das", ("acc", "pl"): "die"}
INDEFINITE = {("nom", "m"): "ein", ("nom", "f"): "eine", ("nom", "n"): "ein",
              ("acc", "m"): "einen", ("acc", "f"): "eine", ("acc", "n"): "ein"}
WEAK = {("nom", "m"): "e", ("nom", "f"): "e", ("nom", "n"): "e", ("acc", "m"): "en", ("acc", "f"): "e",
        ("acc", "n"): "e", ("nom", "pl"): "en", ("acc", "pl"): "en"}  # after der/die/das
MIXED = {("nom", "m"): "er", ("nom", "f"): "e", ("nom", "n"): "es", ("acc", "m"): "en", ("acc", "f"): "e",
         ("acc", "n"): "es"}  # after ein/eine
FRONT = [("heute", "today"), ("jetzt", "now"), ("morgen", "tomorrow")]  # V2: the verb comes second
MODALS = {"will": ("will", "wollen", "wants to", "want to"), "kann": ("kann", "können", "can", "can")}
CONJUNCTIONS = [("weil", "because"), ("obwohl", "although"), ("wenn", "when")]


@dataclass(frozen=True)
class Noun:
    de: str
    gender: str  # m, f, n
    de_plural: str
    en: str
    en_plural: str


@dataclass(frozen=True)
class Verb:
    de: str  # infinitive, also the plural present
    de_3sg: str
    de_participle: str
    en: str  # base form
    en_3sg: str
    en_past: str


@dataclass(frozen=True)
class Lexicon:
    nouns: tuple[Noun, ...]
    verbs: tuple[Verb, ...]
    adjectives: tuple[tuple[str, str], ...]


def _first(alternative: str) -> str:
    """The first sense of one alternative, annotations ({m}, [ugs.], (...)) removed first: they hold ';' too."""
    return " ".join(_ANNOTATION.sub("", alternative).split(";")[0].split())


def _verb(de: list[str], en: list[str]) -> Verb | None:
    """A transitive verb entry with its forms at the same positions on both sides, or None."""
    if "{vt}" not in de[0] or len(de) < 6:
        return None
    forms: dict[str, tuple[str, str]] = {}
    for d, e in zip(de, en, strict=False):
        d, e = _first(d), _first(e)
        if d.startswith("er/sie hat/hatte "):
            forms.setdefault("perfect", (d, e))
        elif d.startswith("er/sie ") and e.startswith("he/she "):
            forms.setdefault("3sg", (d[7:], e[7:]))
        elif d.startswith("ich/er/sie ") and e.startswith("I/he/she "):
            forms.setdefault("past", (d[11:], e[9:]))
    if set(forms) != {"perfect", "3sg", "past"}:
        return None  # no 3sg/past, or a perfect with sein
    infinitive, english = _first(de[0]), _first(en[0])
    participle = _first(de[2])
    if not english.startswith("to ") or forms["perfect"][0] != f"er/sie hat/hatte {participle}":
        return None
    verb = Verb(infinitive, forms["3sg"][0], participle, english[3:], forms["3sg"][1], forms["past"][1])
    words = (verb.de, verb.de_3sg, verb.de_participle, verb.en, verb.en_3sg, verb.en_past)
    return verb if all(_WORD.match(w) for w in words) else None  # separable verbs ("ruft an") are dropped


@lru_cache(maxsize=4)
def read_lexicon(path: str) -> tuple[Lexicon, dict[str, int]]:
    """Every usable noun, verb and adjective of a ``trans`` file, and German word counts (for ranking).

    Raises:
        FileNotFoundError: with the command that installs the file.
    """
    if not os.path.exists(path):
        raise FileNotFoundError(f"{path} not found: install Debian's dictionary with `apt-get install trans-de-en` "
                                "or set trainable_args.data_file")
    nouns: dict[str, Noun] = {}
    verbs: dict[str, Verb] = {}
    adjectives: dict[str, str] = {}
    counts: collections.Counter[str] = collections.Counter()
    with open(path, encoding="utf-8") as handle:
        for line in handle:
            if line.startswith("#") or " :: " not in line:
                continue
            german, english = line.rstrip("\n").split(" :: ", 1)
            counts.update(_TOKEN.findall(german.lower()))
            de, en = german.split(" | "), english.split(" | ")
            head = de[0].strip()
            if re.match(r"^[a-zäöüß]+ \{adj\}$", head):
                word, meaning = _first(de[0]), _first(en[0])
                # -e/-el/-er stems change when inflected (leise, dunkel, teuer): left out
                if _WORD.match(word) and _WORD.match(meaning) and not re.search(r"(e|el|er)$", word):
                    adjectives.setdefault(word, meaning)
            elif len(de) != len(en) or len(de) < 2:
                continue
            elif (match := _NOUN.match(head)) and de[1].strip().endswith("{pl}"):
                noun = Noun(_first(de[0]), match.group(2), _first(de[1]), _first(en[0]), _first(en[1]))
                if (noun.de == match.group(1) and re.match(r"^[A-ZÄÖÜ][a-zäöüß]+$", noun.de_plural)
                        and _WORD.match(noun.en) and _WORD.match(noun.en_plural)):
                    nouns.setdefault(noun.de, noun)
            elif verb := _verb(de, en):
                verbs.setdefault(verb.de, verb)
    lexicon = Lexicon(tuple(nouns.values()), tuple(verbs.values()), tuple(adjectives.items()))
    return lexicon, dict(counts)


def lexicon(path: str, n_nouns: int, n_verbs: int, n_adjectives: int) -> Lexicon:
    """The ``n`` most frequent words of each class (ties by spelling): deterministic for a file."""
    full, counts = read_lexicon(path)

    def top(items: tuple, key: str | int, n: int) -> tuple:
        word = (lambda x: getattr(x, key)) if isinstance(key, str) else (lambda x: x[key])
        return tuple(sorted(items, key=lambda x: (-counts.get(word(x).lower(), 0), word(x)))[:n])

    chosen = Lexicon(top(full.nouns, "de", n_nouns), top(full.verbs, "de", n_verbs),
                     top(full.adjectives, 0, n_adjectives))
    if not (chosen.nouns and chosen.verbs and chosen.adjectives):
        raise ValueError(f"{path}: found {len(full.nouns)} nouns, {len(full.verbs)} transitive verbs and "
                         f"{len(full.adjectives)} adjectives; the grammar needs at least one of each")
    return chosen


class Grammar:
    """Draws aligned (German, English) sentences from a lexicon with a seeded generator."""

    def __init__(self, words: Lexicon, rng: random.Random) -> None:
        self.words, self.rng = words, rng

    def noun_phrase(self, case: str) -> tuple[str, str, bool]:
        """(German, English, plural?) of ``[article] [adjective] noun`` in the nominative or accusative."""
        rng, noun = self.rng, self.rng.choice(self.words.nouns)
        plural = rng.random() < 0.3
        definite = plural or rng.random() < 0.7
        key = (case, "pl" if plural else noun.gender)
        de_noun, en_noun = (noun.de_plural, noun.en_plural) if plural else (noun.de, noun.en)
        de_words, en_words = [], [en_noun]
        if rng.random() < 0.4:
            adjective, meaning = rng.choice(self.words.adjectives)
            de_words.append(adjective + (WEAK if definite else MIXED)[key])
            en_words.insert(0, meaning)
        de_words.append(de_noun)
        article = (DEFINITE if definite else INDEFINITE)[key]
        english_article = "the" if definite else ("an" if en_words[0][0] in "aeiou" else "a")
        return " ".join([article, *de_words]), " ".join([english_article, *en_words]), plural

    def clause(self) -> dict[str, str]:
        """The parts of one transitive clause, German and English, in every form the templates need."""
        verb = self.rng.choice(self.words.verbs)
        s_de, s_en, plural = self.noun_phrase("nom")
        o_de, o_en, _ = self.noun_phrase("acc")
        return {"s_de": s_de, "s_en": s_en, "o_de": o_de, "o_en": o_en, "plural": "1" if plural else "",
                "v_de": verb.de if plural else verb.de_3sg, "v_en": verb.en if plural else verb.en_3sg,
                "inf_de": verb.de, "inf_en": verb.en, "part_de": verb.de_participle, "past_en": verb.en_past,
                "aux_de": "haben" if plural else "hat", "do_en": "do" if plural else "does"}

    def sentence(self) -> tuple[str, str]:
        c, rng = self.clause(), self.rng
        kind = rng.choice(["plain", "front", "often", "perfect", "negated", "modal", "subordinate"])
        if kind == "plain":
            de, en = f"{c['s_de']} {c['v_de']} {c['o_de']}", f"{c['s_en']} {c['v_en']} {c['o_en']}"
        elif kind == "front":
            adverb, meaning = rng.choice(FRONT)
            de, en = f"{adverb} {c['v_de']} {c['s_de']} {c['o_de']}", f"{meaning} {c['s_en']} {c['v_en']} {c['o_en']}"
        elif kind == "often":
            de, en = f"{c['s_de']} {c['v_de']} oft {c['o_de']}", f"{c['s_en']} often {c['v_en']} {c['o_en']}"
        elif kind == "perfect":
            front = rng.random() < 0.5
            de = (f"gestern {c['aux_de']} {c['s_de']} {c['o_de']} {c['part_de']}" if front
                  else f"{c['s_de']} {c['aux_de']} {c['o_de']} {c['part_de']}")
            en = f"{'yesterday ' if front else ''}{c['s_en']} {c['past_en']} {c['o_en']}"
        elif kind == "negated":
            de = f"{c['s_de']} {c['v_de']} {c['o_de']} nicht"
            en = f"{c['s_en']} {c['do_en']} not {c['inf_en']} {c['o_en']}"
        elif kind == "modal":
            de_sg, de_pl, en_sg, en_pl = MODALS[rng.choice(sorted(MODALS))]
            modal_de, modal_en = (de_pl, en_pl) if c["plural"] else (de_sg, en_sg)
            de = f"{c['s_de']} {modal_de} {c['o_de']} {c['inf_de']}"
            en = f"{c['s_en']} {modal_en} {c['inf_en']} {c['o_en']}"
        else:
            inner, (conjunction, meaning) = self.clause(), rng.choice(CONJUNCTIONS)
            de = (f"{c['s_de']} {c['v_de']} {c['o_de']}, {conjunction} "
                  f"{inner['s_de']} {inner['o_de']} {inner['v_de']}")
            en = f"{c['s_en']} {c['v_en']} {c['o_en']} {meaning} {inner['s_en']} {inner['v_en']} {inner['o_en']}"
        return _sentence_case(de) + ".", _sentence_case(en) + "."


def _sentence_case(text: str) -> str:
    return text[:1].upper() + text[1:]


def generate(path: str, n_pairs: int, seed: int = 0, n_nouns: int = 200, n_verbs: int = 40,
             n_adjectives: int = 40) -> list[tuple[str, str]]:
    """``n_pairs`` distinct sentence pairs (German, English), in generation order."""
    grammar = Grammar(lexicon(path, n_nouns, n_verbs, n_adjectives), random.Random(seed))
    seen: dict[tuple[str, str], None] = {}
    for _ in range(50 * n_pairs):
        if len(seen) >= n_pairs:
            break
        seen.setdefault(grammar.sentence())
    return list(seen)
