"""Tokenizer round-trips through llama.cpp; the Python piece table agrees with it."""
from __future__ import annotations

import pytest

from mtpllama.testing.fixtures import PROMPTS
from mtpllama import _lib
from mtpllama._lib import ffi, lib

TEXTS = PROMPTS + ["", "  leading spaces", "tabs\tand\nnewlines\r\n", "emoji 🙂 and 中文", "\x00\x01 bytes"]


def native_detokenize(model, tokens):
    buf = ffi.new("char[]", 4096)
    n = ffi.new("int32_t *")
    arr = ffi.new("int32_t[]", tokens or [0])
    _lib.check(lib.mtpl_detokenize(model._ptr(), arr, len(tokens), buf, 4096, n))
    return ffi.buffer(buf, n[0])[:]


@pytest.mark.parametrize("text", TEXTS)
def test_roundtrip(glm45, text):
    toks = glm45.tokenize(text)
    assert glm45.detokenize(toks) == text
    assert glm45.token_bytes(toks) == native_detokenize(glm45, toks)


def test_merges_are_used(glm45):
    text = "def fibonacci(n): return self.items"
    assert len(glm45.tokenize(text)) < len(text.encode()) * 0.7


def test_long_text_grows_buffer(glm45):
    text = "x" * 5000 + "é" * 100
    assert glm45.detokenize(glm45.tokenize(text)) == text


def test_special_tokens(glm45):
    eos = glm45.info.token_eos
    assert glm45.tokenize("<|endoftext|>", parse_special=True) == [eos]
    assert eos not in glm45.tokenize("<|endoftext|>")
    assert glm45.pieces[eos] == b""


def test_detokenize_bad_id(glm45):
    with pytest.raises(ValueError):
        glm45.detokenize([glm45.info.n_vocab])
