"""deepseek32 (DeepSeek-V3.2) test files: deepseek2's MLA layout (``deepseek2``) plus DeepSeek Sparse
Attention's lightning indexer in every block, the NextN block included, as ``conversion/deepseek.py``'s
DeepseekV32Model writes them (docs/dsa.md).  Keys: deepseek.py's MLA keys, ``nextn_predict_layers``
and the indexer's head count, key length and top_k.  The gating function is a key the loader requires
(V3.2's config names sigmoid scoring); ``gating=0`` leaves it out, for a bad-file test.

The weights behave as deepseek2's (same draws, then each block's indexer after it).
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..bpe import Tokenizer, train_bpe
from ..gguf_writer import write_gguf
from . import common
from .common import apply_norm_noise, embeddings_and_head, nextn_weights
from .deepseek2 import mla_block, mla_hparams, replace_keys
from .dsa import DsaSpec, indexer_hparams, indexer_weights, keep_f32

ARCH = "deepseek32"


@dataclass(frozen=True)
class SyntheticSpec(DsaSpec):
    """Shape and behaviour of a synthetic deepseek32 file (DeepSeek-V3.2-like, tiny)."""

    name: str = "mtpllama-synthetic-deepseek32"


def synthetic_weights(spec: SyntheticSpec, tok: Tokenizer) -> dict[str, np.ndarray]:
    """Weights in numpy layout (rows = output features), keyed by GGUF tensor name."""
    rng = np.random.default_rng(spec.seed)
    W: dict[str, np.ndarray] = {}
    emb, out = embeddings_and_head(W, rng, spec.n_embd, tok)
    for i in range(spec.n_layer):
        mla_block(W, rng, i, spec, moe=i >= spec.n_dense_lead)
        indexer_weights(W, rng, i, spec)
    if spec.nextn != "none":
        mla_block(W, rng, spec.n_layer, spec, moe=True)
        indexer_weights(W, rng, spec.n_layer, spec)  # required by the loader, unused by graph_mtp
        nextn_weights(W, rng, spec.n_layer, spec.n_embd, spec, emb, out)
    apply_norm_noise(W, spec)
    return W


def add_second_successor(W: dict[str, np.ndarray], spec: SyntheticSpec, tok: Tokenizer,
                         seed: int = 3) -> dict[str, np.ndarray]:
    """Every token gets a second, equally likely successor (see common.add_second_successor)."""
    return common.add_second_successor(W, spec.n_layer, spec.n_embd, tok, seed)


def write_synthetic(path: str | Path, spec: SyntheticSpec = SyntheticSpec(), tok: Tokenizer | None = None,
                    weights: dict[str, np.ndarray] | None = None, keys: dict[str, object] | None = None) -> Path:
    """Write a synthetic deepseek32 GGUF file and return its path.  keys: for bad-file tests, keys
    (without the "deepseek32." prefix) to replace, each a (value, gguf.GGUFValueType), or None to drop."""
    tok = tok or train_bpe(n_merges=spec.n_merges)
    W = weights if weights is not None else synthetic_weights(spec, tok)
    declared = 1 if (spec.nextn != "none" or spec.nextn_declared) else 0

    def hparams(w) -> None:
        mla_hparams(w, spec, declared)
        indexer_hparams(w, ARCH, spec)
        replace_keys(w, ARCH, keys)

    # V3.2's tokenizer is "deepseek-v3" (deepseek.py's _set_vocab_gpt2); the synthetic BPE vocabulary was
    # trained for glm4's pre-tokenizer, which the other writers use too (not an architecture property)
    return write_gguf(path, ARCH, spec.name, spec.n_ctx_train, tok, "glm4", hparams, W, spec.dtype,
                      keep_f32=keep_f32)
