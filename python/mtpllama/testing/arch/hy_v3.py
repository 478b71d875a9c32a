"""hy_v3 (Tencent Hy3) test files: synthetic weights and the file layout of llama.cpp's converter
(``HYV3Model`` in conversion/hunyuan.py): GQA blocks with q/k norms, a sigmoid-routed MoE with a
shared expert after leading dense blocks, and ``nextn_predict_layers`` NextN blocks appended after
the trunk, each a full decoder block whose final norm the converter names
``nextn.shared_head_norm``; the checkpoint has no MTP embeddings or head of its own ("tied").

The weights follow glm4moe's recipe (see that module): the trunk mostly maps a token to a fixed
successor, and each NextN block's token path predicts the successor of the token it is fed, so
every head of a chain drafts the token its position wants, as often as the noise lets it.
``broken_heads`` flattens the heads it names (common.chained_nextn_blocks).
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..bpe import Tokenizer, train_bpe
from ..gguf_writer import write_gguf
from .common import apply_norm_noise, chained_nextn_blocks, embeddings_and_head, ffn_weights, moe_keys, rng_normal

ARCH = "hy_v3"


@dataclass(frozen=True)
class SyntheticSpec:
    """Shape and behaviour of a synthetic hy_v3 file."""

    n_embd: int = 64
    n_layer: int = 2                 # trunk layers
    n_dense_lead: int = 1            # leading dense layers
    n_nextn: int = 3                 # NextN blocks (chained heads)
    n_head: int = 4
    n_head_kv: int = 2
    head_dim: int = 16               # = the rotated width (the graphs assert it)
    n_ff: int = 128                  # dense FFN width
    n_expert: int = 8
    n_expert_used: int = 2
    n_expert_shared: int = 1
    n_ff_exp: int = 32
    expert_weights_norm: bool = True
    expert_weights_scale: float = 1.0
    nextn: str = "tied"              # "tied" (Hy3: the trunk's embeddings and head), "own", "none"
    nextn_declared: bool = True      # with nextn="none": still declare the blocks (a trunk-only file)
    broken_heads: tuple[int, ...] = ()  # heads whose logits are flat (common.chained_nextn_blocks)
    n_ctx_train: int = 2048
    noise: float = 1.4               # scale of the layers' contributions: higher = less agreement
    norm_noise: float = 0.0          # > 0: RMS-norm weights times 1 + N(0, norm_noise) (common.apply_norm_noise)
    head_scale: float = 1.0          # the heads' logits times this (common.nextn_weights)
    dtype: str = "f32"               # "f32", "f16", "q8_0", "q4_0", "q4_k" for the large matrices
    n_merges: int = 200
    seed: int = 0
    name: str = "mtpllama-synthetic-hy3"


def synthetic_weights(spec: SyntheticSpec, tok: Tokenizer) -> dict[str, np.ndarray]:
    """Weights in numpy layout (rows = output features), keyed by GGUF tensor name."""
    rng = np.random.default_rng(spec.seed)
    d = spec.n_embd
    hd, nh, nkv = spec.head_dim, spec.n_head, spec.n_head_kv
    W: dict[str, np.ndarray] = {}
    emb, out = embeddings_and_head(W, rng, d, tok)

    def block(i: int, moe: bool) -> None:
        p = f"blk.{i}."
        W[p + "attn_norm.weight"] = np.ones(d, np.float32)
        W[p + "attn_q.weight"] = rng_normal(rng, (nh * hd, d), 1.0 / np.sqrt(d))
        W[p + "attn_k.weight"] = rng_normal(rng, (nkv * hd, d), 1.0 / np.sqrt(d))
        W[p + "attn_v.weight"] = rng_normal(rng, (nkv * hd, d), 1.0 / np.sqrt(d))
        W[p + "attn_output.weight"] = rng_normal(rng, (d, nh * hd), spec.noise / np.sqrt(nh * hd))
        W[p + "attn_q_norm.weight"] = (1.0 + rng_normal(rng, (hd,), 0.1)).astype(np.float32)
        W[p + "attn_k_norm.weight"] = (1.0 + rng_normal(rng, (hd,), 0.1)).astype(np.float32)
        W[p + "ffn_norm.weight"] = np.ones(d, np.float32)
        ffn_weights(W, rng, p, d, spec, moe)

    for i in range(spec.n_layer):
        block(i, moe=i >= spec.n_dense_lead)
    if spec.nextn != "none":
        chained_nextn_blocks(W, rng, spec, emb, out, block, moe=True)
    apply_norm_noise(W, spec)
    # the router's selection bias has no suffix in these files (the loader asks for blk.N.exp_probs_b)
    return {(k[:-len(".bias")] if k.endswith("exp_probs_b.bias") else k): v for k, v in W.items()}


def write_synthetic(path: str | Path, spec: SyntheticSpec = SyntheticSpec(), tok: Tokenizer | None = None,
                    weights: dict[str, np.ndarray] | None = None, chat_template: str | None = None,
                    keys: dict[str, object] | None = None) -> Path:
    """Write a synthetic hy_v3 GGUF file and return its path.  keys: for bad-file tests (see
    qwen35moe.replace_keys)."""
    import gguf

    from .qwen35moe import replace_keys

    tok = tok or train_bpe(n_merges=spec.n_merges)
    W = weights if weights is not None else synthetic_weights(spec, tok)
    declared = spec.n_nextn if (spec.nextn != "none" or spec.nextn_declared) else 0

    def hparams(w) -> None:  # the converter's keys: TextModel's, then HYV3Model's
        moe_keys(w, spec, spec.n_layer + declared)
        w.add_head_count(spec.n_head)
        w.add_head_count_kv(spec.n_head_kv)
        w.add_layer_norm_rms_eps(1e-5)
        w.add_value_length(spec.head_dim)
        w.add_expert_shared_feed_forward_length(spec.n_ff_exp * spec.n_expert_shared)
        w.add_expert_weights_norm(spec.expert_weights_norm)
        w.add_expert_weights_scale(spec.expert_weights_scale)
        w.add_expert_gating_func(gguf.ExpertGatingFuncType.SIGMOID)
        if declared:
            w.add_nextn_predict_layers(declared)
        replace_keys(w, ARCH, keys)

    # the converter keeps routers in f32 whatever the outtype (base.py)
    return write_gguf(path, ARCH, spec.name, spec.n_ctx_train, tok, "hunyuan-dense", hparams, W, spec.dtype,
                      keep_f32=lambda name: name.endswith("ffn_gate_inp.weight"), chat_template=chat_template)
