"""Byte-level BPE tokenizers for test, benchmark and training files (GPT-2's byte map, merges
learnt deterministically), and the small corpus the test files' tokenizer is learnt on."""
from __future__ import annotations

import re
from collections import Counter, defaultdict
from collections.abc import Mapping
from dataclasses import dataclass


SPECIAL_TOKENS = ("<|endoftext|>", "[gMASK]", "<sop>", "<|user|>", "<|assistant|>")

_CORPUS = """\
def fibonacci(n):
    \"\"\"Return the n-th Fibonacci number.\"\"\"
    a, b = 0, 1
    for _ in range(n):
        a, b = b, a + b
    return a


class Stack:
    def __init__(self):
        self.items = []

    def push(self, item):
        self.items.append(item)

    def pop(self):
        if not self.items:
            raise IndexError("pop from empty stack")
        return self.items.pop()


import os
import sys

for name in sorted(os.listdir(path)):
    if name.endswith(".py"):
        print(name, file=sys.stderr)

The quick brown fox jumps over the lazy dog. The model predicts the next token,
and the multi-token prediction head predicts the token after that. When the
draft is right, the trunk accepts it and the text comes out faster.
Greedy decoding with speculation must give exactly the same output as greedy
decoding without it: every token is checked by the main model.
"""

_PRETOKENIZE = re.compile(r"""'s|'t|'re|'ve|'m|'ll|'d| ?[A-Za-z_]+| ?[0-9]+| ?[^\sA-Za-z_0-9]+|\s+(?!\S)|\s+""")


def bytes_to_unicode() -> dict[int, str]:
    """GPT-2's reversible map from bytes to printable unicode characters."""
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return dict(zip(bs, (chr(c) for c in cs)))


@dataclass(frozen=True)
class Tokenizer:
    tokens: list[str]
    merges: list[str]
    token_types: list[int]
    eos_id: int

    @property
    def n_vocab(self) -> int:
        return len(self.tokens)

    @property
    def normal_ids(self) -> list[int]:
        return [i for i, t in enumerate(self.token_types) if t == 1]


def apply_merge(symbols, a: str, b: str) -> list[str]:
    """The symbols with every adjacent (a, b) replaced by a + b, left to right."""
    out, i = [], 0
    while i < len(symbols):
        if i + 1 < len(symbols) and symbols[i] == a and symbols[i + 1] == b:
            out.append(a + b)
            i += 2
        else:
            out.append(symbols[i])
            i += 1
    return out


def bpe_from_words(word_counts: Mapping[str, int], n_merges: int) -> Tokenizer:
    """Learn up to n_merges byte-level BPE merges from pre-tokenized words and their counts.

    Deterministic: the most frequent pair wins, ties go to the larger pair text.  Incremental:
    pair counts are kept and only the words holding the merged pair are updated, so a few
    thousand merges over megabytes of text take seconds."""
    b2u = bytes_to_unicode()
    words: list[list[str]] = []
    freq: list[int] = []
    for w, c in sorted(word_counts.items()):
        words.append([b2u[b] for b in w.encode("utf-8")])
        freq.append(c)
    pairs: Counter = Counter()
    where: dict[tuple[str, str], set[int]] = defaultdict(set)
    for i, w in enumerate(words):
        for p in zip(w, w[1:]):
            pairs[p] += freq[i]
            where[p].add(i)
    vocab = [b2u[b] for b in range(256)]
    known = set(vocab)
    merges: list[str] = []
    while len(merges) < n_merges and pairs:
        (a, b), count = max(pairs.items(), key=lambda kv: (kv[1], kv[0]))
        if count < 2:
            break
        merges.append(f"{a} {b}")
        if a + b not in known:
            vocab.append(a + b)
            known.add(a + b)
        for i in sorted(where.pop((a, b), ())):
            w, c = words[i], freq[i]
            for p in zip(w, w[1:]):
                pairs[p] -= c
                if pairs[p] <= 0:
                    del pairs[p]
            words[i] = apply_merge(w, a, b)
            for p in zip(words[i], words[i][1:]):
                pairs[p] += c
                where[p].add(i)
        pairs.pop((a, b), None)
    types = [1] * len(vocab)
    eos = len(vocab)
    vocab += list(SPECIAL_TOKENS)
    types += [3] * len(SPECIAL_TOKENS)
    return Tokenizer(vocab, merges, types, eos)


def train_bpe(text: str = _CORPUS, n_merges: int = 200) -> Tokenizer:
    """Learn n_merges byte-level BPE merges from text (deterministic)."""
    return bpe_from_words(Counter(_PRETOKENIZE.findall(text)), n_merges)


