"""Fixtures for tests, benchmarks and training: GGUF writers with synthetic weights, a BPE
trainer, quantisers, shared prompts and test hooks into the engine.  The runtime package never
imports this one (``import mtpllama`` loads neither numpy nor gguf)."""
from __future__ import annotations

from .arch import WRITERS
from .arch.glm4moe import SyntheticSpec, add_second_successor, synthetic_weights, write_synthetic
from .bpe import SPECIAL_TOKENS, Tokenizer, bpe_from_words, train_bpe
from .gguf_writer import quantize_q4_k

__all__ = ["WRITERS", "SyntheticSpec", "synthetic_weights", "add_second_successor", "write_synthetic",
           "SPECIAL_TOKENS", "Tokenizer", "bpe_from_words", "train_bpe", "quantize_q4_k"]
