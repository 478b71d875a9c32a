"""Byte-level BPE for the default model, learnt on the pieces llama.cpp's pre-tokenizer for
GLM-4 files (``tokenizer.ggml.pre = "glm4"``) cuts the text into, so that merges are learnt on
what llama.cpp will see.  The merge learning itself is mtpllama.testing.bpe_from_words (the
same code that makes the test models' tokenizers).
"""
from __future__ import annotations

from collections import Counter

import regex

from mtpllama.testing import SPECIAL_TOKENS, Tokenizer, bpe_from_words

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
    return bpe_from_words(word_counts(texts), n_vocab - 256 - len(SPECIAL_TOKENS))
