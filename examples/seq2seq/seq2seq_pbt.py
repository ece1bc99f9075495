"""PBT for machine translation, maximising BLEU directly (as in the paper's Transformer runs).

A small LSTM encoder-decoder with dot-product attention translates German to English. Two
data sources (``trainable_args.data``), both read from Debian's ``trans-de-en`` dictionary
(``apt-get install trans-de-en``: ``/usr/share/trans/de-en``):

* ``synthetic`` (the configs' choice): a generated language pair with the dictionary's real
  nouns, verbs and adjectives and a grammar with agreement, verb-second, verb-final clauses,
  the perfect, negation and modals (see ``synthetic.py``): ``pairs`` distinct pairs, split
  90/5/5 into train/dev/test, so test sentences are unseen combinations of known words;
* ``dictionary``: the dictionary's own example sentences (both sides 4-15 words,
  capitalised, ending in ``.``, ``!`` or ``?``): about 15k unrelated pairs over a 20k-word
  vocabulary, far too little data for a model trained in CPU-minutes (BLEU stays below 1).

PBT tunes the learning rate, dropout (embeddings and attention output), recurrent dropout
(a variational mask on the LSTM hidden state, one mask per sequence), the batch size and the
number of epochs per PBT step (``epochs``: one step is ``epochs`` passes over the shuffled
training split; without it, a fixed ``sentences_per_step``). A member with a larger batch takes
fewer, larger updates for the same sentences; a member with more epochs per step trains more
between evaluations (and costs more: each step reports the sentences it trained as ``work``).

Score: corpus BLEU (sacrebleu, 0-100) of greedy translations of the dev split, lowercased and
tokenized like the training data; ``evaluate()`` gives test BLEU.

    pbtune run examples/seq2seq/seq2seq_small.yaml
    python examples/compare.py examples/seq2seq/seq2seq_medium.yaml --seeds 0 1 2 3 4
"""

from __future__ import annotations

import collections
import hashlib
import importlib.util
import io
import json
import os
import random
import re
import sys
from collections.abc import Mapping, Sequence
from functools import lru_cache
from typing import Any

import torch
from torch import nn

import pbtune

DEFAULT_FILE = "/usr/share/trans/de-en"
PAD, BOS, EOS, UNK = 0, 1, 2, 3
SPECIALS = ["<pad>", "<s>", "</s>", "<unk>"]
_ANNOTATION = re.compile(r"\{[^}]*\}|\[[^\]]*\]|<[^>]*>|\([^)]*\)")
_TOKEN = re.compile(r"\w+|[^\w\s]")


def _clean(text: str) -> str:
    """Drop annotations ({m}, [ugs.], (...)) and the spaces they leave, also before punctuation."""
    return re.sub(r"\s+([.!?,;:])", r"\1", " ".join(_ANNOTATION.sub("", text).split()))


def sentence_pairs(path: str = DEFAULT_FILE, min_words: int = 4, max_words: int = 15) -> list[tuple[str, str]]:
    """German/English sentence pairs from a ``trans`` dictionary file (sorted, deduplicated).

    Raises:
        FileNotFoundError: with the command that installs the file.
    """
    if not os.path.exists(path):
        raise FileNotFoundError(f"{path} not found: install Debian's dictionary with `apt-get install trans-de-en` "
                                "or set trainable_args.data_file")
    pairs = set()
    with open(path, encoding="utf-8") as handle:
        for line in handle:
            if line.startswith("#") or " :: " not in line:
                continue
            german, english = line.rstrip("\n").split(" :: ", 1)
            sides = german.split(" | "), english.split(" | ")
            if len(sides[0]) != len(sides[1]):
                continue  # alternatives do not line up
            for de, en in zip(*sides, strict=True):
                de, en = (_clean(s.split("; ")[0]) for s in (de, en))
                if not all(s[:1].isupper() and s[-1:] in ".!?" and "/" not in s and "…" not in s for s in (de, en)):
                    continue
                if all(min_words <= len(s.split()) <= max_words for s in (de, en)):
                    pairs.add((de, en))
    return sorted(pairs)


def tokenize(text: str) -> list[str]:
    return _TOKEN.findall(text.lower())


def detokenize(tokens: Sequence[str]) -> str:
    """Join tokens, attaching punctuation to the word before it."""
    text = ""
    for token in tokens:
        glue = bool(text) and len(token) == 1 and not token.isalnum() and not token.isspace()
        text += token if glue or not text else " " + token
    return text


class Vocab:
    def __init__(self, sentences: Sequence[list[str]], min_freq: int = 2, max_size: int = 8000) -> None:
        counts = collections.Counter(tok for sentence in sentences for tok in sentence)
        words = [w for w, c in sorted(counts.items(), key=lambda wc: (-wc[1], wc[0])) if c >= min_freq][:max_size]
        self.itos = SPECIALS + words
        self.stoi = {w: i for i, w in enumerate(self.itos)}

    def __len__(self) -> int:
        return len(self.itos)

    def encode(self, tokens: Sequence[str]) -> list[int]:
        return [self.stoi.get(t, UNK) for t in tokens] + [EOS]

    def decode(self, ids: Sequence[int]) -> list[str]:
        out = []
        for i in ids:
            if i == EOS:
                break
            out.append(self.itos[i])
        return out


def _synthetic() -> Any:
    """The sibling module ``synthetic.py`` (trainables are loaded by file path, not as a package)."""
    name = "pbtune_example_seq2seq_synthetic"
    if name not in sys.modules:
        spec = importlib.util.spec_from_file_location(name, os.path.join(os.path.dirname(__file__), "synthetic.py"))
        if spec is None or spec.loader is None:
            raise ImportError(f"cannot load synthetic.py beside {__file__}")
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module
        spec.loader.exec_module(module)
    return sys.modules[name]


@lru_cache(maxsize=2)
def corpus(path: str = DEFAULT_FILE, limit: int = 0, vocab_size: int = 8000, data: str = "dictionary",
           pairs_wanted: int = 20000, lexicon: tuple[int, int, int] = (200, 40, 40)) -> dict[str, Any]:
    """Splits, vocabularies and id tensors (cached per process).

    ``data="dictionary"``: the dictionary's example sentences; ``"synthetic"``: ``pairs_wanted``
    generated pairs from ``lexicon = (nouns, verbs, adjectives)`` most frequent words.
    """
    if data == "dictionary":
        pairs = sentence_pairs(path)
        random.Random(0).shuffle(pairs)
    elif data == "synthetic":
        pairs = _synthetic().generate(path, pairs_wanted, 0, *lexicon)
    else:
        raise pbtune.InvalidConfigError("data", "trainable_args", "one of dictionary, synthetic", data)
    if limit:
        pairs = pairs[:limit]
    n_eval = max(50, len(pairs) // 20)
    splits = {"test": pairs[:n_eval], "dev": pairs[n_eval:2 * n_eval], "train": pairs[2 * n_eval:]}
    train_de = [tokenize(d) for d, _ in splits["train"]]
    train_en = [tokenize(e) for _, e in splits["train"]]
    src, tgt = Vocab(train_de, max_size=vocab_size), Vocab(train_en, max_size=vocab_size)
    data: dict[str, Any] = {"src_vocab": src, "tgt_vocab": tgt, "pairs": splits}
    for name, items in splits.items():
        data[name] = ([src.encode(tokenize(d)) for d, _ in items], [tgt.encode(tokenize(e)) for _, e in items],
                      [detokenize(tokenize(e)) for _, e in items])
    return data


def pad(sequences: Sequence[list[int]]) -> torch.Tensor:
    width = max(len(s) for s in sequences)
    return torch.tensor([s + [PAD] * (width - len(s)) for s in sequences], dtype=torch.long)


class Translator(nn.Module):
    """LSTM encoder, LSTM decoder with input feeding and Luong dot attention."""

    def __init__(self, src_vocab: int, tgt_vocab: int, emb: int = 128, hidden: int = 256) -> None:
        super().__init__()
        self.hidden = hidden
        self.src_emb = nn.Embedding(src_vocab, emb, padding_idx=PAD)
        self.tgt_emb = nn.Embedding(tgt_vocab, emb, padding_idx=PAD)
        self.encoder = nn.LSTMCell(emb, hidden)
        self.decoder = nn.LSTMCell(emb + hidden, hidden)
        self.combine = nn.Linear(2 * hidden, hidden)
        self.out = nn.Linear(hidden, tgt_vocab)
        self.dropout = 0.2
        self.recurrent_dropout = 0.1

    @property
    def device(self) -> torch.device:
        return self.out.weight.device

    def _mask(self, batch: int) -> torch.Tensor:
        """One variational dropout mask on the hidden state per sequence (Gal & Ghahramani)."""
        if not self.training or self.recurrent_dropout <= 0:
            return torch.ones(batch, self.hidden, device=self.device)
        keep = 1.0 - self.recurrent_dropout
        return torch.bernoulli(torch.full((batch, self.hidden), keep, device=self.device)) / keep

    def encode(self, src: torch.Tensor) -> tuple[torch.Tensor, tuple[torch.Tensor, torch.Tensor]]:
        batch, length = src.shape
        emb = nn.functional.dropout(self.src_emb(src), self.dropout, self.training)
        h = c = torch.zeros(batch, self.hidden, device=self.device)
        mask = self._mask(batch)
        outputs = []
        for t in range(length):
            h_new, c_new = self.encoder(emb[:, t], (h * mask, c))
            live = (src[:, t] != PAD).unsqueeze(1).float()  # padded steps keep the state
            h, c = live * h_new + (1 - live) * h, live * c_new + (1 - live) * c
            outputs.append(h)
        return torch.stack(outputs, 1), (h, c)

    def _decode_step(self, token: torch.Tensor, state: tuple[torch.Tensor, torch.Tensor], feed: torch.Tensor,
                     memory: torch.Tensor, src_pad: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, ...]:
        emb = nn.functional.dropout(self.tgt_emb(token), self.dropout, self.training)
        h, c = self.decoder(torch.cat([emb, feed], 1), (state[0] * mask, state[1]))
        scores = torch.bmm(memory, h.unsqueeze(2)).squeeze(2).masked_fill(src_pad, -1e9)
        context = torch.bmm(torch.softmax(scores, 1).unsqueeze(1), memory).squeeze(1)
        attended = torch.tanh(self.combine(torch.cat([h, context], 1)))
        attended = nn.functional.dropout(attended, self.dropout, self.training)
        return self.out(attended), (h, c), attended

    def forward(self, src: torch.Tensor, tgt: torch.Tensor) -> torch.Tensor:
        """Teacher-forced logits for ``tgt`` (which ends in EOS; BOS is prepended here)."""
        memory, state = self.encode(src)
        batch = src.shape[0]
        src_pad, mask = src == PAD, self._mask(batch)
        feed = torch.zeros(batch, self.hidden, device=self.device)
        inputs = torch.cat([torch.full((batch, 1), BOS, dtype=torch.long, device=self.device), tgt[:, :-1]], 1)
        logits = []
        for t in range(inputs.shape[1]):
            step_logits, state, feed = self._decode_step(inputs[:, t], state, feed, memory, src_pad, mask)
            logits.append(step_logits)
        return torch.stack(logits, 1)

    @torch.no_grad()
    def greedy(self, src: torch.Tensor, max_len: int = 24) -> list[list[int]]:
        memory, state = self.encode(src)
        batch = src.shape[0]
        src_pad, mask = src == PAD, self._mask(batch)
        feed = torch.zeros(batch, self.hidden, device=self.device)
        token = torch.full((batch,), BOS, dtype=torch.long, device=self.device)
        out = []
        for _ in range(max_len):
            logits, state, feed = self._decode_step(token, state, feed, memory, src_pad, mask)
            token = logits.argmax(1)
            out.append(token)
            if bool((torch.stack(out, 1) == EOS).any(1).all()):
                break
        return torch.stack(out, 1).tolist()


def member_seed(seed: int, hparams: Mapping[str, Any]) -> int:
    text = json.dumps([seed, sorted((k, repr(v)) for k, v in hparams.items())])
    return int.from_bytes(hashlib.sha256(text.encode()).digest()[:4], "big") % 2**30


class Seq2Seq(pbtune.Trainable):
    """One step = ``sentences_per_step`` training sentences in minibatches of ``batch_size``.

    Trains on CUDA when torch sees a GPU (``device: auto``, or ``cpu``/``cuda``).
    """

    def setup(self, hparams: Mapping[str, Any]) -> None:
        torch.set_num_threads(1)
        a = self.args
        device = a.get("device", "auto")
        self.device = torch.device(("cuda" if torch.cuda.is_available() else "cpu") if device == "auto" else device)
        self.data = corpus(str(a.get("data_file", DEFAULT_FILE)), int(a.get("limit", 0)),
                           int(a.get("vocab_size", 8000)), str(a.get("data", "dictionary")), int(a.get("pairs", 20000)),
                           (int(a.get("nouns", 200)), int(a.get("verbs", 40)), int(a.get("adjectives", 40))))
        self.sentences_per_step = int(a.get("sentences_per_step", 2048))
        self.max_len = max(len(t) for t in self.data["train"][1]) + 4
        self.dev_size = int(a.get("dev_size", 300))
        # The runner's per-member seed (self.seed; new after an exploit, so a copy draws other
        # data than its donor); standalone, one from the run seed and the hparams.
        seed = self.seed % 2**31 if self.seed is not None else member_seed(int(a.get("seed", 0)), hparams)
        torch.manual_seed(seed)
        self.rng = random.Random(seed)
        self.order: list[int] = []  # the rest of the current epoch's shuffled training indices
        self.model = Translator(len(self.data["src_vocab"]), len(self.data["tgt_vocab"]),
                                int(a.get("emb", 128)), int(a.get("hidden", 256))).to(self.device)
        self.optimizer = torch.optim.Adam(self.model.parameters(), lr=1e-3)
        self.loss_fn = nn.CrossEntropyLoss(ignore_index=PAD)
        self.set_hparams(hparams)

    def _get(self, hparams: Mapping[str, Any], name: str, default: float) -> float:
        return float(hparams.get(name, self.args.get(name, default)))

    def set_hparams(self, hparams: Mapping[str, Any]) -> None:
        self.hparams = dict(hparams)
        for group in self.optimizer.param_groups:
            group["lr"] = self._get(hparams, "lr", 1e-3)
        self.model.dropout = self._get(hparams, "dropout", 0.2)
        self.model.recurrent_dropout = self._get(hparams, "recurrent_dropout", 0.1)
        self.batch_size = int(self._get(hparams, "batch_size", 64))
        epochs = hparams.get("epochs", self.args.get("epochs"))
        self.epochs = None if epochs is None else float(epochs)

    def sentences_this_step(self) -> int:
        """``epochs`` x the training split (at least one batch), or ``sentences_per_step``."""
        if self.epochs is None:
            return self.sentences_per_step
        return max(self.batch_size, round(self.epochs * len(self.data["train"][0])))

    def _batch(self) -> list[int]:
        """The next ``batch_size`` indices of a shuffled pass over the training split."""
        index: list[int] = []
        while len(index) < self.batch_size:
            if not self.order:
                self.order = list(range(len(self.data["train"][0])))
                self.rng.shuffle(self.order)
            take = self.batch_size - len(index)
            index += self.order[:take]
            del self.order[:take]
        return index

    def step(self) -> Mapping[str, float]:
        src_all, tgt_all, _ = self.data["train"]
        self.model.train()
        done, losses, target = 0, [], self.sentences_this_step()
        while done < target:
            index = self._batch()
            src = pad([src_all[i] for i in index]).to(self.device)
            tgt = pad([tgt_all[i] for i in index]).to(self.device)
            logits = self.model(src, tgt)
            loss = self.loss_fn(logits.reshape(-1, logits.shape[-1]), tgt.reshape(-1))
            self.optimizer.zero_grad(set_to_none=True)
            loss.backward()
            nn.utils.clip_grad_norm_(self.model.parameters(), 1.0)
            self.optimizer.step()
            losses.append(float(loss.detach()))
            done += self.batch_size
        return {"bleu": self.bleu("dev", self.dev_size), "loss": sum(losses) / len(losses), "work": float(done)}

    def translate(self, sources: Sequence[list[int]], batch: int = 200) -> list[str]:
        self.model.eval()
        vocab = self.data["tgt_vocab"]
        out: list[str] = []
        for i in range(0, len(sources), batch):
            ids = self.model.greedy(pad(sources[i:i + batch]).to(self.device), self.max_len)
            out += [detokenize(vocab.decode(row)) for row in ids]
        return out

    def bleu(self, split: str, limit: int | None = None) -> float:
        import sacrebleu

        src, _, refs = self.data[split]
        src, refs = (src[:limit], refs[:limit]) if limit else (src, refs)
        return float(sacrebleu.corpus_bleu(self.translate(src), [refs]).score)

    def evaluate(self) -> dict[str, float]:
        """Test-split BLEU (for examples/compare.py)."""
        return {"test_bleu": self.bleu("test")}

    def save(self, path: str) -> None:
        buffer = io.BytesIO()
        torch.save({"model": self.model.state_dict(), "optimizer": self.optimizer.state_dict()}, buffer)
        with open(path, "wb") as handle:
            handle.write(buffer.getvalue())

    def load(self, path: str) -> None:
        state = torch.load(path, weights_only=True, map_location=self.device)  # saved on a GPU: loads anywhere
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.set_hparams(self.hparams)  # the optimizer state carries the saver's lr; ours wins


if __name__ == "__main__":
    config = pbtune.load_config(os.path.join(os.path.dirname(__file__), "seq2seq_small.yaml"))
    result = pbtune.run(config=config)
    print(f"best member {result.best.member_id}: dev BLEU {result.best.score:.2f} with {dict(result.best.hparams)}")
