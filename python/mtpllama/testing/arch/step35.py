"""step35 (StepFun Step-3.5) test files: synthetic weights and the file layout of llama.cpp's
converter (``Step35Model`` in conversion/step3.py): one head count and KV head count per block, the
window pattern over every block (the NextN blocks' entries full attention, the converter's default),
q/k norms, a head-wise attention gate (``attn_gate``), a sigmoid-routed MoE with a shared expert
after leading dense blocks, and ``nextn_predict_layers`` NextN blocks appended after the trunk, each
a full MoE decoder block with its own head (``shared_head.output`` renamed to
``nextn.shared_head_head``) and head norm.

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

ARCH = "step35"


@dataclass(frozen=True)
class SyntheticSpec:
    """Shape and behaviour of a synthetic step35 file."""

    n_embd: int = 64
    n_layer: int = 3                 # trunk layers
    n_dense_lead: int = 1            # leading dense layers
    pattern: tuple[int, ...] = (0, 1, 1)  # per trunk layer: 1 sliding window, 0 full attention
    n_nextn: int = 3                 # NextN blocks (chained heads; full attention)
    n_head: int = 4                  # full-attention layers
    n_head_swa: int = 2              # window layers
    n_head_kv: int = 2
    n_head_kv_swa: int = 1
    head_dim: int = 16               # RoPE: all of it on window layers, half on full-attention ones
    n_swa: int = 12                  # the window: shorter than the tests' contexts
    gate: bool = True                # the head-wise attention gate
    n_ff: int = 128                  # dense FFN width
    n_expert: int = 8
    n_expert_used: int = 2
    n_expert_shared: int = 1
    n_ff_exp: int = 32
    nextn: str = "own"               # "own" (the checkpoints: own head, trunk's embeddings too), "tied", "none"
    nextn_declared: bool = True      # with nextn="none": still declare the blocks (a trunk-only file)
    broken_heads: tuple[int, ...] = ()  # heads whose logits are flat (common.chained_nextn_blocks)
    n_ctx_train: int = 2048
    noise: float = 1.4
    norm_noise: float = 0.0
    head_scale: float = 1.0
    dtype: str = "f32"
    n_merges: int = 200
    seed: int = 0
    name: str = "mtpllama-synthetic-step35"


def is_swa(spec: SyntheticSpec) -> list[int]:
    """Window layers, one entry per block (the NextN blocks' full attention)."""
    return list(spec.pattern) + [0] * spec.n_nextn


def synthetic_weights(spec: SyntheticSpec, tok: Tokenizer) -> dict[str, np.ndarray]:
    """Weights in numpy layout (rows = output features), keyed by GGUF tensor name."""
    if len(spec.pattern) != spec.n_layer:
        raise ValueError("pattern needs one entry per trunk layer")
    rng = np.random.default_rng(spec.seed)
    d, hd = spec.n_embd, spec.head_dim
    W: dict[str, np.ndarray] = {}
    emb, out = embeddings_and_head(W, rng, d, tok)
    swa = is_swa(spec)

    def block(i: int, moe: bool) -> None:
        p = f"blk.{i}."
        nh = spec.n_head_swa if swa[i] else spec.n_head
        nkv = spec.n_head_kv_swa if swa[i] else spec.n_head_kv
        W[p + "attn_norm.weight"] = np.ones(d, np.float32)
        W[p + "attn_q.weight"] = rng_normal(rng, (nh * hd, d), 1.0 / np.sqrt(d))
        W[p + "attn_k.weight"] = rng_normal(rng, (nkv * hd, d), 1.0 / np.sqrt(d))
        W[p + "attn_v.weight"] = rng_normal(rng, (nkv * hd, d), 1.0 / np.sqrt(d))
        W[p + "attn_q_norm.weight"] = (1.0 + rng_normal(rng, (hd,), 0.1)).astype(np.float32)
        W[p + "attn_k_norm.weight"] = (1.0 + rng_normal(rng, (hd,), 0.1)).astype(np.float32)
        if spec.gate:
            W[p + "attn_gate.weight"] = rng_normal(rng, (nh, d), 1.0 / np.sqrt(d))
        W[p + "attn_output.weight"] = rng_normal(rng, (d, nh * hd), spec.noise / np.sqrt(nh * hd))
        W[p + "ffn_norm.weight"] = np.ones(d, np.float32)
        ffn_weights(W, rng, p, d, spec, moe)

    for i in range(spec.n_layer):
        block(i, moe=i >= spec.n_dense_lead)
    if spec.nextn != "none":
        chained_nextn_blocks(W, rng, spec, emb, out, block, moe=True)
        for j in range(spec.n_nextn):  # the checkpoints share the trunk's embeddings
            W.pop(f"blk.{spec.n_layer + j}.nextn.embed_tokens.weight", None)
    apply_norm_noise(W, spec)
    return W


def write_synthetic(path: str | Path, spec: SyntheticSpec = SyntheticSpec(), tok: Tokenizer | None = None,
                    weights: dict[str, np.ndarray] | None = None, chat_template: str | None = None,
                    keys: dict[str, object] | None = None) -> Path:
    """Write a synthetic step35 GGUF file and return its path.  keys: for bad-file tests (see
    qwen35moe.replace_keys)."""
    import gguf

    from .qwen35moe import replace_keys

    tok = tok or train_bpe(n_merges=spec.n_merges)
    W = weights if weights is not None else synthetic_weights(spec, tok)
    declared = spec.n_nextn if (spec.nextn != "none" or spec.nextn_declared) else 0
    swa = is_swa(spec)[: spec.n_layer + declared]

    def hparams(w) -> None:  # the converter's keys: TextModel's, then Step35Model's
        moe_keys(w, spec, spec.n_layer + declared)
        w.add_head_count([spec.n_head_swa if s else spec.n_head for s in swa])
        w.add_head_count_kv([spec.n_head_kv_swa if s else spec.n_head_kv for s in swa])
        w.add_sliding_window(spec.n_swa)
        w.add_sliding_window_pattern([bool(s) for s in swa])
        w.add_value_length(spec.head_dim)
        w.add_expert_shared_feed_forward_length(spec.n_ff_exp * spec.n_expert_shared)
        w.add_expert_weights_scale(1.0)
        w.add_expert_weights_norm(True)
        w.add_expert_gating_func(gguf.ExpertGatingFuncType.SIGMOID)
        w.add_leading_dense_block_count(spec.n_dense_lead)
        w.add_layer_norm_rms_eps(1e-5)
        if declared:
            w.add_nextn_predict_layers(declared)
        replace_keys(w, ARCH, keys)

    # the converter keeps routers in f32 whatever the outtype (base.py)
    return write_gguf(path, ARCH, spec.name, spec.n_ctx_train, tok, "qwen2", hparams, W, spec.dtype,
                      keep_f32=lambda name: name.endswith("ffn_gate_inp.weight"), chat_template=chat_template)
