"""Byte-level BPE training, with the pre-tokenizer llama.cpp uses for GLM-4
files (``tokenizer.ggml.pre = "glm4"``), so merges are learnt on the same
pieces llama.cpp will cut the text into.

Incremental: pair counts are kept and only the words that contain the merged
pair are updated, so a few thousand merges over a few MB take seconds.
Ties between equally frequent pairs are broken by the pair's text, so the
result is deterministic.
"""
from __future__ import annotations

from collections import Counter, defaultdict

import regex

from mtpllama.gguf_io import SPECIAL_TOKENS, Tokenizer, apply_merge, bytes_to_unicode

# llama.cpp's LLAMA_VOCAB_PRE_TYPE_CHATGLM4 expression (src/llama-vocab.cpp), in the syntax of `regex`
GLM4_PRETOKENIZE = regex.compile(
    r"(?:'[sS]|'[tT]|'[rR][eE]|'[vV][eE]|'[mM]|'[lL][lL]|'[dD])|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}"
    r"| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+")


def word_counts(texts) -> Counter:
    counts: Counter = Counter()
    for text in texts:
        counts.update(GLM4_PRETOKENIZE.findall(text))
    return counts


def train(texts, n_vocab: int) -> Tokenizer:
    """A tokenizer of n_vocab tokens: 256 bytes, merges, then the special tokens."""
    b2u = bytes_to_unicode()
    n_merges = n_vocab - 256 - len(SPECIAL_TOKENS)
    words: list[list[str]] = []
    freq: list[int] = []
    for w, c in sorted(word_counts(texts).items()):
        words.append([b2u[b] for b in w.encode("utf-8")])
        freq.append(c)
    pairs: Counter = Counter()
    where: dict[tuple[str, str], set[int]] = defaultdict(set)
    for i, w in enumerate(words):
        for a, b in zip(w, w[1:]):
            pairs[(a, b)] += freq[i]
            where[(a, b)].add(i)

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
            out = apply_merge(w, a, b)
            words[i] = out
            for p in zip(out, out[1:]):
                pairs[p] += c
                where[p].add(i)
        pairs.pop((a, b), None)
    types = [1] * len(vocab)
    eos = len(vocab)
    vocab += list(SPECIAL_TOKENS)
    types += [3] * len(SPECIAL_TOKENS)
    return Tokenizer(vocab, merges, types, eos)
