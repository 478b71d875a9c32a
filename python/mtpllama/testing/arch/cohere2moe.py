"""cohere2moe (Cohere's MoE Command models) test files: synthetic weights and the file layout of
llama.cpp's converter (``Cohere2MoeModel`` in conversion/command_r.py): parallel attention and FFN
blocks under one LayerNorm (no FFN norm), window layers from ``layer_types`` (the trunk's only: the
NextN block is full attention), a logit scale, routed experts with an averaged shared expert and no
selection bias after leading dense blocks, and one NextN block appended after the trunk.

The weights follow glm4moe's recipe (see that module).
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..bpe import Tokenizer, train_bpe
from ..gguf_writer import write_gguf
from .common import apply_norm_noise, embeddings_and_head, ffn_weights, moe_keys, nextn_weights, rng_normal

ARCH = "cohere2moe"


@dataclass(frozen=True)
class SyntheticSpec:
    """Shape and behaviour of a synthetic cohere2moe file."""

    n_embd: int = 64
    n_layer: int = 4                 # trunk layers
    n_dense_lead: int = 1            # leading dense layers (they keep RoPE on full attention)
    pattern: tuple[bool, ...] = (True, True, True, False)  # window layers (layer_types), trunk only
    n_head: int = 4
    n_head_kv: int = 2
    head_dim: int = 16               # = the rotated width (the graphs assert it)
    n_swa: int = 12                  # the window: shorter than the tests' contexts
    logit_scale: float = 0.5
    n_ff: int = 128                  # dense FFN width
    n_expert: int = 8
    n_expert_used: int = 2
    n_expert_shared: int = 1
    n_ff_exp: int = 32
    nextn: str = "own"               # "own", "tied", "none"
    nextn_declared: bool = True      # with nextn="none": still declare the block (a trunk-only file)
    n_ctx_train: int = 2048
    noise: float = 1.4
    norm_noise: float = 0.0
    head_scale: float = 2.0          # the logit scale flattens the head too: sharpened back (common.nextn_weights)
    dtype: str = "f32"
    n_merges: int = 200
    seed: int = 0
    name: str = "mtpllama-synthetic-cohere2moe"


def synthetic_weights(spec: SyntheticSpec, tok: Tokenizer) -> dict[str, np.ndarray]:
    """Weights in numpy layout (rows = output features), keyed by GGUF tensor name."""
    if len(spec.pattern) != spec.n_layer:
        raise ValueError("pattern needs one entry per trunk layer")
    rng = np.random.default_rng(spec.seed)
    d, hd, nh, nkv = spec.n_embd, spec.head_dim, spec.n_head, spec.n_head_kv
    W: dict[str, np.ndarray] = {}
    emb, out = embeddings_and_head(W, rng, d, tok)

    def block(i: int, moe: bool) -> None:
        p = f"blk.{i}."
        W[p + "attn_norm.weight"] = np.ones(d, np.float32)
        W[p + "attn_q.weight"] = rng_normal(rng, (nh * hd, d), 1.0 / np.sqrt(d))
        W[p + "attn_k.weight"] = rng_normal(rng, (nkv * hd, d), 1.0 / np.sqrt(d))
        W[p + "attn_v.weight"] = rng_normal(rng, (nkv * hd, d), 1.0 / np.sqrt(d))
        W[p + "attn_output.weight"] = rng_normal(rng, (d, nh * hd), spec.noise / np.sqrt(nh * hd))
        ffn_weights(W, rng, p, d, spec, moe)
        W.pop(p + "exp_probs_b.bias", None)  # these routers have no selection bias

    for i in range(spec.n_layer):
        block(i, moe=i >= spec.n_dense_lead)
    if spec.nextn != "none":
        block(spec.n_layer, moe=True)
        nextn_weights(W, rng, spec.n_layer, d, spec, emb, out)
    apply_norm_noise(W, spec)
    return W


def write_synthetic(path: str | Path, spec: SyntheticSpec = SyntheticSpec(), tok: Tokenizer | None = None,
                    weights: dict[str, np.ndarray] | None = None, chat_template: str | None = None,
                    keys: dict[str, object] | None = None) -> Path:
    """Write a synthetic cohere2moe GGUF file and return its path.  keys: for bad-file tests (see
    qwen35moe.replace_keys)."""
    import gguf

    from .qwen35moe import replace_keys

    tok = tok or train_bpe(n_merges=spec.n_merges)
    W = weights if weights is not None else synthetic_weights(spec, tok)
    declared = 1 if (spec.nextn != "none" or spec.nextn_declared) else 0

    def hparams(w) -> None:  # the converter's keys: TextModel's, then Cohere2MoeModel's
        moe_keys(w, spec, spec.n_layer + declared)
        w.add_head_count(spec.n_head)
        w.add_head_count_kv(spec.n_head_kv)
        w.add_layer_norm_eps(1e-5)
        w.add_value_length(spec.head_dim)
        w.add_logit_scale(spec.logit_scale)
        w.add_sliding_window(spec.n_swa)
        w.add_sliding_window_pattern(list(spec.pattern))
        w.add_leading_dense_block_count(spec.n_dense_lead)
        w.add_expert_weights_norm(False)
        if spec.n_expert_shared:
            w.add_expert_shared_count(spec.n_expert_shared)
            w.add_expert_shared_feed_forward_length(spec.n_ff_exp * spec.n_expert_shared)
        if declared:
            w.add_nextn_predict_layers(declared)
        w.add_rope_dimension_count(spec.head_dim)
        w.add_rope_scaling_type(gguf.RopeScalingType.NONE)
        replace_keys(w, ARCH, keys)

    # the converter keeps routers in f32 whatever the outtype (base.py)
    return write_gguf(path, ARCH, spec.name, spec.n_ctx_train, tok, "qwen2", hparams, W, spec.dtype,
                      keep_f32=lambda name: name.endswith("ffn_gate_inp.weight"), chat_template=chat_template)
