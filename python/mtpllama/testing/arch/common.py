"""Pieces the architectures' test-file writers share: the token embeddings and output head that make
the trunk favour a fixed "next token" map, the FFN (dense, or MoE with shared experts), the NextN
block's hand-over and head, and non-uniform norms.

Each piece draws from the caller's random stream in a fixed order and inserts its tensors into the
caller's dict in a fixed order: both make the file's bytes, so a change here changes every
architecture's test files.  ``spec`` is any writer's ``SyntheticSpec`` with the fields named below.
"""
from __future__ import annotations

import numpy as np

from ..bpe import Tokenizer


def rng_normal(rng: np.random.Generator, shape, scale: float) -> np.ndarray:
    return (rng.standard_normal(shape) * scale).astype(np.float32)


def embeddings_and_head(W: dict[str, np.ndarray], rng: np.random.Generator, d: int,
                        tok: Tokenizer) -> tuple[np.ndarray, np.ndarray]:
    """token_embd, output_norm and output: the output head maps each ordinary token's embedding
    direction to a random successor sigma(t).  Returns (embeddings, output head)."""
    V = tok.n_vocab
    emb = rng_normal(rng, (V, d), 1.0)
    normal = np.array(tok.normal_ids)
    sigma = normal[rng.permutation(len(normal))]         # the trunk's favourite next token
    out = rng_normal(rng, (V, d), 0.05)
    unit = emb / np.sqrt((emb ** 2).mean(axis=1, keepdims=True))
    out[sigma] = unit[normal] * (3.0 / np.sqrt(d))
    W["token_embd.weight"] = emb
    W["output_norm.weight"] = np.ones(d, np.float32)
    W["output.weight"] = out
    return emb, out


def ffn_weights(W: dict[str, np.ndarray], rng: np.random.Generator, p: str, d: int, spec, moe: bool) -> None:
    """A block's FFN under prefix p: SwiGLU of width spec.n_ff, or spec.n_expert routed experts of
    width spec.n_ff_exp (router, selection bias) plus spec.n_expert_shared shared ones."""
    g = spec.noise
    if not moe:
        W[p + "ffn_gate.weight"] = rng_normal(rng, (spec.n_ff, d), 1.0 / np.sqrt(d))
        W[p + "ffn_up.weight"] = rng_normal(rng, (spec.n_ff, d), 1.0 / np.sqrt(d))
        W[p + "ffn_down.weight"] = rng_normal(rng, (d, spec.n_ff), g / np.sqrt(spec.n_ff))
        return
    E, f = spec.n_expert, spec.n_ff_exp
    W[p + "ffn_gate_inp.weight"] = rng_normal(rng, (E, d), 1.0 / np.sqrt(d))
    W[p + "exp_probs_b.bias"] = rng_normal(rng, (E,), 0.1)
    W[p + "ffn_gate_exps.weight"] = rng_normal(rng, (E, f, d), 1.0 / np.sqrt(d))
    W[p + "ffn_up_exps.weight"] = rng_normal(rng, (E, f, d), 1.0 / np.sqrt(d))
    W[p + "ffn_down_exps.weight"] = rng_normal(rng, (E, d, f), g / np.sqrt(f))
    if spec.n_expert_shared > 0:
        fs = f * spec.n_expert_shared
        W[p + "ffn_gate_shexp.weight"] = rng_normal(rng, (fs, d), 1.0 / np.sqrt(d))
        W[p + "ffn_up_shexp.weight"] = rng_normal(rng, (fs, d), 1.0 / np.sqrt(d))
        W[p + "ffn_down_shexp.weight"] = rng_normal(rng, (d, fs), g / np.sqrt(fs))


def nextn_weights(W: dict[str, np.ndarray], rng: np.random.Generator, n: int, d: int, spec,
                  emb: np.ndarray, out: np.ndarray) -> None:
    """The NextN-specific tensors of block n (its decoder block is the caller's): eh_proj passing
    the token embedding through and perturbing it by the trunk state, the norms, and per
    spec.nextn an own embedding and head ("own") or none ("tied"); spec.head_scale sharpens or
    flattens the head."""
    g = spec.noise
    p = f"blk.{n}.nextn."
    eh = np.zeros((d, 2 * d), np.float32)
    eh[:, :d] = np.eye(d, dtype=np.float32)                  # the token-embedding half carries the signal
    eh[:, d:] = rng_normal(rng, (d, d), g / np.sqrt(d))      # the trunk-state half perturbs it
    W[p + "eh_proj.weight"] = eh
    W[p + "enorm.weight"] = np.ones(d, np.float32)
    W[p + "hnorm.weight"] = np.ones(d, np.float32)
    W[p + "shared_head_norm.weight"] = np.ones(d, np.float32)
    if spec.nextn == "own":  # close to the trunk's, but not equal: a test can tell which one is used
        W[p + "embed_tokens.weight"] = emb + rng_normal(rng, emb.shape, 0.1)
        W[p + "shared_head_head.weight"] = out + rng_normal(rng, out.shape, 0.01)
    elif spec.nextn != "tied":
        raise ValueError(f"nextn must be 'own', 'tied' or 'none', got {spec.nextn!r}")
    if spec.head_scale != 1.0:  # the logits are linear in the head norm's weight, own head or tied
        W[p + "shared_head_norm.weight"] = W[p + "shared_head_norm.weight"] * np.float32(spec.head_scale)


def apply_norm_noise(W: dict[str, np.ndarray], spec) -> None:
    """spec.norm_noise > 0: every RMS-norm weight times 1 + N(0, norm_noise), from a stream of its
    own (the other weights stay those of norm_noise=0)."""
    if spec.norm_noise > 0:
        nrng = np.random.default_rng([spec.seed, 0x6E6F726D])
        for name in sorted(W):
            if name.endswith("norm.weight"):
                W[name] = (W[name] * (1.0 + rng_normal(nrng, W[name].shape, spec.norm_noise))).astype(np.float32)


def add_second_successor(W: dict[str, np.ndarray], n_layer: int, n_embd: int, tok: Tokenizer,
                         seed: int = 3) -> dict[str, np.ndarray]:
    """Give every token a second, equally likely successor, in the trunk's output head and in the
    NextN head (block n_layer) alike: a model whose next token is genuinely uncertain."""
    rng = np.random.default_rng(seed)
    emb = W["token_embd.weight"]
    unit = emb / np.sqrt((emb ** 2).mean(axis=1, keepdims=True))
    normal = np.array(tok.normal_ids)
    second = normal[rng.permutation(len(normal))]
    for key in ("output.weight", f"blk.{n_layer}.nextn.shared_head_head.weight"):
        if key in W:
            W[key][second] += unit[normal] * (3.0 / np.sqrt(n_embd))
    return W


def chained_nextn_blocks(W: dict[str, np.ndarray], rng: np.random.Generator, spec, emb: np.ndarray,
                         out: np.ndarray, block, moe: bool, head_norm: str = "nextn.shared_head_norm.weight") -> None:
    """spec.n_nextn NextN blocks after the trunk (block(n, moe=moe) writes each one's decoder block),
    each block's head norm stored under head_norm, and the heads spec.broken_heads names flattened:
    their head norm is zero, so they draft the first vocabulary token (a test can see which head
    drafted which position)."""
    for j in range(spec.n_nextn):
        n = spec.n_layer + j
        block(n, moe=moe)
        nextn_weights(W, rng, n, spec.n_embd, spec, emb, out)
        norm = W.pop(f"blk.{n}.nextn.shared_head_norm.weight")
        W[f"blk.{n}.{head_norm}"] = np.zeros_like(norm) if j in spec.broken_heads else norm


def moe_keys(w, spec, n_block: int) -> None:
    """The keys the MoE converters of hy_v3, mimo2, step35, cohere2moe and deepseek4 write alike (TextModel's and
    their expert sizes): the block count, the widths, the key length, the expert counts, the RoPE
    base.  Each writer adds the rest."""
    w.add_block_count(n_block)
    w.add_embedding_length(spec.n_embd)
    w.add_feed_forward_length(spec.n_ff)
    w.add_key_length(spec.head_dim)
    w.add_rope_freq_base(10000.0)
    w.add_expert_count(spec.n_expert)
    w.add_expert_used_count(spec.n_expert_used)
    w.add_expert_feed_forward_length(spec.n_ff_exp)
