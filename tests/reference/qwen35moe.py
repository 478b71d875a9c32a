"""An independent numpy reference of llama.cpp's ``qwen35moe`` (Qwen3.5/3.6 MoE), ``qwen35`` (the
same with dense FFNs) and ``qwen3next`` (Qwen3-Next) forward passes and of their NextN (MTP) step,
written from upstream's graphs (src/models/qwen35moe.cpp, qwen35.cpp, qwen3next.cpp,
delta-net-base.cpp) and ggml's CPU kernels (gated_delta_net, ssm_conv, rope_multi, rope), not from
this project's C++.

Numerics are those of reference/glm4moe.py (float64; f16 weights widened exactly; the f16 KV cache
of the attention layers; f16-rounded activations into products with f16 weights; the CPU
flash-attention kernel's f16 V accumulator for batches under 64 rows), whose skeleton it reuses:
the trunk loop and output head, the NextN step, the KV cache and ``replay``.  The recurrent state
(convolution window and delta-net state) is f32 in llama.cpp (recurrent_type_r/s) and float64 here,
with no rounding to model.

The model, per position (x a row vector of n_embd)::

    x = token_embd[t]
    for each trunk layer il:
        a = (gated_delta_net if recurrent(il) else gated_attention)(rms(x) * attn_norm)
        x = x + a
        y = rms(x) * post_attention_norm
        x = x + (moe(y) + sigmoid(ffn_gate_inp_shexp . y) * shared_expert(y)    # qwen35moe, qwen3next
                 or swiglu(y))                                                   # qwen35
    h      = rms(x) * output_norm          # the LM head's input AND the state handed to the MTP block
    logits = output @ h                    # output.weight, or token_embd when the file has none

recurrent(il): attention.recurrent_layers when the file has it, else (il + 1) % full_attention_interval
!= 0 (interval 4 when absent).

gated_delta_net (S = ssm.state_size, Hk = ssm.group_count key heads, Hv = ssm.time_step_rank value
heads, K = ssm.conv_kernel; C = 2 Hk S + Hv S channels)::

    qkv  = attn_qkv @ x                     # C channels: [q (Hk x S) | k (Hk x S) | v (Hv x S)]
    z    = attn_gate @ x                    # (Hv x S)
    beta = sigmoid(ssm_beta @ x)            # per value head
    g    = softplus(ssm_alpha @ x + ssm_dt.bias) * ssm_a      # ssm_a = -exp(A_log) < 0
    c    = silu(sum_{i<K} window[i] * ssm_conv1d[:, i])       # window: the K-1 previous qkv rows
                                            # (zeros before position 0), then this one: tap K-1 is
                                            # the current input
    q, k = l2(c_q), l2(c_k) per head, l2(u) = u / sqrt(sum u^2 + eps)  (build_gdn_l2_norm)
    v    = c_v
    per value head h, with key head h % Hk (qwen35*: ggml tiles the key heads; the converter orders
    the value heads to match) or h // r, r = Hv / Hk (qwen3next: the graph repeat-interleaves q and
    k, HF's grouped order), state M (S x S, M[i, j]: key dim i, value dim j; ggml stores it
    transposed, s[j*S + i] = M[i, j]):
        M     = M * exp(g_h)
        delta = (v_h - M^T k) * beta_h
        M     = M + k delta^T
        o_h   = M^T q / sqrt(S)
    o   = rms(o_h) * ssm_norm * silu(z_h)   per head (build_norm_gated)
    out = ssm_out @ o

qwen3next's projections (qwen3next.cpp's build_layer_attn_linear and build_qkvz), r = Hv / Hk:
    ba = ssm_ba @ x, per key head kh [beta (r) | alpha (r)]: value head kh*r + j has
        beta = sigmoid(ba[kh, j]) and alpha = ba[kh, r + j] (so both are flattened in (kh, j) order);
    with attn_qkv / attn_gate as above, or (legacy files) one ssm_in @ x, per key head kh
        [q (S) | k (S) | v (r S) | z (r S)]: qkv = [q of every kh | k of every kh | v of every kh]
        and z likewise concatenated over kh (value head kh*r + j: v[kh][j*S:(j+1)*S]).

gated_attention (H heads of hd, Hkv KV heads)::

    attn_q @ x = per head [q (hd) | gate (hd)];  k = attn_k @ x;  v = attn_v @ x
    q = rms(q) * attn_q_norm, k = rms(k) * attn_k_norm   (per head)
    q, k rotated on their first n_rot dims; qwen3next: plain NeoX rope (ggml_rope_ext, rope type
    NEOX: llama_model_rope_type), pairs (i, i + n_rot/2) at angle pos * base^(-2i/n_rot);
    qwen35*: interleaved M-RoPE (IMROPE): NeoX pairs
        (i, i + n_rot/2), angle p_s * base^(-2i/n_rot), where the pair's sector s = i % sum(sections)
        picks the position: s % 3 == 1 and s < 3 sections[1]: p_h; s % 3 == 2 and s < 3 sections[2]:
        p_w; s % 3 == 0 and s < 3 sections[0]: p_t; else p_e.  For text tokens llama.cpp sets
        p_t = p_h = p_w = pos and p_e = 0 (llm_graph_input_pos), so an "e" pair is not rotated.
    o = softmax(q . K / sqrt(hd)) V   (GQA: head j reads KV head j // (H / Hkv); causal by position)
    out = attn_output @ (o * sigmoid(gate))

moe: p = softmax(ffn_gate_inp @ y) over all experts; the top n_expert_used of p are chosen; their
weights p / sum (clamped at 2^-14), always normalised (build_moe_ffn's norm_w = true);
expert_weights_scale is not read by qwen35moe's nor qwen3next's loader (stays 0: no scaling);
each expert is down @ (silu(gate @ y) * (up @ y)).  The shared expert (when the file has one) is
the same SwiGLU with the *_shexp weights, times sigmoid(ffn_gate_inp_shexp . y).

NextN step for an entry (token t at position p, state h_in) (graph_mtp)::

    x = eh_proj @ concat(rms(E[t]) * enorm, rms(h_in) * hnorm)   # E: nextn.embed_tokens or token_embd
    x = one gated-attention decoder block (its own KV cache) with the block's FFN (qwen3next:
        always routed experts + gated shared expert)
    h_out  = rms(x) * shared_head_norm     # (fallback output_norm); fed back for the next draft
    logits = (shared_head_head or output) @ h_out

The recurrent state at a rollback: the engine keeps llama.cpp's per-position state snapshots, and
dropping positions >= p restores the state after position p - 1: exactly the state plain decoding
of the kept tokens reaches.  The reference keeps the state after every position (RecurrentCache)
and restores it at a forget, so ``glm4moe.replay`` replays the engine's events unchanged.
"""
from __future__ import annotations

from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np

from . import glm4moe as _g
from .deepseek2 import read_weights
from .glm4moe import (CATEGORIES, KVCache, ProvenanceError, ReplayResult, RowError, _f16, _sigmoid, _silu,
                      rel_err, replay)

__all__ = ["HParams", "Variant", "KVCache", "RecurrentCache", "Reference", "load_gguf", "replay", "rel_err",
           "ProvenanceError", "ReplayResult", "RowError", "CATEGORIES", "ARCHS"]

ARCHS = ("qwen35moe", "qwen35", "qwen3next")
# per architecture: the rope (llama_model_rope_type) and which key head a value head reads
ROPE_TYPE = {"qwen35moe": "imrope", "qwen35": "imrope", "qwen3next": "neox"}
V_HEAD_ORDER = {"qwen35moe": "tiled", "qwen35": "tiled", "qwen3next": "grouped"}


# --- model description ----------------------------------------------------------------

@dataclass(frozen=True)
class HParams:
    arch: str
    n_vocab: int
    n_embd: int
    n_layer: int                 # trunk layers (block_count - nextn_predict_layers)
    n_layer_nextn: int
    n_head: int
    n_head_kv: int
    head_dim: int
    n_rot: int
    rope_base: float
    rope_sections: tuple[int, int, int, int]
    eps: float
    recurrent: tuple[bool, ...]  # per trunk layer: a gated delta net (else gated attention)
    ssm_state: int               # S
    ssm_k_heads: int             # Hk (ssm.group_count)
    ssm_v_heads: int             # Hv (ssm.time_step_rank)
    ssm_conv: int                # K (ssm.conv_kernel)
    moe: bool                    # qwen35moe, qwen3next: routed experts (+ gated shared expert); qwen35: SwiGLU
    n_expert: int = 0
    n_expert_used: int = 0
    rope_type: str = "imrope"    # "imrope" (qwen35*: rope_sections apply) or "neox" (qwen3next)
    v_head_order: str = "tiled"  # "tiled": value head h reads key head h % Hk; "grouped": h // (Hv / Hk)


@dataclass(frozen=True)
class Variant:
    """Switches for deliberately different (broken, or other-convention) references.

    The defaults are the upstream llama.cpp conventions."""

    concat: str = "e_h"           # "h_e": the two halves of eh_proj's input swapped
    trunk_h: str = "post_norm"    # "pre_norm": hand the MTP block the state before output_norm
    mtp_h: str = "post_norm"      # "pre_norm": feed back the state before shared_head_norm
    rollback: bool = True         # False: a forget keeps the recurrent state of the last evaluated position
    conv: str = "causal"          # "reversed": the conv taps flipped (tap 0 on the current input)
    kv_heads: str | None = None   # None: the architecture's (hp.v_head_order); "tiled": value head h reads
                                  # key head h % Hk (ggml's order, qwen35*); "grouped": h // (Hv / Hk) (HF's, qwen3next)
    rope: str | None = None       # None: the architecture's (hp.rope_type); "imrope"; "neox": every pair
                                  # rotated by pos (on qwen35*: p_e = pos, not 0); "norm": GPT-J style
                                  # adjacent pairs (2i, 2i+1)
    ba: str = "beta_alpha"        # qwen3next's ssm_ba per key head: "beta_alpha" [beta | alpha];
                                  # "alpha_beta": the halves swapped
    ssm_in: str = "per_key_head"  # legacy ssm_in: "per_key_head" [q | k | v | z] per key head;
                                  # "flat": read as [q (Hk S) | k (Hk S) | v (Hv S) | z (Hv S)]
    attn_gate: bool = True        # False: the attention output not multiplied by sigmoid(gate)
    shexp_gate: bool = True       # False: the shared expert not multiplied by its sigmoid gate
    qk_norm: bool = True          # False: ignore attn_q_norm / attn_k_norm
    kv_f16: bool = True           # round cached K and V to f16
    attn: str = "ggml_cpu"        # "exact": float64 softmax attention (no f16 accumulator emulation)
    act_f16: bool = True          # round the activation of a product with an f16 weight to f16


def load_gguf(path: str | Path) -> tuple[HParams, dict[str, np.ndarray], set[str]]:
    """Hyper-parameters, float64 weights (numpy layout: rows = output features) and the names of
    the tensors stored as f16, read from a qwen35moe, qwen35 or qwen3next GGUF file."""
    import gguf

    r = gguf.GGUFReader(str(path))

    def kv(key, default=None):
        f = r.fields.get(key)
        return default if f is None else f.contents()

    arch = kv("general.architecture")
    if arch not in ARCHS:
        raise ValueError(f"{path}: architecture {arch!r}, expected one of {ARCHS}")
    a = arch + "."
    blocks = int(kv(a + "block_count"))
    nextn = int(kv(a + "nextn_predict_layers", 0) or 0)
    n_layer = blocks - nextn
    n_head = int(kv(a + "attention.head_count"))
    n_embd = int(kv(a + "embedding_length"))
    head_dim = int(kv(a + "attention.key_length", n_embd // n_head))
    if int(kv(a + "attention.value_length", head_dim)) != head_dim:
        raise ValueError("the reference assumes key_length == value_length")
    recr = kv(a + "attention.recurrent_layers")
    if recr is not None:
        recurrent = tuple(bool(v) for v in list(recr)[:n_layer])
    else:
        interval = int(kv(a + "full_attention_interval", 4) or 4)
        recurrent = tuple((i + 1) % interval != 0 for i in range(n_layer))
    S, Hv = int(kv(a + "ssm.state_size")), int(kv(a + "ssm.time_step_rank"))
    if int(kv(a + "ssm.inner_size")) != S * Hv:
        raise ValueError("the reference assumes ssm.inner_size == ssm.state_size * ssm.time_step_rank")
    if kv(a + "rope.scaling.type") not in (None, "none") or float(kv(a + "rope.scaling.factor", 0.0) or 0.0) not in (0.0, 1.0):
        raise ValueError("rope scaling is not modelled")
    if float(kv(a + "attention.scale", 0.0) or 0.0) != 0.0:
        raise ValueError("attention.scale is not modelled")
    W, f16 = read_weights(r)
    moe = arch in ("qwen35moe", "qwen3next")
    sections = kv(a + "rope.dimension_sections")
    if ROPE_TYPE[arch] == "imrope" and sections is None:
        raise ValueError(f"{arch}: rope.dimension_sections missing")
    hp = HParams(
        arch=arch, n_vocab=W["token_embd.weight"].shape[0], n_embd=n_embd, n_layer=n_layer, n_layer_nextn=nextn,
        n_head=n_head, n_head_kv=int(kv(a + "attention.head_count_kv", n_head)), head_dim=head_dim,
        n_rot=int(kv(a + "rope.dimension_count", head_dim)), rope_base=float(kv(a + "rope.freq_base", 10000.0)),
        rope_sections=tuple(int(v) for v in sections or (0, 0, 0, 0)),  # type: ignore[arg-type]
        eps=float(kv(a + "attention.layer_norm_rms_epsilon")), recurrent=recurrent,
        ssm_state=S, ssm_k_heads=int(kv(a + "ssm.group_count")), ssm_v_heads=Hv,
        ssm_conv=int(kv(a + "ssm.conv_kernel")), moe=moe,
        n_expert=int(kv(a + "expert_count", 0) or 0) if moe else 0,
        n_expert_used=int(kv(a + "expert_used_count", 0) or 0) if moe else 0,
        rope_type=ROPE_TYPE[arch], v_head_order=V_HEAD_ORDER[arch])
    if hp.ssm_v_heads % hp.ssm_k_heads:
        raise ValueError("ssm.time_step_rank must be a multiple of ssm.group_count")
    return hp, W, f16


# --- the recurrent layers' cache ---------------------------------------------------------------

@dataclass
class RecurrentCache:
    """One delta-net layer's state after every evaluated position: the convolution window (the last
    K-1 qkv rows, (K-1, C)) and the delta-net state (Hv, S, S).  ``forget(p0)`` drops positions
    >= p0 and restores the state after p0 - 1 (zeros for p0 = 0), as llama.cpp's snapshots do;
    with rollback=False it keeps the state of the last evaluated position (what a missing restore
    does).  ``pos`` and ``len`` as KVCache's, so glm4moe.replay handles both kinds alike."""

    conv0: np.ndarray
    ssm0: np.ndarray
    rollback: bool = True
    conv: list = field(default_factory=list)    # per position
    ssm: list = field(default_factory=list)
    cur: tuple | None = None                     # the state the next position starts from

    @property
    def pos(self) -> np.ndarray:
        return np.arange(len(self.conv))

    def state(self) -> tuple[np.ndarray, np.ndarray]:
        return self.cur if self.cur is not None else (self.conv0, self.ssm0)

    def add(self, conv: np.ndarray, ssm: np.ndarray) -> None:
        self.conv.append(conv)
        self.ssm.append(ssm)
        self.cur = (conv, ssm)

    def forget(self, p0: int) -> None:
        if p0 >= len(self.conv):
            return
        del self.conv[p0:], self.ssm[p0:]
        if self.rollback:
            self.cur = (self.conv[-1], self.ssm[-1]) if self.conv else None

    def __len__(self) -> int:
        return len(self.conv)


# --- the forward pass ------------------------------------------------------------------------

def _softplus(x: np.ndarray) -> np.ndarray:
    return np.where(x > 20.0, x, np.log1p(np.exp(np.minimum(x, 20.0))))


class Reference(_g.Reference):
    """glm4moe's Reference (trunk loop, output head, NextN step) with the hybrid's blocks.  Same
    interface: ``trunk_cache()``, ``mtp_cache()``, ``trunk(cache, tokens, pos)``,
    ``nextn(cache, tokens, h_in, pos)``; a trunk cache holds a RecurrentCache per delta-net layer
    and a KVCache per attention layer."""

    def __init__(self, hp: HParams, W: dict[str, np.ndarray], f16: set[str] = frozenset(), variant: Variant = Variant()):
        super().__init__(hp, W, f16, variant)  # type: ignore[arg-type]
        self._rope = variant.rope or hp.rope_type
        self._v_heads = variant.kv_heads or hp.v_head_order
        # the rotated pairs' position sources (ggml_mrope_cache_init, is_imrope): 0..3 = t, h, w, e
        s = hp.rope_sections
        n_sect = sum(s)
        src = []
        for i in range(hp.n_rot // 2):
            if self._rope != "imrope":
                src.append(0)
                continue
            sector = i % n_sect
            if sector % 3 == 1 and sector < 3 * s[1]:
                src.append(1)
            elif sector % 3 == 2 and sector < 3 * s[2]:
                src.append(2)
            elif sector % 3 == 0 and sector < 3 * s[0]:
                src.append(0)
            else:
                src.append(3)
        self._text_pair = np.array(src) != 3   # for text tokens p_t = p_h = p_w = pos, p_e = 0

    def with_variant(self, **kw) -> "Reference":
        return Reference(self.hp, self.W, self.f16, replace(self.var, **kw))

    # -- building blocks ------------------------------------------------------------
    def rope(self, x: np.ndarray, pos: np.ndarray) -> np.ndarray:
        """x (n, heads, head_dim) rotated over its first n_rot dims at text positions pos (n,)."""
        n_rot = self.hp.n_rot
        rotated = self._text_pair if self._rope == "imrope" else np.ones_like(self._text_pair)
        ang = np.where(rotated[None, :], pos[:, None].astype(np.float64), 0.0) * self._inv_freq[None, :]
        cos, sin = np.cos(ang)[:, None, :], np.sin(ang)[:, None, :]
        return _g.rotate_pairs(x, n_rot, cos, sin, neox=self._rope != "norm")

    def attention(self, il: int, x: np.ndarray, pos: np.ndarray, cache: KVCache) -> np.ndarray:
        hp, p = self.hp, f"blk.{il}."
        n, hd = x.shape[0], hp.head_dim
        qg = self.mm(p + "attn_q.weight", x).reshape(n, hp.n_head, 2 * hd)
        q, gate = qg[..., :hd], qg[..., hd:].reshape(n, hp.n_head * hd)
        k = self.mm(p + "attn_k.weight", x).reshape(n, hp.n_head_kv, hd)
        v = self.mm(p + "attn_v.weight", x).reshape(n, hp.n_head_kv, hd)
        if self.var.qk_norm:
            q, k = self.rms(q, p + "attn_q_norm.weight"), self.rms(k, p + "attn_k_norm.weight")
        q, k = self.rope(q, pos), self.rope(k, pos)
        o = self.attend(q, k, v, pos, cache).reshape(n, hp.n_head * hd)
        if self.var.attn_gate:
            o = o * _sigmoid(gate)
        return self.mm(p + "attn_output.weight", o)

    def qkvz(self, il: int, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """The delta net's conv input [q (Hk S) | k (Hk S) | v (Hv S)] (n, C) and output gate z
        (n, Hv, S): from attn_qkv and attn_gate, or from a legacy file's fused ssm_in (per key head
        [q (S) | k (S) | v (r S) | z (r S)], build_qkvz's legacy path)."""
        hp, p = self.hp, f"blk.{il}."
        n, S, Hk, Hv = x.shape[0], hp.ssm_state, hp.ssm_k_heads, hp.ssm_v_heads
        if p + "ssm_in.weight" not in self.W:
            return self.mm(p + "attn_qkv.weight", x), self.mm(p + "attn_gate.weight", x).reshape(n, Hv, S)
        m = self.mm(p + "ssm_in.weight", x)                                           # (n, 2 Hk S + 2 Hv S)
        if self.var.ssm_in == "flat":
            C = 2 * Hk * S + Hv * S
            return m[:, :C], m[:, C:].reshape(n, Hv, S)
        r = Hv // Hk
        m = m.reshape(n, Hk, 2 * S + 2 * r * S)
        q, k = m[..., :S], m[..., S:2 * S]
        v, z = m[..., 2 * S:2 * S + r * S], m[..., 2 * S + r * S:]
        qkv = np.concatenate([q.reshape(n, Hk * S), k.reshape(n, Hk * S), v.reshape(n, Hv * S)], axis=1)
        return qkv, z.reshape(n, Hv, S)

    def beta_alpha(self, il: int, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """The delta net's beta and alpha logits (n, Hv) each: ssm_beta and ssm_alpha, or qwen3next's
        ssm_ba (per key head [beta (r) | alpha (r)], both flattened in (key head, j) order)."""
        hp, p = self.hp, f"blk.{il}."
        n, Hk, Hv = x.shape[0], hp.ssm_k_heads, hp.ssm_v_heads
        if p + "ssm_ba.weight" not in self.W:
            return self.mm(p + "ssm_beta.weight", x), self.mm(p + "ssm_alpha.weight", x)
        r = Hv // Hk
        ba = self.mm(p + "ssm_ba.weight", x).reshape(n, Hk, 2 * r)
        b, a = ba[..., :r].reshape(n, Hv), ba[..., r:].reshape(n, Hv)
        return (a, b) if self.var.ba == "alpha_beta" else (b, a)

    def delta_net(self, il: int, x: np.ndarray, cache: RecurrentCache) -> np.ndarray:
        hp, p, var = self.hp, f"blk.{il}.", self.var
        n, S, Hk, Hv = x.shape[0], hp.ssm_state, hp.ssm_k_heads, hp.ssm_v_heads
        qkv, z = self.qkvz(il, x)                                                      # (n, C), (n, Hv, S)
        b, a = self.beta_alpha(il, x)                                                  # (n, Hv) each
        beta = _sigmoid(b)
        g = _softplus(a + self.W[p + "ssm_dt.bias"]) * self.W[p + "ssm_a"]
        w = self.W[p + "ssm_conv1d.weight"]                                            # (C, K)
        if var.conv == "reversed":
            w = w[:, ::-1]
        key_of = np.arange(Hv) % Hk if self._v_heads == "tiled" else np.arange(Hv) // (Hv // Hk)
        norm_w = self.W[p + "ssm_norm.weight"]
        window, M = cache.state()
        out = np.zeros((n, Hv, S))
        for t in range(n):
            window = np.concatenate([window, qkv[t:t + 1]])                            # (K, C)
            c = _silu(np.einsum("kc,ck->c", window, w))
            window = window[1:]
            q = c[: Hk * S].reshape(Hk, S)
            k = c[Hk * S: 2 * Hk * S].reshape(Hk, S)
            v = c[2 * Hk * S:].reshape(Hv, S)
            q = q / np.sqrt(np.sum(q * q, axis=-1, keepdims=True) + hp.eps)
            k = k / np.sqrt(np.sum(k * k, axis=-1, keepdims=True) + hp.eps)
            q, k = q[key_of], k[key_of]                                                # (Hv, S)
            M = M * np.exp(g[t])[:, None, None]
            delta = (v - np.einsum("hij,hi->hj", M, k)) * beta[t][:, None]
            M = M + k[:, :, None] * delta[:, None, :]
            o = np.einsum("hij,hi->hj", M, q)
            out[t] = o / np.sqrt(S)    # (invisible through the norm below, but as the kernel does)
            cache.add(window, M)
        o = out / np.sqrt(np.mean(out * out, axis=-1, keepdims=True) + hp.eps) * norm_w * _silu(z)
        return self.mm(p + "ssm_out.weight", o.reshape(n, Hv * S))

    def moe(self, il: int, y: np.ndarray) -> np.ndarray:
        hp, p = self.hp, f"blk.{il}."
        logits = self.mm(p + "ffn_gate_inp.weight", y)                                 # (n, E)
        z = np.exp(logits - logits.max(axis=1, keepdims=True))
        s = z / z.sum(axis=1, keepdims=True)
        chosen = np.argsort(-s, axis=1, kind="stable")[:, : hp.n_expert_used]
        w = np.take_along_axis(s, chosen, axis=1)
        w = w / np.maximum(w.sum(axis=1, keepdims=True), 6.103515625e-5)
        if hp.n_expert_used < hp.n_expert:      # k-th minus (k+1)-th probability
            ss = -np.sort(-s, axis=1)
            self.margin = np.minimum(self.margin, ss[:, hp.n_expert_used - 1] - ss[:, hp.n_expert_used])
        gate, up, down = (self.W[p + f"ffn_{n}_exps.weight"] for n in ("gate", "up", "down"))
        f16 = self.var.act_f16 and (p + "ffn_gate_exps.weight") in self.f16
        out = np.zeros_like(y)
        for row in range(y.shape[0]):
            yr = _f16(y[row]) if f16 else y[row]
            for e, we in zip(chosen[row], w[row]):
                a = _silu(gate[e] @ yr) * (up[e] @ yr)
                out[row] += we * (down[e] @ (_f16(a) if f16 else a))
        if p + "ffn_up_shexp.weight" in self.W:
            sh = self.swiglu(p, "_shexp", y)
            if self.var.shexp_gate:
                gname = p + "ffn_gate_inp_shexp.weight"
                yg = _f16(y) if self.var.act_f16 and gname in self.f16 else y
                sh = sh * _sigmoid(yg @ self.W[gname].reshape(-1))[:, None]
            out = out + sh
        return out

    def block(self, il: int, x: np.ndarray, pos: np.ndarray, cache) -> np.ndarray:
        p = f"blk.{il}."
        xn = self.rms(x, p + "attn_norm.weight")
        if il < self.hp.n_layer and self.hp.recurrent[il]:
            x = x + self.delta_net(il, xn, cache)
        else:
            x = x + self.attention(il, xn, pos, cache)
        y = self.rms(x, p + "post_attention_norm.weight")
        return x + (self.moe(il, y) if self.hp.moe else self.swiglu(p, "", y))

    # -- caches -------------------------------------------------------------------------
    def trunk_cache(self) -> list:
        hp = self.hp
        C = 2 * hp.ssm_k_heads * hp.ssm_state + hp.ssm_v_heads * hp.ssm_state
        return [RecurrentCache(np.zeros((hp.ssm_conv - 1, C)), np.zeros((hp.ssm_v_heads, hp.ssm_state, hp.ssm_state)),
                               rollback=self.var.rollback) if r else KVCache() for r in hp.recurrent]
