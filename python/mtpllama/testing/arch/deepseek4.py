"""deepseek4 (DeepSeek-V4) test files: synthetic weights and the file layout of llama.cpp's converter
(``DeepseekV4Model`` in conversion/deepseek.py).  Each block carries four hyper-connection lanes
(``hc_*``: the residual stream is 4 x n_embd wide, and so is the state handed to the NextN block),
attention with one shared K=V head, a low-rank query, a grouped low-rank output and sinks, and, per
``compress_ratios``, a compressor (ratio 4 with a lightning indexer of its own, or 128); its MoE routes
by sqrt-softplus scores, the first ``hash_layer_count`` blocks by a token-id table instead.

The converter writes the trunk and the NextN block to separate files (``--mtp`` writes the block, the
shared embedding, norm and head, and the block's own ``hc_head_*`` as the root ``output_hc_*``);
``write_synthetic`` writes both in one file (as ``mtpllama.extract_*`` split it, the root
hyper-connection head shared) and ``write_split`` the converter's two halves.

The weights follow glm4moe's recipe (see that module); the hyper-connection mixes start near an even
mix, so that every lane carries the token's embedding.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..bpe import Tokenizer, train_bpe
from ..gguf_writer import write_gguf
from .common import apply_norm_noise, embeddings_and_head, moe_keys, nextn_weights, rng_normal

ARCH = "deepseek4"
HC = 4                               # hyper-connection lanes: llama.cpp's graph asserts 4
SQRT_SOFTPLUS = 4                    # llama.cpp's expert gating function value


@dataclass(frozen=True)
class SyntheticSpec:
    """Shape and behaviour of a synthetic deepseek4 file (DeepSeek-V4-Flash-like, tiny)."""

    n_embd: int = 64
    n_layer: int = 4                 # trunk layers
    ratios: tuple[int, ...] = (0, 4, 128, 4, 0)  # compress_ratios: the trunk's, then the NextN block's
    n_hash: int = 1                  # leading blocks routed by token id (hash_layer_count)
    n_head: int = 4
    head_dim: int = 128              # K = V, one shared KV head
    n_rot: int = 16                  # rope.dimension_count (qk_rope_head_dim)
    q_lora_rank: int = 32
    o_groups: int = 2
    o_lora_rank: int = 32
    n_swa: int = 12                  # the window: shorter than the tests' contexts
    n_index_head: int = 2
    index_head_dim: int = 64         # a multiple of 64: llama.cpp rotates the indexer keys by a Hadamard matrix
    index_top_k: int = 4             # fewer than a 64-token text's compressed rows: the indexer selects
    n_ff: int = 128                  # feed_forward_length (V4 has no dense block; TextModel writes it)
    n_expert: int = 8
    n_expert_used: int = 2
    n_expert_shared: int = 1
    n_ff_exp: int = 32
    swiglu_limit: float = 10.0
    sinkhorn_iters: int = 20
    nextn: str = "own"               # "own", "tied", "none"
    nextn_declared: bool = True      # with nextn="none": still declare the block (a trunk-only file)
    n_ctx_train: int = 4096
    noise: float = 0.9               # the lanes add every block's output up: less noise than glm4moe's
    hc_noise: float = 0.1            # spread of the hyper-connection mixing projections
    norm_noise: float = 0.0
    head_scale: float = 1.0
    dtype: str = "f32"
    n_merges: int = 200
    seed: int = 0
    name: str = "mtpllama-synthetic-deepseek4"


def _hc(W: dict[str, np.ndarray], rng: np.random.Generator, p: str, d: int, g: float, n_out: int, n_scale: int) -> None:
    """A hyper-connection mix (fn, base, scale) under prefix p: n_out mixes of the 4 x d stream."""
    W[p + "fn.weight"] = rng_normal(rng, (n_out, HC * d), g / np.sqrt(HC * d))
    W[p + "base.weight"] = rng_normal(rng, (n_out,), 0.1)
    W[p + "scale.weight"] = (0.5 + 0.5 * rng.random(n_scale)).astype(np.float32)


def _compressor(W: dict[str, np.ndarray], rng: np.random.Generator, p: str, d: int, width: int, ratio: int,
                norm: int) -> None:
    W[p + "_kv.weight"] = rng_normal(rng, (width, d), 1.0 / np.sqrt(d))
    W[p + "_gate.weight"] = rng_normal(rng, (width, d), 1.0 / np.sqrt(d))
    W[p + "_ape.weight"] = rng_normal(rng, (ratio, width), 0.1)
    W[p + "_norm.weight"] = np.ones(norm, np.float32)


def block(W: dict[str, np.ndarray], rng: np.random.Generator, i: int, spec: SyntheticSpec, tok: Tokenizer) -> None:
    """Block i's decoder tensors as load_arch_tensors reads them (numpy layout: rows = outputs)."""
    d, nh, hd, g = spec.n_embd, spec.n_head, spec.head_dim, spec.noise
    ql, og, ol = spec.q_lora_rank, spec.o_groups, spec.o_lora_rank
    p = f"blk.{i}."
    W[p + "attn_norm.weight"] = np.ones(d, np.float32)
    W[p + "attn_sinks.weight"] = rng_normal(rng, (nh,), 0.5)
    W[p + "attn_q_a.weight"] = rng_normal(rng, (ql, d), 1.0 / np.sqrt(d))
    W[p + "attn_q_a_norm.weight"] = np.ones(ql, np.float32)
    W[p + "attn_q_b.weight"] = rng_normal(rng, (nh * hd, ql), 1.0 / np.sqrt(ql))
    W[p + "attn_kv.weight"] = rng_normal(rng, (hd, d), 1.0 / np.sqrt(d))
    W[p + "attn_kv_a_norm.weight"] = np.ones(hd, np.float32)
    # the file's shape (n_head * head_dim / groups, o_lora_rank * groups); llama.cpp views it per group
    W[p + "attn_output_a.weight"] = rng_normal(rng, (ol * og, nh * hd // og), 1.0 / np.sqrt(nh * hd // og))
    W[p + "attn_output_b.weight"] = rng_normal(rng, (d, og * ol), g / np.sqrt(og * ol))
    mix = (2 + HC) * HC
    _hc(W, rng, p + "hc_attn_", d, spec.hc_noise, mix, 3)
    _hc(W, rng, p + "hc_ffn_", d, spec.hc_noise, mix, 3)
    ratio = spec.ratios[i]
    if ratio:
        _compressor(W, rng, p + "attn_compressor", d, (2 if ratio == 4 else 1) * hd, ratio, hd)
        if ratio == 4:
            ni, ih = spec.n_index_head, spec.index_head_dim
            W[p + "indexer.proj.weight"] = rng_normal(rng, (ni, d), 1.0 / np.sqrt(d))
            W[p + "indexer.attn_q_b.weight"] = rng_normal(rng, (ni * ih, ql), 1.0 / np.sqrt(ql))
            _compressor(W, rng, p + "indexer_compressor", d, 2 * ih, ratio, ih)
    E, f = spec.n_expert, spec.n_ff_exp
    W[p + "ffn_gate_inp.weight"] = rng_normal(rng, (E, d), 1.0 / np.sqrt(d))
    if i < spec.n_hash:  # the token-id routing table (I32): the converter drops this block's bias
        W[p + "ffn_gate_tid2eid.weight"] = np.stack(
            [rng.permutation(E)[:spec.n_expert_used] for _ in range(tok.n_vocab)]).astype(np.int32)
    else:
        W[p + "exp_probs_b.bias"] = rng_normal(rng, (E,), 0.1)
    W[p + "ffn_norm.weight"] = np.ones(d, np.float32)
    W[p + "ffn_gate_exps.weight"] = rng_normal(rng, (E, f, d), 1.0 / np.sqrt(d))
    W[p + "ffn_down_exps.weight"] = rng_normal(rng, (E, d, f), g / np.sqrt(f))
    W[p + "ffn_up_exps.weight"] = rng_normal(rng, (E, f, d), 1.0 / np.sqrt(d))
    fs = f * spec.n_expert_shared
    W[p + "ffn_gate_shexp.weight"] = rng_normal(rng, (fs, d), 1.0 / np.sqrt(d))
    W[p + "ffn_down_shexp.weight"] = rng_normal(rng, (d, fs), g / np.sqrt(fs))
    W[p + "ffn_up_shexp.weight"] = rng_normal(rng, (fs, d), 1.0 / np.sqrt(d))


def hc_head(W: dict[str, np.ndarray], rng: np.random.Generator, spec: SyntheticSpec, prefix: str = "output_hc_") -> None:
    """The hyper-connection head folding the 4 lanes into one before the output norm."""
    _hc(W, rng, prefix, spec.n_embd, spec.hc_noise, HC, 1)


def synthetic_weights(spec: SyntheticSpec, tok: Tokenizer) -> dict[str, np.ndarray]:
    """Weights in numpy layout (rows = output features), keyed by GGUF tensor name; the NextN block's
    own hyper-connection head, which only the converter's MTP file carries, as "mtp.output_hc_*"."""
    if len(spec.ratios) != spec.n_layer + 1 or any(r not in (0, 4, 128) for r in spec.ratios):
        raise ValueError("ratios: one of 0, 4, 128 per trunk layer and one for the NextN block")
    rng = np.random.default_rng(spec.seed)
    W: dict[str, np.ndarray] = {}
    emb, out = embeddings_and_head(W, rng, spec.n_embd, tok)
    hc_head(W, rng, spec)
    for i in range(spec.n_layer):
        block(W, rng, i, spec, tok)
    if spec.nextn != "none":
        block(W, rng, spec.n_layer, spec, tok)
        nextn_weights(W, rng, spec.n_layer, spec.n_embd, spec, emb, out)
        hc_head(W, rng, spec, "mtp.output_hc_")
    apply_norm_noise(W, spec)
    return W


def _keep_f32(name: str) -> bool:
    """What the converter keeps f32 (float32 in the checkpoint): the hyper-connection mixes, the
    compressors' position biases, the routers; the token-id table is I32."""
    return name.endswith(("_fn.weight", "_ape.weight", "ffn_gate_inp.weight", "tid2eid.weight"))


def _write(path: str | Path, spec: SyntheticSpec, tok: Tokenizer, W: dict[str, np.ndarray], n_block: int,
           n_nextn: int, keys: dict[str, object] | None, chat_template: str | None) -> Path:
    from .qwen35moe import replace_keys

    def hparams(w) -> None:  # TextModel's keys, then DeepseekV4Model's
        moe_keys(w, spec, n_block)
        w.add_head_count(spec.n_head)
        w.add_head_count_kv(1)
        w.add_layer_norm_rms_eps(1e-6)
        w.add_uint32(f"{ARCH}.expert_gating_func", SQRT_SOFTPLUS)
        w.add_value_length(spec.head_dim)
        w.add_rope_dimension_count(spec.n_rot)
        w.add_q_lora_rank(spec.q_lora_rank)
        w.add_sliding_window(spec.n_swa)
        w.add_expert_shared_count(spec.n_expert_shared)
        w.add_expert_weights_scale(1.5)
        w.add_expert_weights_norm(True)
        w.add_array(f"{ARCH}.swiglu_clamp_exp", [spec.swiglu_limit] * n_block)
        w.add_array(f"{ARCH}.swiglu_clamp_shexp", [spec.swiglu_limit] * n_block)
        w.add_uint32(f"{ARCH}.attention.indexer.head_count", spec.n_index_head)
        w.add_uint32(f"{ARCH}.attention.indexer.key_length", spec.index_head_dim)
        w.add_uint32(f"{ARCH}.attention.indexer.top_k", spec.index_top_k)
        w.add_uint32(f"{ARCH}.attention.output_group_count", spec.o_groups)
        w.add_uint32(f"{ARCH}.attention.output_lora_rank", spec.o_lora_rank)
        w.add_array(f"{ARCH}.attention.compress_ratios", list(spec.ratios))  # the config's list, NextN's too
        w.add_float32(f"{ARCH}.attention.compress_rope_freq_base", 160000.0)
        w.add_uint32(f"{ARCH}.hyper_connection.count", HC)
        w.add_uint32(f"{ARCH}.hyper_connection.sinkhorn_iterations", spec.sinkhorn_iters)
        w.add_float32(f"{ARCH}.hyper_connection.epsilon", 1e-6)
        w.add_uint32(f"{ARCH}.hash_layer_count", spec.n_hash)
        w.add_uint32(f"{ARCH}.embedding_length_out", spec.n_embd * HC)
        if n_nextn:
            w.add_nextn_predict_layers(n_nextn)
        replace_keys(w, ARCH, keys)

    # V4's tokenizer pre-tokenizes as "deepseek-v3"; the synthetic vocabulary was trained for glm4's
    return write_gguf(path, ARCH, spec.name, spec.n_ctx_train, tok, "glm4", hparams, W, spec.dtype,
                      keep_f32=_keep_f32, chat_template=chat_template)


def write_synthetic(path: str | Path, spec: SyntheticSpec = SyntheticSpec(), tok: Tokenizer | None = None,
                    weights: dict[str, np.ndarray] | None = None, chat_template: str | None = None,
                    keys: dict[str, object] | None = None) -> Path:
    """Write a synthetic deepseek4 GGUF file, trunk and NextN block in one, and return its path.
    keys: for bad-file tests (see qwen35moe.replace_keys)."""
    tok = tok or train_bpe(n_merges=spec.n_merges)
    W = weights if weights is not None else synthetic_weights(spec, tok)
    W = {k: v for k, v in W.items() if not k.startswith("mtp.")}
    declared = 1 if (spec.nextn != "none" or spec.nextn_declared) else 0
    return _write(path, spec, tok, W, spec.n_layer + declared, declared, keys, chat_template)


def write_split(trunk: str | Path, head: str | Path, spec: SyntheticSpec = SyntheticSpec(),
                tok: Tokenizer | None = None) -> tuple[Path, Path]:
    """The converter's two files: the trunk (no NextN key, its blocks only) and the MTP file (block
    count and NextN key of the whole model; the embedding, output norm and head, the NextN block, and
    the block's own hyper-connection head as output_hc_*)."""
    tok = tok or train_bpe(n_merges=spec.n_merges)
    W = synthetic_weights(spec, tok)
    n = spec.n_layer
    trunk_w = {k: v for k, v in W.items() if not k.startswith(("mtp.", f"blk.{n}."))}
    head_w = {k: v for k, v in W.items() if k.startswith(f"blk.{n}.")}
    for k in ("token_embd.weight", "output_norm.weight", "output.weight"):
        head_w[k] = W[k]
    for k in [k for k in W if k.startswith("mtp.")]:
        head_w[k.removeprefix("mtp.")] = W[k]
    # the trunk file is written from the model's config: its per-layer lists keep the NextN entry
    return (_write(trunk, spec, tok, trunk_w, n, 0, None, None),
            _write(head, spec, tok, head_w, n + 1, 1, None, None))
