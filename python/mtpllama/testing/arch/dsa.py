"""What the DSA writers (glm_dsa, deepseek32) share: deepseek2's MLA files plus the lightning
indexer's keys and tensors, as llama.cpp's converters write them (``conversion/glm.py``'s
GlmMoeDsaModel and ``conversion/deepseek.py``'s DeepseekV32Model, both on DeepseekV2Model; docs/dsa.md).

The indexer of block i, numpy layout (rows = output features), HF names in brackets:

* ``indexer.attn_q_b`` (Hi*D, q_lora) [self_attn.indexer.wq_b]: indexer queries from the q_a latent,
  each head [rope (dr) | nope (D - dr)];
* ``indexer.attn_k`` (D, n_embd) [indexer.wk]: the one indexer key, normalised by
* ``indexer.k_norm`` weight and bias (D,) [indexer.k_norm, a LayerNorm];
* ``indexer.proj`` (Hi, n_embd) [indexer.weights_proj]: per-head weights, kept f32 by the converter.

Keys: ``attention.indexer.head_count`` (Hi), ``.key_length`` (D), ``.top_k``, and for glm-dsa
optionally ``.types`` (a bool per trunk layer: full or shared).
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from . import deepseek2
from .common import rng_normal


@dataclass(frozen=True)
class DsaSpec(deepseek2.SyntheticSpec):
    """deepseek2's spec plus the indexer.  top_k is small so that test contexts run with fewer cached
    cells than top_k (dense attention) and with more (sparse)."""

    n_index_head: int = 8            # Hi: attention.indexer.head_count
    index_head_dim: int = 64         # D: a power of two >= 64 (llama.cpp's Hadamard rotation is D x D)
    index_top_k: int = 16
    index_noise: float = 1.0         # scale of the indexer keys' weights: the spread of the scores


def indexer_weights(W: dict[str, np.ndarray], rng: np.random.Generator, i: int, spec: DsaSpec) -> None:
    """Block i's indexer tensors, drawn from rng in a fixed order."""
    d, Hi, D, ql = spec.n_embd, spec.n_index_head, spec.index_head_dim, spec.q_lora_rank
    p = f"blk.{i}.indexer."
    W[p + "attn_q_b.weight"] = rng_normal(rng, (Hi * D, ql), 1.0 / np.sqrt(ql))
    W[p + "attn_k.weight"] = rng_normal(rng, (D, d), spec.index_noise / np.sqrt(d))
    W[p + "k_norm.weight"] = (1.0 + rng_normal(rng, (D,), 0.1)).astype(np.float32)
    W[p + "k_norm.bias"] = rng_normal(rng, (D,), 0.1)
    W[p + "proj.weight"] = rng_normal(rng, (Hi, d), 1.0 / np.sqrt(d))


def indexer_hparams(w, arch: str, spec: DsaSpec) -> None:
    """The indexer keys the converters add after deepseek.py's (gguf 0.19 has the add_* helpers)."""
    w.add_uint32(f"{arch}.attention.indexer.head_count", spec.n_index_head)
    w.add_uint32(f"{arch}.attention.indexer.key_length", spec.index_head_dim)
    w.add_uint32(f"{arch}.attention.indexer.top_k", spec.index_top_k)


def keep_f32(name: str) -> bool:
    """What the converter keeps f32 whatever the outtype (base.py): routers and the indexer's weights
    projection (norms and biases are 1-D, f32 anyway)."""
    return name.endswith("ffn_gate_inp.weight") or name.endswith("indexer.proj.weight")
