"""bailingmoe3 (Ling/Ring 3) test files: synthetic weights and the file layout of llama.cpp's converter
for it (``conversion/bailingmoe3.py``): KDA layers (head_count_kv 0) and, every ``group``-th layer,
MLA attention with a sigmoid gate per head (head_count_kv 1: MQA over the latent, deepseek2's MLA
tensors from ``deepseek2.mla_block``), a dense lead, routed and shared experts, and the NextN block as
the last block (MLA + MoE; it shares the trunk's embeddings and head, its final norm is
``layer_output_norm``).

A KDA layer (numpy shapes, rows = output features; d_inner = n_head * kda_head_dim):

* ``attn_q``/``attn_k``/``attn_v`` (d_inner, n_embd), each with its causal convolution
  ``ssm_conv1d_q``/``_k``/``_v`` (1, d_inner, 1, conv) f32;
* the per-channel gate ``ssm_f_a`` (d_inner, n_embd) with ``ssm_dt.bias`` (d_inner) and ``ssm_a``
  (n_head, 1); ``ssm_beta`` (n_head, n_embd); the output gate ``ssm_g_a`` (d_inner, n_embd), the
  per-head norm ``ssm_norm`` (kda_head_dim) and ``attn_output`` (n_embd, d_inner).
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..bpe import Tokenizer, train_bpe
from ..gguf_writer import write_gguf
from . import common
from .common import apply_norm_noise, embeddings_and_head, ffn_weights, nextn_weights, rng_normal
from .deepseek2 import mla_block, mla_hparams

ARCH = "bailingmoe3"


@dataclass(frozen=True)
class SyntheticSpec:
    """Shape and behaviour of a synthetic bailingmoe3 file (tiny)."""

    n_embd: int = 64
    n_layer: int = 4
    group: int = 4                   # every group-th trunk layer is MLA, the others KDA (layer_group_size)
    n_dense_lead: int = 1
    n_head: int = 4
    kda_head_dim: int = 16
    ssm_conv: int = 4
    q_lora_rank: int = 48
    kv_lora_rank: int = 32
    qk_nope_head_dim: int = 16
    qk_rope_head_dim: int = 16
    v_head_dim: int = 16
    n_ff: int = 128
    n_expert: int = 8
    n_expert_used: int = 2
    n_expert_shared: int = 1
    n_ff_exp: int = 32
    gating: int = 2                  # sigmoid
    expert_weights_norm: bool = True
    expert_weights_scale: float = 2.5
    gate_lower_bound: float = -5.0
    nextn: str = "tied"              # "tied" (the loader has no own embeddings or head); "none"
    nextn_declared: bool = True
    n_ctx_train: int = 4096
    noise: float = 1.0
    norm_noise: float = 0.0
    head_scale: float = 1.0
    dtype: str = "f32"
    n_merges: int = 200
    seed: int = 0
    name: str = "mtpllama-synthetic-bailingmoe3"
    # deepseek2.mla_hparams reads these
    rope_scaling: str = "none"
    rope_base: float = 10000.0
    n_expert_groups: int = 0
    mscale_all_dim: float | None = None

    def kda(self, i: int) -> bool:
        """Whether trunk layer i is a KDA layer (the converter's is_full_attention, negated)."""
        return i < self.n_layer and (i + 1) % self.group != 0 and i < self.n_layer // self.group * self.group


def kda_block(W: dict[str, np.ndarray], rng: np.random.Generator, i: int, spec: SyntheticSpec) -> None:
    d, H, hd = spec.n_embd, spec.n_head, spec.kda_head_dim
    di = H * hd
    p = f"blk.{i}."
    W[p + "attn_norm.weight"] = np.ones(d, np.float32)
    for x in "qkv":
        W[p + f"attn_{x}.weight"] = rng_normal(rng, (di, d), 1.0 / np.sqrt(d))
    for x in "qkv":
        W[p + f"ssm_conv1d_{x}.weight"] = rng_normal(rng, (1, di, 1, spec.ssm_conv), 0.5)
    W[p + "ssm_f_a.weight"] = rng_normal(rng, (di, d), 1.0 / np.sqrt(d))
    W[p + "ssm_dt.bias"] = rng_normal(rng, (di,), 0.5)
    W[p + "ssm_a"] = np.exp(rng.uniform(-1.0, 1.0, (H, 1))).astype(np.float32)
    W[p + "ssm_beta.weight"] = rng_normal(rng, (H, d), 1.0 / np.sqrt(d))
    W[p + "ssm_g_a.weight"] = rng_normal(rng, (di, d), 1.0 / np.sqrt(d))
    W[p + "ssm_norm.weight"] = np.ones(hd, np.float32)
    W[p + "attn_output.weight"] = rng_normal(rng, (d, di), spec.noise / np.sqrt(di))
    W[p + "ffn_norm.weight"] = np.ones(d, np.float32)
    ffn_weights(W, rng, p, d, spec, moe=i >= spec.n_dense_lead)


def gated_mla_block(W: dict[str, np.ndarray], rng: np.random.Generator, i: int, spec: SyntheticSpec) -> None:
    mla_block(W, rng, i, spec, moe=i >= spec.n_dense_lead)
    W[f"blk.{i}.attn_gate.weight"] = rng_normal(rng, (spec.n_head, spec.n_embd), 1.0 / np.sqrt(spec.n_embd))


def synthetic_weights(spec: SyntheticSpec, tok: Tokenizer) -> dict[str, np.ndarray]:
    """Weights in numpy layout (rows = output features), keyed by GGUF tensor name."""
    if spec.nextn not in ("tied", "none"):
        raise ValueError("bailingmoe3's NextN block shares the trunk's embeddings and head: nextn 'tied' or 'none'")
    rng = np.random.default_rng(spec.seed)
    W: dict[str, np.ndarray] = {}
    emb, out = embeddings_and_head(W, rng, spec.n_embd, tok)
    for i in range(spec.n_layer):
        (kda_block if spec.kda(i) else gated_mla_block)(W, rng, i, spec)
    if spec.nextn != "none":
        n = spec.n_layer
        gated_mla_block(W, rng, n, spec)
        nextn_weights(W, rng, n, spec.n_embd, spec, emb, out)
        W[f"blk.{n}.layer_output_norm.weight"] = W.pop(f"blk.{n}.nextn.shared_head_norm.weight")
    apply_norm_noise(W, spec)
    return W


def add_second_successor(W: dict[str, np.ndarray], spec: SyntheticSpec, tok: Tokenizer, seed: int = 3):
    """Every token gets a second, equally likely successor (see common.add_second_successor)."""
    return common.add_second_successor(W, spec.n_layer, spec.n_embd, tok, seed)


def write_synthetic(path: str | Path, spec: SyntheticSpec = SyntheticSpec(), tok: Tokenizer | None = None,
                    weights: dict[str, np.ndarray] | None = None, keys: dict[str, object] | None = None,
                    chat_template: str | None = None) -> Path:
    """Write a synthetic bailingmoe3 GGUF file and return its path.  keys: for bad-file tests (see
    qwen35moe.replace_keys)."""
    import gguf

    from .qwen35moe import replace_keys

    tok = tok or train_bpe(n_merges=spec.n_merges)
    W = weights if weights is not None else synthetic_weights(spec, tok)
    declared = 1 if (spec.nextn != "none" or spec.nextn_declared) else 0

    def hparams(w) -> None:
        mla_hparams(w, spec, declared)     # deepseek2's MLA, expert and rope keys
        w.kv_data[0].pop(f"{ARCH}.attention.head_count_kv", None)
        w.add_head_count_kv([0 if spec.kda(i) else 1 for i in range(spec.n_layer + declared)])
        w.add_ssm_conv_kernel(spec.ssm_conv)
        w.add_uint32(f"{ARCH}.kda.head_dim", spec.kda_head_dim)
        w.add_bool(f"{ARCH}.kda.safe_gate", True)
        w.add_float32(f"{ARCH}.kda.gate_lower_bound", spec.gate_lower_bound)
        replace_keys(w, ARCH, keys)
        _ = gguf

    # the converter keeps routers, convolutions, norms and every tensor not named "*.weight" in f32
    return write_gguf(path, ARCH, spec.name, spec.n_ctx_train, tok, "qwen2", hparams, W, spec.dtype,
                      keep_f32=lambda name: (name.endswith(("ffn_gate_inp.weight", "_norm.weight"))
                                             or "ssm_conv1d" in name or not name.endswith(".weight")),
                      chat_template=chat_template)
