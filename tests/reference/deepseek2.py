"""An independent numpy reference of llama.cpp's ``deepseek2`` forward pass (GLM-4.7-Flash: MLA
attention, a dense lead, routed + shared experts) and of its NextN step, written from the
architecture and upstream's graph conventions (docs/mla.md sections 2-3), not from this project's C++.

Numerics are those of reference/glm4moe.py (float64; f16 weights widened exactly; the f16 cache;
f16-rounded activations into f16 products; the CPU flash-attention kernel's f16 V accumulator),
whose skeleton it reuses: the trunk loop, the NextN step, the caches and ``replay``.  What differs:

attention (MLA, absorbed, as the graph computes it whenever the file has both MLA lengths)::

    q      = attn_q_b @ (rms(attn_q_a @ x) * attn_q_a_norm)      # per head [q_nope (dn) | q_pe (dr)]
    kv     = attn_kv_a_mqa @ x = [c_raw (r) | k_pe (dr)];  c = rms(c_raw) * attn_kv_a_norm
    q_pe, k_pe rotated: NORM rope (adjacent pairs), n_dims = dr; k_pe is one key shared by all heads
    qa_h   = attn_k_b[h] @ q_nope_h                               # (r, dn) @ (dn,): the absorbed key
    cache  K = f16([c | k_pe]);  V = K[:, :r]
    o_h    = attn_v_b[h] @ softmax(kq_scale * [qa_h | q_pe_h] . K) @ V
    out    = attn_output @ concat_h(o_h)

    kq_scale = mscale^2 / sqrt(dn + dr)   (key_length_mla, not r + dr), with
    mscale = attn_factor * (1 + 0.1 ln(1/freq_scale)) * (1 + 0.1 yarn_log_mul ln(1/freq_scale))

block::

    x = x + attention(rms(x) * attn_norm)
    y = rms(x) * ffn_norm
    x = x + (swiglu(y) if il < n_dense_lead else moe(y) + shared_expert(y))

moe: s = sigmoid or softmax(ffn_gate_inp @ y) (expert_gating_func; absent or 0: sigmoid for a
47/48-layer trunk with 154880 tokens, else softmax); with expert groups only the top
expert_group_used_count groups (each scored by the sum of its two best biased scores) stay
eligible; the top n_used of s + exp_probs_b are chosen; weights as in glm4moe.

The trunk hands the NextN block rms(x) * output_norm; the NextN step is glm4moe's (embedding half
first in eh_proj's input), with this block.
"""
from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np

from . import glm4moe as _g
from .glm4moe import (CATEGORIES, KVCache, ProvenanceError, ReplayResult, RowError, _f16,
                      _fa_f16_accumulator, _sigmoid, _silu, rel_err, replay)

__all__ = ["HParams", "Variant", "KVCache", "Reference", "load_gguf", "replay", "rel_err", "ProvenanceError",
           "ReplayResult", "RowError", "CATEGORIES"]


# --- model description ----------------------------------------------------------------

@dataclass(frozen=True)
class HParams:
    n_vocab: int
    n_embd: int
    n_layer: int                 # trunk layers (block_count - nextn_predict_layers)
    n_layer_nextn: int
    n_head: int
    q_lora_rank: int             # 0: a "lite" trunk with attn_q (never with a NextN block)
    kv_lora_rank: int            # r
    qk_nope: int                 # dn = key_length_mla - n_rot
    n_rot: int                   # dr
    v_head_dim: int              # dv = value_length_mla
    rope_base: float
    eps: float
    n_dense_lead: int
    n_expert: int
    n_expert_used: int
    n_expert_shared: int
    n_expert_groups: int
    n_group_used: int
    gating: str                  # "softmax" or "sigmoid" (after llama.cpp's fallback)
    expert_weights_norm: bool
    expert_weights_scale: float
    # rope and attention scale as llama_context resolves them (llama-context.cpp:170-214)
    freq_scale: float
    ext_factor: float
    attn_factor: float           # cparams.yarn_attn_factor: ggml_rope_ext's attn_factor
    yarn_log_mul: float          # after deepseek2's /0.1
    n_ctx_orig: int
    beta_fast: float = 32.0
    beta_slow: float = 1.0


@dataclass(frozen=True)
class Variant:
    """Switches for deliberately different (broken, or other-convention) references.

    The defaults are the upstream llama.cpp conventions."""

    concat: str = "e_h"           # "h_e": the two halves of eh_proj's input swapped
    trunk_h: str = "post_norm"    # "pre_norm": hand the MTP block the state before output_norm
    mtp_h: str = "post_norm"      # "pre_norm": feed back the state before shared_head_norm
    rope: str = "norm"            # "neox": pairs (i, i + dr/2) instead of adjacent ones
    rope_dims: str = "pe"         # "first": rotate each q head's first dr dims (the rope part's offset forgotten)
    kv_norm: bool = True          # False: the latent not normalised (attn_kv_a_norm ignored)
    q_a_norm: bool = True         # False: attn_q_a_norm skipped
    scale: str = "dk"             # "r_dr": 1/sqrt(r + dr), the cached row's width, instead of key_length_mla
    kb_vb: str = "converter"      # "swapped": attn_k_b and attn_v_b exchanged (needs dn == dv)
    bias_in_weights: bool = False # True: exp_probs_b also added to the chosen experts' weights
    groups: bool = True           # False: expert groups ignored
    kv_f16: bool = True           # round the cached latent and rope key to f16
    attn: str = "ggml_cpu"        # "exact": float64 softmax attention (no f16 accumulator emulation)
    act_f16: bool = True          # round the activation of a product with an f16 weight to f16


def _get_mscale(scale: float, mscale: float) -> float:
    return 1.0 if scale <= 1.0 else 0.1 * mscale * np.log(scale) + 1.0


def read_weights(r) -> tuple[dict[str, np.ndarray], set[str]]:
    """float64 weights (numpy layout: rows = output features) and the names of the f16 ones, from a
    gguf.GGUFReader (f32 and f16 tensors only)."""
    import gguf

    W: dict[str, np.ndarray] = {}
    f16: set[str] = set()
    for t in r.tensors:
        shape = tuple(int(x) for x in reversed(t.shape.tolist()))
        if t.tensor_type == gguf.GGMLQuantizationType.F32:
            arr = np.asarray(t.data, dtype=np.float64)
        elif t.tensor_type == gguf.GGMLQuantizationType.F16:
            arr = np.asarray(t.data, dtype=np.float16).astype(np.float64)
            f16.add(t.name)
        else:
            raise ValueError(f"{t.name}: type {t.tensor_type.name} is not supported by the reference")
        W[t.name] = arr.reshape(shape)
    return W, f16


def rope_scaling(kv, a: str, log_mul: float, deepseek2_mscale: bool) -> dict:
    """freq_scale, ext_factor, attn_factor and n_ctx_orig as llama_context resolves them with default
    context parameters (llama-context.cpp:164-214), for a file whose yarn_log_multiplier the loader
    read as log_mul (after its /0.1; 0 when it does not read the key).  deepseek2_mscale: llama.cpp's
    DEEPSEEK2 special case (mscale = mscale_all_dim), which makes the YaRN ratio 1; the other MLA
    architectures take mscale = 1."""
    # (llama-context.cpp's resolution; the ds_yarn flavour replays a YaRN file against it)
    scaling = kv(a + "rope.scaling.type", "linear")
    if scaling == "longrope":
        raise ValueError("longrope is not modelled")
    factor = float(kv(a + "rope.scaling.factor", 0.0) or 0.0)
    freq_scale = 1.0 if scaling == "none" or factor == 0.0 else 1.0 / factor
    ext_factor = 1.0 if scaling == "yarn" else 0.0
    attn_factor = 1.0
    if ext_factor != 0.0:
        f = 1.0 / freq_scale
        if log_mul != 0.0:
            mscale = log_mul if deepseek2_mscale and log_mul != 1.0 else 1.0
            attn_factor = _get_mscale(f, mscale) / _get_mscale(f, log_mul)
        else:
            attn_factor = _get_mscale(f, 1.0)
        attn_factor *= 1.0 / (1.0 + 0.1 * np.log(f))
    attn_factor *= float(kv(a + "rope.scaling.attn_factor", 1.0))
    n_ctx_train = int(kv(a + "context_length"))
    n_ctx_orig = int(kv(a + "rope.scaling.original_context_length", 0) or 0) or n_ctx_train
    return dict(freq_scale=freq_scale, ext_factor=ext_factor, attn_factor=attn_factor, n_ctx_orig=n_ctx_orig)


def load_gguf(path: str | Path) -> tuple[HParams, dict[str, np.ndarray], set[str]]:
    """Hyper-parameters, float64 weights (numpy layout: rows = output features) and the names of
    the tensors stored as f16, read from a deepseek2 GGUF file."""
    import gguf

    r = gguf.GGUFReader(str(path))

    def kv(key, default=None):
        f = r.fields.get(key)
        return default if f is None else f.contents()

    arch = kv("general.architecture")
    if arch != "deepseek2":
        raise ValueError(f"{path}: architecture {arch!r}, expected 'deepseek2'")
    a = arch + "."
    if kv(a + "attention.key_length_mla") is None or kv(a + "attention.value_length_mla") is None:
        raise ValueError("the reference models the absorbed MLA graph only (a file with both MLA lengths)")
    blocks = int(kv(a + "block_count"))
    nextn = int(kv(a + "nextn_predict_layers", 0) or 0)
    n_layer = blocks - nextn
    W, f16 = read_weights(r)

    # the loader's vocabulary size (vocab_size, else the token list) keys the gating fallback
    n_vocab = int(kv(a + "vocab_size", 0) or 0) or len(r.fields["tokenizer.ggml.tokens"].data)
    gating = int(kv(a + "expert_gating_func", 0) or 0)
    if gating == 0:
        gating = 2 if n_layer in (47, 48) and n_vocab == 154880 else 1
    if gating not in (1, 2):
        raise ValueError(f"expert_gating_func {gating} is not modelled")

    log_mul = float(kv(a + "rope.scaling.yarn_log_multiplier", 0.0) or 0.0) / 0.1
    n_rot = int(kv(a + "rope.dimension_count"))
    hp = HParams(**mla_fields(kv, a, n_vocab, n_layer, nextn, n_rot), gating="sigmoid" if gating == 2 else "softmax",
                 yarn_log_mul=log_mul, **rope_scaling(kv, a, log_mul, deepseek2_mscale=True))
    if float(kv(a + "attention.temperature_scale", 0.0) or 0.0) != 0.0:
        raise ValueError("attention temperature scaling is not modelled")
    return hp, W, f16


def mla_fields(kv, a: str, n_vocab: int, n_layer: int, nextn: int, n_rot: int) -> dict:
    """The HParams fields every MLA architecture reads alike."""
    return dict(
        n_vocab=n_vocab, n_embd=int(kv(a + "embedding_length")), n_layer=n_layer, n_layer_nextn=nextn,
        n_head=int(kv(a + "attention.head_count")),
        q_lora_rank=int(kv(a + "attention.q_lora_rank", 0) or 0), kv_lora_rank=int(kv(a + "attention.kv_lora_rank")),
        qk_nope=int(kv(a + "attention.key_length_mla")) - n_rot, n_rot=n_rot,
        v_head_dim=int(kv(a + "attention.value_length_mla")),
        rope_base=float(kv(a + "rope.freq_base", 10000.0)), eps=float(kv(a + "attention.layer_norm_rms_epsilon")),
        n_dense_lead=int(kv(a + "leading_dense_block_count", 0) or 0),
        n_expert=int(kv(a + "expert_count", 0) or 0), n_expert_used=int(kv(a + "expert_used_count", 0) or 0),
        n_expert_shared=int(kv(a + "expert_shared_count", 0) or 0),
        n_expert_groups=int(kv(a + "expert_group_count", 0) or 0),
        n_group_used=int(kv(a + "expert_group_used_count", 0) or 0),
        expert_weights_norm=bool(kv(a + "expert_weights_norm", False)),
        expert_weights_scale=float(kv(a + "expert_weights_scale", 0.0) or 0.0))


# --- the forward pass ------------------------------------------------------------------------

class Reference(_g.Reference):
    """glm4moe's Reference with deepseek2's attention, rope, FFN norm and routing.  Same interface:
    ``trunk_cache()``, ``mtp_cache()``, ``trunk(cache, tokens, pos)``, ``nextn(cache, tokens, h_in, pos)``."""

    def __init__(self, hp: HParams, W: dict[str, np.ndarray], f16: set[str] = frozenset(), variant: Variant = Variant()):
        super().__init__(hp, W, f16, variant)  # type: ignore[arg-type]
        dk = hp.qk_nope + hp.n_rot
        ln_inv = np.log(1.0 / hp.freq_scale)
        mscale = hp.attn_factor * (1.0 + 0.1 * ln_inv) * (1.0 + 0.1 * hp.yarn_log_mul * ln_inv)
        width = dk if variant.scale == "dk" else hp.kv_lora_rank + hp.n_rot
        self.kq_scale = mscale * mscale / np.sqrt(width)
        if variant.kb_vb == "swapped" and hp.qk_nope != hp.v_head_dim:
            raise ValueError("swapping attn_k_b and attn_v_b needs qk_nope == v_head_dim")

    def with_variant(self, **kw) -> "Reference":
        return Reference(self.hp, self.W, self.f16, replace(self.var, **kw))

    def rope(self, x: np.ndarray, pos: np.ndarray, mode: str | None = None) -> np.ndarray:
        """x (n, heads, >= dr) rotated over its first dr dims at positions pos (n,) as ggml_rope_ext
        does (rope_yarn); mode "norm" (adjacent pairs) or "neox", by default the variant's."""
        hp, dr = self.hp, self.hp.n_rot
        i = np.arange(dr // 2)
        theta_ext = pos[:, None].astype(np.float64) * hp.rope_base ** (-2.0 * i[None, :] / dr)   # (n, dr/2)
        theta = hp.freq_scale * theta_ext
        mscale = hp.attn_factor
        if hp.ext_factor != 0.0:
            def corr_dim(beta):
                return dr * np.log(hp.n_ctx_orig / (beta * 2 * np.pi)) / (2 * np.log(hp.rope_base))
            lo = max(0.0, np.floor(corr_dim(hp.beta_fast)))
            hi = min(dr - 1.0, np.ceil(corr_dim(hp.beta_slow)))
            ramp = (1.0 - np.clip((i - lo) / max(0.001, hi - lo), 0.0, 1.0)) * hp.ext_factor
            theta = theta * (1.0 - ramp) + theta_ext * ramp
            mscale *= 1.0 + 0.1 * np.log(1.0 / hp.freq_scale)
        cos, sin = np.cos(theta)[:, None, :] * mscale, np.sin(theta)[:, None, :] * mscale
        out = x.copy()
        if (mode or self.var.rope) == "norm":
            x0, x1 = x[..., 0:dr:2], x[..., 1:dr:2]
            out[..., 0:dr:2] = x0 * cos - x1 * sin
            out[..., 1:dr:2] = x0 * sin + x1 * cos
        else:
            x0, x1 = x[..., : dr // 2], x[..., dr // 2: dr]
            out[..., : dr // 2] = x0 * cos - x1 * sin
            out[..., dr // 2: dr] = x0 * sin + x1 * cos
        return out

    def attention(self, il: int, x: np.ndarray, pos: np.ndarray, cache: KVCache) -> np.ndarray:
        hp, p, var = self.hp, f"blk.{il}.", self.var
        n, H = x.shape[0], hp.n_head
        dn, dr, r = hp.qk_nope, hp.n_rot, hp.kv_lora_rank
        qa = None
        if p + "attn_q_a.weight" in self.W:
            qa = self.mm(p + "attn_q_a.weight", x)
            if var.q_a_norm:
                qa = self.rms(qa, p + "attn_q_a_norm.weight")
            q = self.mm(p + "attn_q_b.weight", qa)
        else:                                                   # a lite trunk (no NextN block)
            q = self.mm(p + "attn_q.weight", x)
        q = q.reshape(n, H, dn + dr)
        if var.rope_dims == "first":
            q = np.concatenate([self.rope(q[..., :dr], pos), q[..., dr:]], axis=-1)
            q_nope, q_pe = q[..., :dn], q[..., dn:]
        else:
            q_nope, q_pe = q[..., :dn], self.rope(q[..., dn:], pos)
        kv = self.mm(p + "attn_kv_a_mqa.weight", x)
        c = self.rms(kv[:, :r], p + "attn_kv_a_norm.weight") if var.kv_norm else kv[:, :r]
        k_pe = self.rope(kv[:, None, r:], pos)                  # (n, 1, dr): one rope key for all heads

        kb, vb = p + "attn_k_b.weight", p + "attn_v_b.weight"
        if var.kb_vb == "swapped":
            wk, wv = self.W[vb].transpose(0, 2, 1), self.W[kb].transpose(0, 2, 1)
            kb, vb = vb, kb
        else:
            wk, wv = self.W[kb], self.W[vb]                     # (H, r, dn), (H, dv, r)
        f16_in = lambda name, t: _f16(t) if var.act_f16 and name in self.f16 else t  # noqa: E731
        qa_abs = np.einsum("hrk,nhk->nhr", wk, f16_in(kb, q_nope))                  # (n, H, r)
        Q = np.concatenate([qa_abs, q_pe], axis=-1)                                  # (n, H, r + dr)
        K = np.concatenate([c[:, None, :], k_pe], axis=-1)                           # (n, 1, r + dr)
        if var.kv_f16:
            K = _f16(K)
        cache.add(pos, K, K[..., :r])
        Kc = np.repeat(cache.k, H, axis=1)                                           # (m, H, r + dr)
        Vc = np.repeat(cache.v, H, axis=1)                                           # (m, H, r)
        visible = self.restrict(il, x, qa, pos, cache, cache.pos[None, :] <= pos[:, None])
        # the f16-accumulator emulation covers batches under 64 rows; longer ones (prompts) use the exact softmax
        if var.attn == "ggml_cpu" and var.kv_f16 and n < 64:
            o_lat = _fa_f16_accumulator(Q, Kc, Vc, visible, self.kq_scale)
        else:
            s = np.einsum("nhd,mhd->hnm", Q, Kc) * self.kq_scale
            s = np.where(visible[None], s, -np.inf)
            s = np.exp(s - s.max(axis=-1, keepdims=True))
            s /= s.sum(axis=-1, keepdims=True)
            o_lat = np.einsum("hnm,mhd->nhd", s, Vc)
        o = np.einsum("hvr,nhr->nhv", wv, f16_in(vb, o_lat))                         # (n, H, dv)
        return self.mm(p + "attn_output.weight", o.reshape(n, H * hp.v_head_dim))

    def restrict(self, il: int, x: np.ndarray, qa: np.ndarray | None, pos: np.ndarray, cache: KVCache,
                 visible: np.ndarray) -> np.ndarray:
        """The cells (n, m) each row attends to, given the causal ones: all of them (DSA references
        choose a subset).  x is the attention input, qa the normalised q latent, and the cache already
        holds the rows."""
        return visible

    def moe(self, il: int, y: np.ndarray) -> np.ndarray:
        hp, p, var = self.hp, f"blk.{il}.", self.var
        logits = self.mm(p + "ffn_gate_inp.weight", y)                               # (n, E)
        if hp.gating == "sigmoid":
            s = _sigmoid(logits)
        else:
            z = np.exp(logits - logits.max(axis=1, keepdims=True))
            s = z / z.sum(axis=1, keepdims=True)
        bias = self.W.get(p + "exp_probs_b.bias", np.zeros(hp.n_expert))
        sel = s + bias
        G = hp.n_expert_groups
        if var.groups and G > 1:                # keep the top n_group_used groups, scored by their 2 best
            per = sel.reshape(len(sel), G, hp.n_expert // G)
            score = -np.sort(-per, axis=2)[:, :, :2].sum(axis=2)                     # (n, G)
            keep = np.argsort(-score, axis=1, kind="stable")[:, : hp.n_group_used]
            mask = np.full_like(per, -np.inf)
            np.put_along_axis(mask, keep[:, :, None], 0.0, axis=1)
            sel = (per + mask).reshape(len(sel), hp.n_expert)
            gs = -np.sort(-score, axis=1)       # how close the group choice was
            self.margin = np.minimum(self.margin, gs[:, hp.n_group_used - 1] - gs[:, hp.n_group_used])
        chosen = np.argsort(-sel, axis=1, kind="stable")[:, : hp.n_expert_used]
        w = np.take_along_axis(s + bias if var.bias_in_weights else s, chosen, axis=1)
        if hp.expert_weights_norm:
            w = w / np.maximum(w.sum(axis=1, keepdims=True), 6.103515625e-5)
        if hp.expert_weights_scale not in (0.0, 1.0):
            w = w * hp.expert_weights_scale
        if hp.n_expert_used < hp.n_expert:      # k-th minus (k+1)-th selection score
            ss = -np.sort(-sel, axis=1)
            with np.errstate(invalid="ignore"):
                gap = ss[:, hp.n_expert_used - 1] - ss[:, hp.n_expert_used]
            self.margin = np.minimum(self.margin, np.where(np.isnan(gap), np.inf, gap))
        gate, up, down = (self.W[p + f"ffn_{n}_exps.weight"] for n in ("gate", "up", "down"))
        f16 = self.var.act_f16 and (p + "ffn_gate_exps.weight") in self.f16
        out = np.zeros_like(y)
        for row in range(y.shape[0]):
            yr = _f16(y[row]) if f16 else y[row]
            for e, we in zip(chosen[row], w[row]):
                a = _silu(gate[e] @ yr) * (up[e] @ yr)
                out[row] += we * (down[e] @ (_f16(a) if f16 else a))
        # deepseek2 adds the shared experts unconditionally (inspect requires expert_shared_count >= 1)
        return out + self.swiglu(p, "_shexp", y)

    def block(self, il: int, x: np.ndarray, pos: np.ndarray, cache: KVCache) -> np.ndarray:
        p = f"blk.{il}."
        x = x + self.attention(il, self.rms(x, p + "attn_norm.weight"), pos, cache)
        y = self.rms(x, p + "ffn_norm.weight")
        f = self.swiglu(p, "", y) if il < self.hp.n_dense_lead else self.moe(il, y)
        return x + f
