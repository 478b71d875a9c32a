"""qwen35moe (Qwen3.5/3.6 MoE) test files: synthetic weights and the file layout of llama.cpp's
converter for it (``conversion/qwen.py``'s Qwen3_5MoeTextModel: Qwen3Next's gated delta-net keys and
tensors, the V heads already in ggml's tiled order, norms with the +1 folded in, the MTP block
remapped to the last block with ``nextn.*`` names).  ``qwen35`` reuses all of it with dense FFNs.

The weights behave as glm4moe's do (the embedding/head and NextN pieces from ``common``): the trunk
mostly maps t to a fixed successor sigma(t), perturbed by its layers, and the NextN head predicts
sigma(t_next) through eh_proj's token-embedding half.

A trunk layer is a gated delta-net layer (numpy shapes, rows = output features):

* ``attn_qkv`` (2*Hk*S + Hv*S, n_embd): [q (Hk heads of S) | k (Hk) | v (Hv)], Hk = ssm.group_count,
  Hv = ssm.time_step_rank, S = ssm.state_size; ``attn_gate`` (Hv*S, n_embd), the output gate z;
* ``ssm_conv1d`` (2*Hk*S + Hv*S, conv_kernel), f32; ``ssm_dt.bias`` (Hv); ``ssm_a`` (Hv) = -exp(A_log);
* ``ssm_beta`` and ``ssm_alpha`` (Hv, n_embd); ``ssm_norm`` (S); ``ssm_out`` (n_embd, Hv*S);

or, every ``full_attention_interval``-th layer, gated attention: ``attn_q`` (H*2*hd, n_embd), each
head's [query (hd) | gate (hd)]; ``attn_k``/``attn_v`` (Hkv*hd, n_embd); ``attn_q_norm``/``attn_k_norm``
(hd); ``attn_output`` (n_embd, H*hd).  Then ``post_attention_norm`` and the FFN: routed experts
(softmax router, f32) plus a shared expert scaled by sigmoid(``ffn_gate_inp_shexp`` . x).
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..bpe import Tokenizer, train_bpe
from ..gguf_writer import write_gguf
from . import common
from .common import apply_norm_noise, embeddings_and_head, nextn_weights, rng_normal

ARCH = "qwen35moe"


@dataclass(frozen=True)
class SyntheticSpec:
    """Shape and behaviour of a synthetic qwen35moe file (Qwen3.6-35B-A3B-like, tiny)."""

    n_embd: int = 64
    n_layer: int = 4                 # trunk layers
    full_attention_interval: int = 4  # every this-th layer attends; the others are gated delta nets
    layer_types: bool = True         # write attention.recurrent_layers (Qwen3.5 configs list layer_types)
    n_head: int = 4
    n_head_kv: int = 2
    head_dim: int = 32
    n_rot: int = 8                   # partial rotary embedding (Qwen: a quarter of head_dim)
    rope_sections: tuple[int, int, int, int] = (2, 1, 1, 0)  # interleaved M-RoPE: n_rot / 2 pairs
    rope_base: float = 10000000.0
    ssm_state: int = 16              # S: key and value head size of the delta net
    ssm_k_heads: int = 2             # Hk: ssm.group_count
    ssm_v_heads: int = 4             # Hv: ssm.time_step_rank
    ssm_conv: int = 4                # ssm.conv_kernel
    n_ff: int = 128                  # feed_forward_length (qwen35's dense FFN width)
    n_expert: int = 8
    n_expert_used: int = 2
    n_ff_exp: int = 32
    n_ff_shexp: int = 32             # 0: no shared expert
    nextn: str = "tied"              # "tied" (Qwen's MTP shares embeddings and head); "own"; "none"
    nextn_declared: bool = True      # with nextn="none": still declare nextn_predict_layers=1 (a trunk-only file)
    n_ctx_train: int = 4096
    noise: float = 1.4               # scale of the layers' contributions: higher = less agreement
    norm_noise: float = 0.0          # > 0: non-uniform RMS-norm weights (see glm4moe.SyntheticSpec)
    head_scale: float = 1.0          # the NextN head's logits are multiplied by this
    dtype: str = "f32"               # "f32", "f16", "q8_0", "q4_0", "q4_k" for the large matrices
    n_merges: int = 200
    seed: int = 0
    name: str = "mtpllama-synthetic-qwen35moe"

    @property
    def moe(self) -> bool:
        return True

    # how the architecture lays the delta net and rope out (qwen3next differs: see its writer)
    mrope = True                     # interleaved M-RoPE (rope.dimension_sections)
    fused_ba = False                 # beta and alpha in one projection (ssm_ba) instead of ssm_beta, ssm_alpha
    legacy_ssm_in = False            # q, k, v and z in one projection (ssm_in) instead of attn_qkv, attn_gate
    tokenizer_pre = "qwen35"

    def recurrent(self, i: int) -> bool:
        """Whether trunk layer i is a gated delta-net layer (the loader's rule)."""
        return i < self.n_layer and (i + 1) % self.full_attention_interval != 0


def gdn_block(W: dict[str, np.ndarray], rng: np.random.Generator, p: str, spec) -> None:
    """A gated delta-net layer's tensors under prefix p."""
    d, S, Hk, Hv = spec.n_embd, spec.ssm_state, spec.ssm_k_heads, spec.ssm_v_heads
    conv_dim = 2 * Hk * S + Hv * S
    if spec.legacy_ssm_in:   # per key head [q (S) | k (S) | v (r S) | z (r S)], r = Hv / Hk
        W[p + "ssm_in.weight"] = rng_normal(rng, (conv_dim + Hv * S, d), 1.0 / np.sqrt(d))
    else:
        W[p + "attn_qkv.weight"] = rng_normal(rng, (conv_dim, d), 1.0 / np.sqrt(d))
        W[p + "attn_gate.weight"] = rng_normal(rng, (Hv * S, d), 1.0 / np.sqrt(d))
    W[p + "ssm_conv1d.weight"] = rng_normal(rng, (conv_dim, spec.ssm_conv), 0.5)
    W[p + "ssm_dt.bias"] = rng_normal(rng, (Hv,), 0.5)
    W[p + "ssm_a"] = (-np.exp(rng.uniform(-1.0, 1.0, Hv))).astype(np.float32)  # -exp(A_log), as converted
    if spec.fused_ba:        # per key head [beta (r) | alpha (r)]
        W[p + "ssm_ba.weight"] = rng_normal(rng, (2 * Hv, d), 1.0 / np.sqrt(d))
    else:
        W[p + "ssm_beta.weight"] = rng_normal(rng, (Hv, d), 1.0 / np.sqrt(d))
        W[p + "ssm_alpha.weight"] = rng_normal(rng, (Hv, d), 1.0 / np.sqrt(d))
    W[p + "ssm_norm.weight"] = np.ones(S, np.float32)
    W[p + "ssm_out.weight"] = rng_normal(rng, (d, Hv * S), spec.noise / np.sqrt(Hv * S))


def attn_block(W: dict[str, np.ndarray], rng: np.random.Generator, p: str, spec) -> None:
    """A gated full-attention layer's tensors under prefix p (trunk layers and the NextN block)."""
    d, H, Hkv, hd = spec.n_embd, spec.n_head, spec.n_head_kv, spec.head_dim
    W[p + "attn_q.weight"] = rng_normal(rng, (H * 2 * hd, d), 1.0 / np.sqrt(d))
    W[p + "attn_k.weight"] = rng_normal(rng, (Hkv * hd, d), 1.0 / np.sqrt(d))
    W[p + "attn_v.weight"] = rng_normal(rng, (Hkv * hd, d), 1.0 / np.sqrt(d))
    W[p + "attn_q_norm.weight"] = (1.0 + rng_normal(rng, (hd,), 0.1)).astype(np.float32)
    W[p + "attn_k_norm.weight"] = (1.0 + rng_normal(rng, (hd,), 0.1)).astype(np.float32)
    W[p + "attn_output.weight"] = rng_normal(rng, (d, H * hd), spec.noise / np.sqrt(H * hd))


def ffn_block(W: dict[str, np.ndarray], rng: np.random.Generator, p: str, spec) -> None:
    """The FFN under prefix p: routed experts and a gated shared expert (spec.moe), else SwiGLU."""
    d, g = spec.n_embd, spec.noise
    if not spec.moe:
        W[p + "ffn_gate.weight"] = rng_normal(rng, (spec.n_ff, d), 1.0 / np.sqrt(d))
        W[p + "ffn_up.weight"] = rng_normal(rng, (spec.n_ff, d), 1.0 / np.sqrt(d))
        W[p + "ffn_down.weight"] = rng_normal(rng, (d, spec.n_ff), g / np.sqrt(spec.n_ff))
        return
    E, f = spec.n_expert, spec.n_ff_exp
    W[p + "ffn_gate_inp.weight"] = rng_normal(rng, (E, d), 1.0 / np.sqrt(d))
    W[p + "ffn_gate_exps.weight"] = rng_normal(rng, (E, f, d), 1.0 / np.sqrt(d))
    W[p + "ffn_up_exps.weight"] = rng_normal(rng, (E, f, d), 1.0 / np.sqrt(d))
    W[p + "ffn_down_exps.weight"] = rng_normal(rng, (E, d, f), g / np.sqrt(f))
    if spec.n_ff_shexp > 0:
        fs = spec.n_ff_shexp
        W[p + "ffn_gate_inp_shexp.weight"] = rng_normal(rng, (d,), 1.0 / np.sqrt(d))
        W[p + "ffn_gate_shexp.weight"] = rng_normal(rng, (fs, d), 1.0 / np.sqrt(d))
        W[p + "ffn_up_shexp.weight"] = rng_normal(rng, (fs, d), 1.0 / np.sqrt(d))
        W[p + "ffn_down_shexp.weight"] = rng_normal(rng, (d, fs), g / np.sqrt(fs))


def synthetic_weights(spec, tok: Tokenizer) -> dict[str, np.ndarray]:
    """Weights in numpy layout (rows = output features), keyed by GGUF tensor name (qwen35moe or
    qwen35, as spec.moe says)."""
    rng = np.random.default_rng(spec.seed)
    d = spec.n_embd
    W: dict[str, np.ndarray] = {}
    emb, out = embeddings_and_head(W, rng, d, tok)
    for i in range(spec.n_layer):
        p = f"blk.{i}."
        W[p + "attn_norm.weight"] = np.ones(d, np.float32)
        (gdn_block if spec.recurrent(i) else attn_block)(W, rng, p, spec)
        W[p + "post_attention_norm.weight"] = np.ones(d, np.float32)
        ffn_block(W, rng, p, spec)
    if spec.nextn != "none":
        p = f"blk.{spec.n_layer}."
        W[p + "attn_norm.weight"] = np.ones(d, np.float32)
        attn_block(W, rng, p, spec)
        W[p + "post_attention_norm.weight"] = np.ones(d, np.float32)
        ffn_block(W, rng, p, spec)
        nextn_weights(W, rng, spec.n_layer, d, spec, emb, out)
    apply_norm_noise(W, spec)
    return W


def add_second_successor(W: dict[str, np.ndarray], spec, tok: Tokenizer, seed: int = 3) -> dict[str, np.ndarray]:
    """Every token gets a second, equally likely successor (see common.add_second_successor)."""
    return common.add_second_successor(W, spec.n_layer, spec.n_embd, tok, seed)


def gdn_hparams(w, arch: str, spec, declared: int) -> None:
    """The keys the converter writes (base.py's common keys, Qwen2Moe's expert widths, Qwen3Next's
    delta-net keys, the MTP mixin's nextn key, the M-RoPE sections), in its order."""
    import gguf

    n_block = spec.n_layer + declared
    w.add_block_count(n_block)
    w.add_embedding_length(spec.n_embd)
    w.add_feed_forward_length(spec.n_ff)
    w.add_head_count(spec.n_head)
    w.add_head_count_kv(spec.n_head_kv)
    w.add_rope_freq_base(spec.rope_base)
    w.add_layer_norm_rms_eps(1e-6)
    if spec.moe:
        w.add_expert_count(spec.n_expert)
        w.add_expert_used_count(spec.n_expert_used)
    w.add_key_length(spec.head_dim)
    w.add_value_length(spec.head_dim)
    if spec.moe:
        w.add_expert_feed_forward_length(spec.n_ff_exp)
        if spec.n_ff_shexp > 0:
            w.add_expert_shared_feed_forward_length(spec.n_ff_shexp)
    w.add_ssm_conv_kernel(spec.ssm_conv)
    w.add_ssm_state_size(spec.ssm_state)
    w.add_ssm_group_count(spec.ssm_k_heads)
    w.add_ssm_time_step_rank(spec.ssm_v_heads)
    w.add_ssm_inner_size(spec.ssm_state * spec.ssm_v_heads)
    if spec.layer_types:
        w.add_array(f"{arch}.attention.recurrent_layers", [spec.recurrent(i) for i in range(n_block)])
    w.add_full_attention_interval(spec.full_attention_interval)
    w.add_rope_dimension_count(spec.n_rot)
    if declared:
        w.add_nextn_predict_layers(declared)
    if spec.mrope:
        w.add_rope_dimension_sections(list(spec.rope_sections))
    _ = gguf  # the writer's methods come from the gguf package


def replace_keys(w, arch: str, keys: dict[str, object] | None) -> None:
    """For bad-file tests: keys (without the "<arch>." prefix) to replace, each a (value,
    gguf.GGUFValueType) or a list (an array), or None to drop."""
    for key, val in (keys or {}).items():
        w.kv_data[0].pop(f"{arch}.{key}", None)
        if isinstance(val, list):
            w.add_array(f"{arch}.{key}", val)
        elif val is not None:
            w.add_key_value(f"{arch}.{key}", *val)


def write_file(path: str | Path, arch: str, spec, tok: Tokenizer | None, weights: dict[str, np.ndarray] | None,
               keys: dict[str, object] | None, chat_template: str | None) -> Path:
    tok = tok or train_bpe(n_merges=spec.n_merges)
    W = weights if weights is not None else synthetic_weights(spec, tok)
    declared = 1 if (spec.nextn != "none" or spec.nextn_declared) else 0

    def hparams(w) -> None:
        gdn_hparams(w, arch, spec, declared)
        replace_keys(w, arch, keys)

    # the converter keeps routers and the delta net's convolution in f32 whatever the outtype (base.py)
    return write_gguf(path, arch, spec.name, spec.n_ctx_train, tok, spec.tokenizer_pre, hparams, W, spec.dtype,
                      keep_f32=lambda name: name.endswith(("ffn_gate_inp.weight", "ssm_conv1d.weight")),
                      chat_template=chat_template)


def write_synthetic(path: str | Path, spec: SyntheticSpec = SyntheticSpec(), tok: Tokenizer | None = None,
                    weights: dict[str, np.ndarray] | None = None, keys: dict[str, object] | None = None,
                    chat_template: str | None = None) -> Path:
    """Write a synthetic qwen35moe GGUF file and return its path.  keys: for bad-file tests (see
    replace_keys)."""
    return write_file(path, ARCH, spec, tok, weights, keys, chat_template)
