"""glm4moe (GLM-4.5/4.6/4.7) test files: synthetic weights and the file layout of llama.cpp's
converter (hyperparameter keys, tensor names, the NextN block as the last block).

The synthetic weights make the trunk behave mostly like a fixed "next token" map sigma (a random
permutation of the ordinary tokens), perturbed in a context-dependent way by its attention and
MoE layers; the NextN block's token-embedding path predicts sigma(t_next), which the trunk then
produces with a probability set by ``noise``.  That gives MTP heads that agree with the trunk
often, but not always, so multi-token acceptance and rejection are both exercised.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..bpe import Tokenizer, train_bpe
from ..gguf_writer import write_gguf
from . import common
from .common import apply_norm_noise, embeddings_and_head, ffn_weights, nextn_weights, rng_normal

ARCH = "glm4moe"

@dataclass(frozen=True)
class SyntheticSpec:
    """Shape and behaviour of a synthetic glm4moe file."""

    n_embd: int = 64
    n_layer: int = 2                 # trunk layers
    n_dense_lead: int = 1            # leading dense layers
    n_head: int = 4
    n_head_kv: int = 2
    head_dim: int = 16
    n_rot: int = 8                   # partial rotary embedding
    n_ff: int = 128                  # dense FFN width
    n_expert: int = 8
    n_expert_used: int = 2
    n_expert_shared: int = 1
    n_ff_exp: int = 32
    qk_norm: bool = False
    expert_weights_norm: bool = True
    expert_weights_scale: float = 1.0
    nextn: str = "own"               # "own": own embed_tokens/shared_head_head (GLM-4.5); "tied" (GLM-4.6); "none"
    nextn_declared: bool = True      # with nextn="none": still declare nextn_predict_layers=1 (a trunk-only file)
    n_ctx_train: int = 2048
    noise: float = 1.4               # scale of the layers' contributions: higher = less agreement
    norm_noise: float = 0.0          # > 0: every RMS-norm weight is multiplied by 1 + N(0, norm_noise) (not all ones),
                                     # so that a pre-/post-norm mix-up changes results (own random stream: the other
                                     # weights stay those of norm_noise=0)
    head_scale: float = 1.0          # the NextN head's logits are multiplied by this: < 1 a head that is as often
                                     # right but less sure (flatter), > 1 one that is surer than it is right
    dtype: str = "f32"               # "f32", "f16", "q8_0", "q4_0", "q4_k" for the large matrices
    n_merges: int = 200
    seed: int = 0
    name: str = "mtpllama-synthetic"


def synthetic_weights(spec: SyntheticSpec, tok: Tokenizer) -> dict[str, np.ndarray]:
    """Weights in numpy layout (rows = output features), keyed by GGUF tensor name."""
    rng = np.random.default_rng(spec.seed)
    d = spec.n_embd
    hd, nh, nkv = spec.head_dim, spec.n_head, spec.n_head_kv
    g = spec.noise
    W: dict[str, np.ndarray] = {}
    emb, out = embeddings_and_head(W, rng, d, tok)

    def block(i: int, moe: bool) -> None:
        p = f"blk.{i}."
        W[p + "attn_norm.weight"] = np.ones(d, np.float32)
        W[p + "attn_q.weight"] = rng_normal(rng, (nh * hd, d), 1.0 / np.sqrt(d))
        W[p + "attn_q.bias"] = rng_normal(rng, (nh * hd,), 0.1)
        W[p + "attn_k.weight"] = rng_normal(rng, (nkv * hd, d), 1.0 / np.sqrt(d))
        W[p + "attn_k.bias"] = rng_normal(rng, (nkv * hd,), 0.1)
        W[p + "attn_v.weight"] = rng_normal(rng, (nkv * hd, d), 1.0 / np.sqrt(d))
        W[p + "attn_v.bias"] = rng_normal(rng, (nkv * hd,), 0.1)
        W[p + "attn_output.weight"] = rng_normal(rng, (d, nh * hd), g / np.sqrt(nh * hd))
        if spec.qk_norm:
            W[p + "attn_q_norm.weight"] = (1.0 + rng_normal(rng, (hd,), 0.1)).astype(np.float32)
            W[p + "attn_k_norm.weight"] = (1.0 + rng_normal(rng, (hd,), 0.1)).astype(np.float32)
        W[p + "post_attention_norm.weight"] = np.ones(d, np.float32)
        ffn_weights(W, rng, p, d, spec, moe)

    for i in range(spec.n_layer):
        block(i, moe=i >= spec.n_dense_lead)

    if spec.nextn != "none":
        block(spec.n_layer, moe=True)
        nextn_weights(W, rng, spec.n_layer, d, spec, emb, out)
    apply_norm_noise(W, spec)
    return W


def add_second_successor(W: dict[str, np.ndarray], spec: SyntheticSpec, tok: Tokenizer,
                         seed: int = 3) -> dict[str, np.ndarray]:
    """Give every token a second, equally likely successor, in the trunk's output head and in the
    NextN head alike: a model whose next token is genuinely uncertain (sampling matters)."""
    return common.add_second_successor(W, spec.n_layer, spec.n_embd, tok, seed)


def write_synthetic(path: str | Path, spec: SyntheticSpec = SyntheticSpec(), tok: Tokenizer | None = None,
                    weights: dict[str, np.ndarray] | None = None, chat_template: str | None = None) -> Path:
    """Write a synthetic glm4moe GGUF file (with chat_template as its tokenizer.chat_template) and
    return its path."""
    import gguf

    tok = tok or train_bpe(n_merges=spec.n_merges)
    W = weights if weights is not None else synthetic_weights(spec, tok)
    declared = 1 if (spec.nextn != "none" or spec.nextn_declared) else 0

    def hparams(w) -> None:
        w.add_embedding_length(spec.n_embd)
        w.add_block_count(spec.n_layer + declared)
        w.add_feed_forward_length(spec.n_ff)
        w.add_head_count(spec.n_head)
        w.add_head_count_kv(spec.n_head_kv)
        w.add_key_length(spec.head_dim)
        w.add_value_length(spec.head_dim)
        w.add_rope_dimension_count(spec.n_rot)
        w.add_rope_freq_base(10000.0)
        w.add_layer_norm_rms_eps(1e-5)
        w.add_expert_count(spec.n_expert)
        w.add_expert_used_count(spec.n_expert_used)
        w.add_expert_shared_count(spec.n_expert_shared)
        w.add_leading_dense_block_count(spec.n_dense_lead)
        w.add_expert_feed_forward_length(spec.n_ff_exp)
        w.add_expert_weights_scale(spec.expert_weights_scale)
        w.add_expert_weights_norm(spec.expert_weights_norm)
        w.add_expert_gating_func(gguf.ExpertGatingFuncType.SIGMOID)
        w.add_nextn_predict_layers(declared)

    return write_gguf(path, ARCH, spec.name, spec.n_ctx_train, tok, "glm4", hparams, W, spec.dtype,
                      chat_template=chat_template)
