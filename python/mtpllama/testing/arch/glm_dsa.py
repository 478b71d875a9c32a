"""glm-dsa (GLM-5 / 5.1 / 5.2) test files: deepseek2's MLA layout (``deepseek2``) plus DeepSeek Sparse
Attention's lightning indexer in the trunk, as ``conversion/glm.py``'s GlmMoeDsaModel writes them
(docs/dsa.md):

* every ``full`` trunk layer has the five indexer tensors (``dsa``); a ``shared`` one (GLM-5.2's
  ``indexer_types``) has none and reuses the previous full layer's choice of cells;
* the NextN block (the last block) has none (``nextn_indexer=True`` writes them, which the loader
  accepts and graph_mtp ignores);
* keys: deepseek.py's MLA keys, ``nextn_predict_layers``, the indexer's head count, key length and
  top_k, and ``attention.indexer.types`` (a bool array, one per trunk layer) when ``indexer_types``
  is given.  Without it llama.cpp makes every layer full below a 1048576-token training context.

The weights behave as deepseek2's (same draws, then each indexer after its block).
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

ARCH = "glm-dsa"


@dataclass(frozen=True)
class SyntheticSpec(DsaSpec):
    """Shape and behaviour of a synthetic glm-dsa file (GLM-5.2-like, tiny)."""

    indexer_types: tuple[bool, ...] | None = None  # one per trunk layer (True: full); None: key not written
    nextn_indexer: bool = False      # give the NextN block indexer tensors too
    name: str = "mtpllama-synthetic-glm-dsa"


def full_layers(spec: SyntheticSpec) -> list[bool]:
    """Which trunk layers have a full indexer, as llama.cpp resolves it for the spec's file."""
    if spec.indexer_types is not None:
        return [bool(t) for t in spec.indexer_types]
    if spec.n_ctx_train < 1048576:
        return [True] * spec.n_layer
    return [il < 2 or (il < 78 and (il - 2) % 4 == 0) for il in range(spec.n_layer)]  # GLM-5.2's default


def synthetic_weights(spec: SyntheticSpec, tok: Tokenizer) -> dict[str, np.ndarray]:
    """Weights in numpy layout (rows = output features), keyed by GGUF tensor name."""
    rng = np.random.default_rng(spec.seed)
    W: dict[str, np.ndarray] = {}
    emb, out = embeddings_and_head(W, rng, spec.n_embd, tok)
    full = full_layers(spec)
    if len(full) != spec.n_layer:
        raise ValueError(f"indexer_types has {len(full)} entries for {spec.n_layer} trunk layers")
    for i in range(spec.n_layer):
        mla_block(W, rng, i, spec, moe=i >= spec.n_dense_lead)
        if full[i]:
            indexer_weights(W, rng, i, spec)
    if spec.nextn != "none":
        mla_block(W, rng, spec.n_layer, spec, moe=True)
        if spec.nextn_indexer:
            indexer_weights(W, rng, spec.n_layer, spec)
        nextn_weights(W, rng, spec.n_layer, spec.n_embd, spec, emb, out)
    apply_norm_noise(W, spec)
    return W


def add_second_successor(W: dict[str, np.ndarray], spec: SyntheticSpec, tok: Tokenizer,
                         seed: int = 3) -> dict[str, np.ndarray]:
    """Every token gets a second, equally likely successor (see common.add_second_successor)."""
    return common.add_second_successor(W, spec.n_layer, spec.n_embd, tok, seed)


def write_synthetic(path: str | Path, spec: SyntheticSpec = SyntheticSpec(), tok: Tokenizer | None = None,
                    weights: dict[str, np.ndarray] | None = None, keys: dict[str, object] | None = None) -> Path:
    """Write a synthetic glm-dsa GGUF file and return its path.  keys: for bad-file tests, keys
    (without the "glm-dsa." prefix) to replace, each a (value, gguf.GGUFValueType[, sub type]), or
    None to drop."""
    tok = tok or train_bpe(n_merges=spec.n_merges)
    W = weights if weights is not None else synthetic_weights(spec, tok)
    declared = 1 if (spec.nextn != "none" or spec.nextn_declared) else 0

    def hparams(w) -> None:
        mla_hparams(w, spec, declared)          # DeepseekV2Model's keys (glm.py re-adds rope.dimension_count)
        indexer_hparams(w, ARCH, spec)
        if spec.indexer_types is not None:      # glm.py: [t == "full" for t in indexer_types]
            w.add_array(f"{ARCH}.attention.indexer.types", [bool(t) for t in spec.indexer_types])
        replace_keys(w, ARCH, keys)

    # glm.py's _set_vocab_glm: the glm4 pre-tokenizer
    return write_gguf(path, ARCH, spec.name, spec.n_ctx_train, tok, "glm4", hparams, W, spec.dtype,
                      keep_f32=keep_f32)
