"""deepseek2 (GLM-4.7-Flash) test files: synthetic weights and the file layout of llama.cpp's
converter for it (``conversion/glm.py``'s Glm4MoeLiteModel on top of ``conversion/deepseek.py``'s
DeepseekV2Model; docs/mla.md section 4): MLA attention keys and tensors, a dense lead, routed and
shared experts, and the NextN block as the last block.

The weights behave as glm4moe's do (the same embedding/head, FFN and NextN pieces from
``common``): the trunk mostly maps t to a fixed successor sigma(t), perturbed by its attention and
MoE layers, and the NextN head predicts sigma(t_next) through eh_proj's token-embedding half.

MLA as the converter lays it out (numpy shapes, rows = output features):

* ``attn_q_a`` (q_lora, n_embd), ``attn_q_a_norm`` (q_lora), ``attn_q_b`` (H*(dn+dr), q_lora): each
  head's query is [nope (dn) | rope (dr)];
* ``attn_kv_a_mqa`` (r+dr, n_embd): [latent (r) | the one shared rope key (dr)]; ``attn_kv_a_norm`` (r);
* HF's ``kv_b_proj`` (H*(dn+dv), r) is not written: per head it is [k (dn) | v (dv)] rows, written as
  ``attn_k_b`` (H, r, dn) (the k rows transposed) and ``attn_v_b`` (H, dv, r);
* ``attn_output`` (n_embd, H*dv).
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..bpe import Tokenizer, train_bpe
from ..gguf_writer import write_gguf
from . import common
from .common import apply_norm_noise, embeddings_and_head, ffn_weights, nextn_weights, rng_normal

ARCH = "deepseek2"


@dataclass(frozen=True)
class SyntheticSpec:
    """Shape and behaviour of a synthetic deepseek2 file (GLM-4.7-Flash-like, tiny)."""

    n_embd: int = 64
    n_layer: int = 2                 # trunk layers; never 26/27 (or 47/48): llama.cpp keys "lite" and gating on them
    n_dense_lead: int = 1            # leading dense layers
    n_head: int = 4
    q_lora_rank: int = 48
    kv_lora_rank: int = 32           # r: the cached latent
    qk_nope_head_dim: int = 16       # dn
    qk_rope_head_dim: int = 16       # dr: rope.dimension_count
    v_head_dim: int = 16             # dv
    n_ff: int = 128                  # dense FFN width
    n_expert: int = 8
    n_expert_used: int = 2
    n_expert_shared: int = 1
    n_ff_exp: int = 32
    n_expert_groups: int = 0         # > 0: write expert_group_count (and expert_group_used_count)
    n_group_used: int = 0
    gating: int = 2                  # expert_gating_func: 1 softmax, 2 sigmoid, 0 key absent (llama.cpp falls back)
    expert_weights_norm: bool = True  # written only when true, as the converter does
    expert_weights_scale: float = 1.0
    rope_base: float = 10000.0
    rope_scaling: str = "none"       # "none", "linear" or "yarn"
    rope_factor: float = 1.0
    yarn_orig_ctx: int = 0           # yarn: rope.scaling.original_context_length
    mscale_all_dim: float | None = None  # yarn: written as yarn_log_multiplier = 0.1 * mscale_all_dim
    nextn: str = "own"               # "own": own embed_tokens/shared_head_head; "tied"; "none"
    nextn_declared: bool = True      # with nextn="none": still declare nextn_predict_layers=1 (a trunk-only file)
    n_ctx_train: int = 2048
    noise: float = 1.4               # scale of the layers' contributions: higher = less agreement
    norm_noise: float = 0.0          # > 0: non-uniform RMS-norm weights (see glm4moe.SyntheticSpec)
    head_scale: float = 1.0          # the NextN head's logits are multiplied by this
    dtype: str = "f32"               # "f32", "f16", "q8_0", "q4_0", "q4_k" for the large matrices
    n_merges: int = 200
    seed: int = 0
    name: str = "mtpllama-synthetic-deepseek2"


def split_kv_b(kv_b: np.ndarray, n_head: int, dn: int, dv: int) -> tuple[np.ndarray, np.ndarray]:
    """HF's kv_b_proj (H*(dn+dv), r) as the converter splits it: attn_k_b (H, r, dn), attn_v_b (H, dv, r)."""
    per_head = kv_b.reshape(n_head, dn + dv, kv_b.shape[-1])
    k_b, v_b = per_head[:, :dn, :], per_head[:, dn:, :]
    return np.ascontiguousarray(k_b.transpose(0, 2, 1)), np.ascontiguousarray(v_b)


def mla_block(W: dict[str, np.ndarray], rng: np.random.Generator, i: int, spec, moe: bool) -> None:
    """Block i's MLA attention and FFN (dense, or MoE with shared experts) under "blk.{i}.", drawn from
    rng in a fixed order (deepseek2's files depend on it).  spec: any MLA writer's SyntheticSpec."""
    d, H = spec.n_embd, spec.n_head
    ql, r = spec.q_lora_rank, spec.kv_lora_rank
    dn, dr, dv = spec.qk_nope_head_dim, spec.qk_rope_head_dim, spec.v_head_dim
    g = spec.noise
    p = f"blk.{i}."
    W[p + "attn_norm.weight"] = np.ones(d, np.float32)
    W[p + "attn_q_a.weight"] = rng_normal(rng, (ql, d), 1.0 / np.sqrt(d))
    W[p + "attn_q_a_norm.weight"] = np.ones(ql, np.float32)
    W[p + "attn_q_b.weight"] = rng_normal(rng, (H * (dn + dr), ql), 1.0 / np.sqrt(ql))
    W[p + "attn_kv_a_mqa.weight"] = rng_normal(rng, (r + dr, d), 1.0 / np.sqrt(d))
    W[p + "attn_kv_a_norm.weight"] = np.ones(r, np.float32)
    k_b, v_b = split_kv_b(rng_normal(rng, (H * (dn + dv), r), 1.0 / np.sqrt(r)), H, dn, dv)
    W[p + "attn_k_b.weight"] = k_b
    W[p + "attn_v_b.weight"] = v_b
    W[p + "attn_output.weight"] = rng_normal(rng, (d, H * dv), g / np.sqrt(H * dv))
    W[p + "ffn_norm.weight"] = np.ones(d, np.float32)
    ffn_weights(W, rng, p, d, spec, moe)


def synthetic_weights(spec: SyntheticSpec, tok: Tokenizer) -> dict[str, np.ndarray]:
    """Weights in numpy layout (rows = output features), keyed by GGUF tensor name."""
    rng = np.random.default_rng(spec.seed)
    W: dict[str, np.ndarray] = {}
    emb, out = embeddings_and_head(W, rng, spec.n_embd, tok)
    for i in range(spec.n_layer):
        mla_block(W, rng, i, spec, moe=i >= spec.n_dense_lead)

    if spec.nextn != "none":
        mla_block(W, rng, spec.n_layer, spec, moe=True)
        nextn_weights(W, rng, spec.n_layer, spec.n_embd, spec, emb, out)
    apply_norm_noise(W, spec)
    return W


def add_second_successor(W: dict[str, np.ndarray], spec: SyntheticSpec, tok: Tokenizer,
                         seed: int = 3) -> dict[str, np.ndarray]:
    """Every token gets a second, equally likely successor (see common.add_second_successor)."""
    return common.add_second_successor(W, spec.n_layer, spec.n_embd, tok, seed)


def mla_hparams(w, spec, declared: int) -> None:
    """The keys llama.cpp's converter writes for an MLA file (conversion/base.py's common keys, then
    deepseek.py's), in its order; declared: nextn_predict_layers (0: the key is not written).  The
    architecture's own keys follow, then replace_keys."""
    import gguf

    r, dr = spec.kv_lora_rank, spec.qk_rope_head_dim
    # conversion/base.py's common keys, in its order
    w.add_block_count(spec.n_layer + declared)
    w.add_embedding_length(spec.n_embd)
    w.add_feed_forward_length(spec.n_ff)
    w.add_head_count(spec.n_head)
    w.add_head_count_kv(1)                      # MLA converts to MQA over the latent (deepseek.py)
    if spec.rope_scaling == "linear":
        w.add_rope_scaling_type(gguf.RopeScalingType.LINEAR)
        w.add_rope_scaling_factor(spec.rope_factor)
    elif spec.rope_scaling == "yarn":
        w.add_rope_scaling_type(gguf.RopeScalingType.YARN)
        w.add_rope_scaling_factor(spec.rope_factor)
        w.add_rope_scaling_orig_ctx_len(spec.yarn_orig_ctx)
    elif spec.rope_scaling != "none":
        raise ValueError(f"rope_scaling must be 'none', 'linear' or 'yarn', got {spec.rope_scaling!r}")
    w.add_rope_freq_base(spec.rope_base)
    w.add_layer_norm_rms_eps(1e-5)
    w.add_expert_count(spec.n_expert)
    w.add_expert_used_count(spec.n_expert_used)
    if spec.n_expert_groups > 0:
        w.add_expert_group_count(spec.n_expert_groups)
        w.add_expert_group_used_count(spec.n_group_used)
    if spec.gating:
        w.add_expert_gating_func(gguf.ExpertGatingFuncType(spec.gating))
    # deepseek.py's MLA keys (vocab_size comes with the tokenizer, in write_gguf)
    w.add_leading_dense_block_count(spec.n_dense_lead)
    w.add_q_lora_rank(spec.q_lora_rank)
    w.add_kv_lora_rank(r)
    w.add_key_length(r + dr)                    # the cache row: [latent | rope key]
    w.add_value_length(r)                       # V is the latent
    w.add_key_length_mla(spec.qk_nope_head_dim + dr)
    w.add_value_length_mla(spec.v_head_dim)
    w.add_expert_feed_forward_length(spec.n_ff_exp)
    w.add_expert_shared_count(spec.n_expert_shared)
    w.add_expert_weights_scale(spec.expert_weights_scale)
    if spec.expert_weights_norm:
        w.add_expert_weights_norm(True)
    w.add_rope_dimension_count(dr)
    if spec.mscale_all_dim is not None:
        w.add_rope_scaling_yarn_log_mul(0.1 * spec.mscale_all_dim)
    if declared:                                # glm.py writes the key only when it keeps the block
        w.add_nextn_predict_layers(declared)


def replace_keys(w, arch: str, keys: dict[str, object] | None) -> None:
    """For bad-file tests: keys (without the "<arch>." prefix) to replace, each a (value,
    gguf.GGUFValueType), or None to drop."""
    for key, val in (keys or {}).items():
        w.kv_data[0].pop(f"{arch}.{key}", None)
        if val is not None:
            w.add_key_value(f"{arch}.{key}", *val)


def write_synthetic(path: str | Path, spec: SyntheticSpec = SyntheticSpec(), tok: Tokenizer | None = None,
                    weights: dict[str, np.ndarray] | None = None, keys: dict[str, object] | None = None) -> Path:
    """Write a synthetic deepseek2 GGUF file and return its path.  keys: for bad-file tests, keys
    (without the "deepseek2." prefix) to replace, each a (value, gguf.GGUFValueType), or None to drop."""
    tok = tok or train_bpe(n_merges=spec.n_merges)
    W = weights if weights is not None else synthetic_weights(spec, tok)
    declared = 1 if (spec.nextn != "none" or spec.nextn_declared) else 0

    def hparams(w) -> None:
        mla_hparams(w, spec, declared)
        replace_keys(w, ARCH, keys)

    # the converter keeps routers in f32 whatever the outtype (base.py); attn_k_b/attn_v_b take the outtype
    return write_gguf(path, ARCH, spec.name, spec.n_ctx_train, tok, "glm4", hparams, W, spec.dtype,
                      keep_f32=lambda name: name.endswith("ffn_gate_inp.weight"))
