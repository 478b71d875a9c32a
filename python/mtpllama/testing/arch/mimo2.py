"""mimo2 (Xiaomi MiMo-V2-Flash / V2.5) test files: synthetic weights and the file layout of llama.cpp's
converter (``MimoV2Model`` in conversion/mimo.py): fused QKV, K and V head dims of their own, partial
RoPE, full-attention and sliding-window layers (``hybrid_layer_pattern``, extended with a window
entry per NextN block) whose KV head counts differ (one per block), attention sinks
(``attention_sink_bias``, on the window layers here), a value scale, a sigmoid-routed MoE without
shared experts, and ``nextn_predict_layers`` NextN blocks appended after the trunk (the checkpoints
ship 3), each with a dense FFN and its final norm stored as ``layer_output_norm``.

The weights follow glm4moe's recipe (see that module); ``broken_heads`` flattens the named heads
(common.chained_nextn_blocks).
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..bpe import Tokenizer, train_bpe
from ..gguf_writer import write_gguf
from .common import apply_norm_noise, chained_nextn_blocks, embeddings_and_head, ffn_weights, moe_keys, rng_normal

ARCH = "mimo2"


@dataclass(frozen=True)
class SyntheticSpec:
    """Shape and behaviour of a synthetic mimo2 file."""

    n_embd: int = 64
    n_layer: int = 3                 # trunk layers
    n_dense_lead: int = 1            # leading dense layers
    pattern: tuple[int, ...] = (0, 1, 1)  # per trunk layer: 1 sliding window, 0 full attention
    n_nextn: int = 3                 # NextN blocks (chained heads; window layers)
    n_head: int = 4
    n_head_kv: int = 2               # full-attention layers
    n_head_kv_swa: int = 1           # window layers (the NextN blocks too)
    head_dim: int = 16               # K
    v_head_dim: int = 12             # V
    n_rot: int = 8                   # partial RoPE
    n_swa: int = 12                  # the window: shorter than the tests' contexts
    sinks: bool = True
    value_scale: float = 0.8
    n_ff: int = 128                  # dense FFN width (leading blocks and the NextN blocks)
    n_expert: int = 8
    n_expert_used: int = 2
    n_expert_shared: int = 0         # mimo2 has none (common.ffn_weights reads it)
    n_ff_exp: int = 32
    nextn: str = "tied"              # "tied" (the checkpoints), "own", "none"
    nextn_declared: bool = True      # with nextn="none": still declare the blocks (a trunk-only file)
    broken_heads: tuple[int, ...] = ()  # heads whose logits are flat (common.chained_nextn_blocks)
    n_ctx_train: int = 2048
    noise: float = 1.4
    norm_noise: float = 0.0
    head_scale: float = 1.0
    dtype: str = "f32"
    n_merges: int = 200
    seed: int = 0
    name: str = "mtpllama-synthetic-mimo2"


def is_swa(spec: SyntheticSpec) -> list[int]:
    """The sliding_window_pattern key: the trunk's pattern and a window entry per NextN block."""
    return list(spec.pattern) + [1] * spec.n_nextn


def synthetic_weights(spec: SyntheticSpec, tok: Tokenizer) -> dict[str, np.ndarray]:
    """Weights in numpy layout (rows = output features), keyed by GGUF tensor name."""
    if len(spec.pattern) != spec.n_layer:
        raise ValueError("pattern needs one entry per trunk layer")
    rng = np.random.default_rng(spec.seed)
    d, nh, hk, hv = spec.n_embd, spec.n_head, spec.head_dim, spec.v_head_dim
    W: dict[str, np.ndarray] = {}
    emb, out = embeddings_and_head(W, rng, d, tok)
    swa = is_swa(spec)

    def block(i: int, moe: bool) -> None:
        p = f"blk.{i}."
        nkv = spec.n_head_kv_swa if swa[i] else spec.n_head_kv
        W[p + "attn_norm.weight"] = np.ones(d, np.float32)
        W[p + "attn_qkv.weight"] = rng_normal(rng, (nh * hk + nkv * hk + nkv * hv, d), 1.0 / np.sqrt(d))
        W[p + "attn_output.weight"] = rng_normal(rng, (d, nh * hv), spec.noise / np.sqrt(nh * hv))
        if spec.sinks and swa[i]:
            W[p + "attn_sinks.weight"] = rng_normal(rng, (nh,), 1.0)
        W[p + "ffn_norm.weight"] = np.ones(d, np.float32)
        ffn_weights(W, rng, p, d, spec, moe)

    for i in range(spec.n_layer):
        block(i, moe=i >= spec.n_dense_lead)
    if spec.nextn != "none":  # the converter maps the blocks' final_layernorm to layer_output_norm
        chained_nextn_blocks(W, rng, spec, emb, out, block, moe=False, head_norm="layer_output_norm.weight")
    apply_norm_noise(W, spec)
    return W


def write_synthetic(path: str | Path, spec: SyntheticSpec = SyntheticSpec(), tok: Tokenizer | None = None,
                    weights: dict[str, np.ndarray] | None = None, chat_template: str | None = None,
                    keys: dict[str, object] | None = None) -> Path:
    """Write a synthetic mimo2 GGUF file and return its path.  keys: for bad-file tests (see
    qwen35moe.replace_keys)."""
    from .qwen35moe import replace_keys

    tok = tok or train_bpe(n_merges=spec.n_merges)
    W = weights if weights is not None else synthetic_weights(spec, tok)
    declared = spec.n_nextn if (spec.nextn != "none" or spec.nextn_declared) else 0
    swa = is_swa(spec)[: spec.n_layer + declared]

    def hparams(w) -> None:  # the converter's keys: TextModel's, then MimoV2Model's
        moe_keys(w, spec, spec.n_layer + declared)
        w.add_head_count(spec.n_head)
        w.add_head_count_kv([spec.n_head_kv_swa if s else spec.n_head_kv for s in swa])
        w.add_sliding_window(spec.n_swa)
        w.add_sliding_window_pattern(swa)
        w.add_value_length(spec.v_head_dim)
        w.add_rope_dimension_count(spec.n_rot)
        w.add_layer_norm_rms_eps(1e-5)
        w.add_float32(f"{ARCH}.attention.value_scale", spec.value_scale)
        if declared:
            w.add_nextn_predict_layers(declared)
        replace_keys(w, ARCH, keys)

    # the converter keeps routers in f32 whatever the outtype (base.py)
    return write_gguf(path, ARCH, spec.name, spec.n_ctx_train, tok, "qwen2", hparams, W, spec.dtype,
                      keep_f32=lambda name: name.endswith("ffn_gate_inp.weight"), chat_template=chat_template)
