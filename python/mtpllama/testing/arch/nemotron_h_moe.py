"""nemotron_h_moe (Nemotron-H MoE) test files: synthetic weights and the file layout of llama.cpp's
converter for it (``conversion/nemotron.py``'s NemotronHModel on GraniteHybridModel and Mamba2Model):
each trunk layer is one kind, set by ``pattern`` ("M" Mamba-2, "*" attention, "E" MoE), and told
apart in the file by the per-layer arrays ``attention.head_count_kv`` (> 0: attention) and
``feed_forward_length`` (> 0: MoE); the NextN block, the last block, folds an attention and a MoE
sub-layer (both arrays set).

Tensors (numpy shapes, rows = output features):

* Mamba-2 (nh heads of d_inner / nh, ng groups of the state size ds): ``ssm_in`` (2 d_inner + 2 ng ds
  + nh, n_embd): [z | x B C | dt]; ``ssm_conv1d`` (d_inner + 2 ng ds, conv) f32 with its bias;
  ``ssm_dt.bias`` (nh); ``ssm_a`` and ``ssm_d`` (nh, 1); ``ssm_norm`` (ng, d_inner / ng);
  ``ssm_out`` (n_embd, d_inner);
* attention without rope: ``attn_q`` (H hd, n_embd), ``attn_k``/``attn_v`` (Hkv hd, n_embd),
  ``attn_output`` (n_embd, H hd);
* MoE: ``ffn_gate_inp`` (E, n_embd) f32, ``exp_probs_b.bias`` (E), ReLU^2 experts ``ffn_up_exps``
  (E, f, n_embd) and ``ffn_down_exps`` (E, n_embd, f), a shared ``ffn_up_shexp``/``ffn_down_shexp``;
* the NextN block: the fusion tensors (``nextn.enorm``, ``hnorm``, ``eh_proj``), its LayerNorm
  ``nextn.shared_head_norm``, attention, ``post_attention_norm`` and MoE; it shares the trunk's
  embeddings and head (the loader takes no own ones).
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..bpe import Tokenizer, train_bpe
from ..gguf_writer import write_gguf
from . import common
from .common import apply_norm_noise, embeddings_and_head, nextn_weights, rng_normal

ARCH = "nemotron_h_moe"


@dataclass(frozen=True)
class SyntheticSpec:
    """Shape and behaviour of a synthetic nemotron_h_moe file (Nemotron 3 Nano-like, tiny)."""

    n_embd: int = 64
    pattern: str = "ME*MEM"          # trunk layers: M Mamba-2, * attention, E MoE
    n_head: int = 4
    n_head_kv: int = 2
    head_dim: int = 16
    ssm_inner: int = 128             # d_inner
    ssm_heads: int = 8               # nh: ssm.time_step_rank
    ssm_groups: int = 2              # ng
    ssm_state: int = 16              # ds
    ssm_conv: int = 4
    n_expert: int = 8
    n_expert_used: int = 2
    n_ff_exp: int = 32
    n_ff_shexp: int = 48
    expert_weights_norm: bool = True
    expert_weights_scale: float = 2.5
    nextn: str = "tied"              # "tied" (the loader has no own embeddings or head); "none"
    nextn_declared: bool = True      # with nextn="none": still declare nextn_predict_layers=1 (a trunk-only file)
    n_ctx_train: int = 4096
    noise: float = 1.4
    norm_noise: float = 0.0
    head_scale: float = 1.0
    dtype: str = "f32"
    n_merges: int = 200
    seed: int = 0
    name: str = "mtpllama-synthetic-nemotron-h-moe"

    @property
    def n_layer(self) -> int:
        return len(self.pattern)


def mamba2_block(W: dict[str, np.ndarray], rng: np.random.Generator, p: str, spec: SyntheticSpec) -> None:
    d, di, nh, ng, ds = spec.n_embd, spec.ssm_inner, spec.ssm_heads, spec.ssm_groups, spec.ssm_state
    conv_ch = di + 2 * ng * ds
    W[p + "ssm_in.weight"] = rng_normal(rng, (2 * di + 2 * ng * ds + nh, d), 1.0 / np.sqrt(d))
    W[p + "ssm_conv1d.weight"] = rng_normal(rng, (conv_ch, spec.ssm_conv), 0.5)
    W[p + "ssm_conv1d.bias"] = rng_normal(rng, (conv_ch,), 0.1)
    W[p + "ssm_dt.bias"] = rng_normal(rng, (nh,), 0.5)
    W[p + "ssm_a"] = (-np.exp(rng.uniform(-1.0, 1.0, (nh, 1)))).astype(np.float32)  # -exp(A_log), as converted
    W[p + "ssm_d"] = (1.0 + rng_normal(rng, (nh, 1), 0.1)).astype(np.float32)
    W[p + "ssm_norm.weight"] = np.ones((ng, di // ng), np.float32)
    W[p + "ssm_out.weight"] = rng_normal(rng, (d, di), spec.noise / np.sqrt(di))


def attn_block(W: dict[str, np.ndarray], rng: np.random.Generator, p: str, spec: SyntheticSpec) -> None:
    d, H, Hkv, hd = spec.n_embd, spec.n_head, spec.n_head_kv, spec.head_dim
    W[p + "attn_q.weight"] = rng_normal(rng, (H * hd, d), 1.0 / np.sqrt(d))
    W[p + "attn_k.weight"] = rng_normal(rng, (Hkv * hd, d), 1.0 / np.sqrt(d))
    W[p + "attn_v.weight"] = rng_normal(rng, (Hkv * hd, d), 1.0 / np.sqrt(d))
    W[p + "attn_output.weight"] = rng_normal(rng, (d, H * hd), spec.noise / np.sqrt(H * hd))


def moe_block(W: dict[str, np.ndarray], rng: np.random.Generator, p: str, spec: SyntheticSpec) -> None:
    d, E, f, fs, g = spec.n_embd, spec.n_expert, spec.n_ff_exp, spec.n_ff_shexp, spec.noise
    W[p + "ffn_gate_inp.weight"] = rng_normal(rng, (E, d), 1.0 / np.sqrt(d))
    W[p + "exp_probs_b.bias"] = rng_normal(rng, (E,), 0.1)
    W[p + "ffn_up_exps.weight"] = rng_normal(rng, (E, f, d), 1.0 / np.sqrt(d))
    W[p + "ffn_down_exps.weight"] = rng_normal(rng, (E, d, f), g / np.sqrt(f))
    W[p + "ffn_up_shexp.weight"] = rng_normal(rng, (fs, d), 1.0 / np.sqrt(d))
    W[p + "ffn_down_shexp.weight"] = rng_normal(rng, (d, fs), g / np.sqrt(fs))


def synthetic_weights(spec: SyntheticSpec, tok: Tokenizer) -> dict[str, np.ndarray]:
    """Weights in numpy layout (rows = output features), keyed by GGUF tensor name."""
    if spec.nextn not in ("tied", "none"):
        raise ValueError("nemotron_h_moe's NextN block shares the trunk's embeddings and head: nextn 'tied' or 'none'")
    rng = np.random.default_rng(spec.seed)
    d = spec.n_embd
    W: dict[str, np.ndarray] = {}
    emb, out = embeddings_and_head(W, rng, d, tok)
    kinds = {"M": mamba2_block, "*": attn_block, "E": moe_block}
    for i, kind in enumerate(spec.pattern):
        p = f"blk.{i}."
        W[p + "attn_norm.weight"] = np.ones(d, np.float32)   # every block's norm
        kinds[kind](W, rng, p, spec)
    if spec.nextn != "none":
        p = f"blk.{spec.n_layer}."
        W[p + "attn_norm.weight"] = np.ones(d, np.float32)
        attn_block(W, rng, p, spec)
        W[p + "post_attention_norm.weight"] = np.ones(d, np.float32)
        moe_block(W, rng, p, spec)
        nextn_weights(W, rng, spec.n_layer, d, spec, emb, out)
    apply_norm_noise(W, spec)
    return W


def add_second_successor(W: dict[str, np.ndarray], spec: SyntheticSpec, tok: Tokenizer, seed: int = 3):
    """Every token gets a second, equally likely successor (see common.add_second_successor)."""
    return common.add_second_successor(W, spec.n_layer, spec.n_embd, tok, seed)


def write_synthetic(path: str | Path, spec: SyntheticSpec = SyntheticSpec(), tok: Tokenizer | None = None,
                    weights: dict[str, np.ndarray] | None = None, keys: dict[str, object] | None = None,
                    chat_template: str | None = None) -> Path:
    """Write a synthetic nemotron_h_moe GGUF file and return its path.  keys: for bad-file tests (see
    qwen35moe.replace_keys)."""
    from .qwen35moe import replace_keys

    tok = tok or train_bpe(n_merges=spec.n_merges)
    W = weights if weights is not None else synthetic_weights(spec, tok)
    declared = 1 if (spec.nextn != "none" or spec.nextn_declared) else 0
    kinds = list(spec.pattern) + (["+"] * declared)     # "+": the NextN block, attention and MoE

    def hparams(w) -> None:
        w.add_block_count(spec.n_layer + declared)
        w.add_embedding_length(spec.n_embd)
        w.add_feed_forward_length([spec.n_ff_exp if k in "E+" else 0 for k in kinds])
        w.add_head_count(spec.n_head)
        w.add_head_count_kv([spec.n_head_kv if k in "*+" else 0 for k in kinds])
        w.add_layer_norm_rms_eps(1e-5)
        w.add_layer_norm_eps(1e-5)
        w.add_key_length(spec.head_dim)
        w.add_value_length(spec.head_dim)
        w.add_expert_used_count(spec.n_expert_used)
        w.add_expert_feed_forward_length(spec.n_ff_exp)
        w.add_expert_shared_feed_forward_length(spec.n_ff_shexp)
        w.add_expert_count(spec.n_expert)
        w.add_expert_shared_count(1)
        w.add_expert_weights_norm(spec.expert_weights_norm)
        w.add_expert_weights_scale(spec.expert_weights_scale)
        w.add_expert_group_count(1)
        w.add_ssm_conv_kernel(spec.ssm_conv)
        w.add_ssm_state_size(spec.ssm_state)
        w.add_ssm_group_count(spec.ssm_groups)
        w.add_ssm_inner_size(spec.ssm_inner)
        w.add_ssm_time_step_rank(spec.ssm_heads)
        if declared:
            w.add_nextn_predict_layers(declared)
        replace_keys(w, ARCH, keys)

    # the converter keeps routers, the convolution, norms and every tensor not named "*.weight"
    # (ssm_a, ssm_d, biases) in f32 whatever the outtype (base.py)
    return write_gguf(path, ARCH, spec.name, spec.n_ctx_train, tok, "qwen2", hparams, W, spec.dtype,
                      keep_f32=lambda name: (name.endswith(("ffn_gate_inp.weight", "ssm_conv1d.weight", "_norm.weight"))
                                             or not name.endswith(".weight")),
                      chat_template=chat_template)
