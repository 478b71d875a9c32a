"""An independent numpy reference of llama.cpp's ``glm4moe`` forward pass and of
its NextN (multi-token prediction) step, written from the architecture (GLM-4.5 /
4.6 as published, and upstream llama.cpp's graph conventions) and not from this
project's C++.

Everything is computed in float64.  Weights are read back from the GGUF file
itself (f16 tensors are widened exactly), so a reference for an f16 file uses
the f16-rounded weights.  Two storage effects of llama.cpp's default context
are modelled because they are not numerical noise but part of what is computed:

* the KV cache holds K and V in f16 (``llama_context_default_params``:
  ``type_k = type_v = GGML_TYPE_F16``), so cached K/V are rounded to f16;
* ggml's CPU ``mul_mat`` converts the activation operand to the weight's
  ``vec_dot_type`` -- f16 for f16 weights -- so with ``act_f16`` the input of a
  product with an f16 weight is rounded to f16 first.

* llama.cpp's CPU flash attention (``flash_attn_type`` AUTO resolves to on for
  the CPU backend) computes a batch of fewer than 64 query rows with the
  ``one_chunk`` kernel: Q is rounded to f16, and ``sum_j p_j v_j`` is accumulated
  with an online softmax in an f16 buffer, one rounding per key, in cache order.
  With ``Variant.attn == "ggml_cpu"`` (the default) the reference does the same;
  with ``"exact"`` it computes attention in float64.  Batches of >= 64 rows
  (the tiled kernel) accumulate in f32 and are computed exactly either way.  The
  split-KV kernel (one query row over >= 512 cache cells) is not modelled: keep
  test contexts below 512 positions.

What remains between the reference and the engine is accumulation order and
f32 arithmetic, and occasional one-ulp f16 rounding flips caused by it.

The model, per position (x a row vector of n_embd):

trunk::

    x = token_embd[t]
    for each layer il < n_layer:
        a  = attention(rms(x) * attn_norm)                    # see below
        x  = x + a
        y  = rms(x) * post_attention_norm
        x  = x + (swiglu_ffn(y) if il < n_dense_lead else moe(y) + shared_expert(y))
    h      = rms(x) * output_norm          # the state handed to the NextN block
    logits = output @ h                    # output.weight, or token_embd when the file has none

NextN step for an entry (token t at position p, state h_in)::

    x = eh_proj @ concat(rms(E[t]) * enorm, rms(h_in) * hnorm)   # E: nextn.embed_tokens or token_embd
    x = one decoder block (attention with its own KV cache, MoE + shared expert) on x
    h_out  = rms(x) * shared_head_norm     # (fallback output_norm); fed back for the next draft
    logits = (shared_head_head or output) @ h_out

attention: q/k/v = W x + b; optional per-head RMS norm of q and k (attn_q_norm,
attn_k_norm over head_dim); NeoX RoPE on the first n_rot dims of every head
(pairs (i, i + n_rot/2), angle p * base^(-2i/n_rot)); grouped-query attention
(query head j reads kv head j // (n_head / n_head_kv)); causal by position;
scale 1/sqrt(head_dim); attn_output without bias.

moe: s = sigmoid(ffn_gate_inp @ y); the top n_expert_used experts of
s + exp_probs_b are chosen (the bias only for choosing); their weights are the
unbiased s, divided by their sum if expert_weights_norm, times
expert_weights_scale (ignored when 0 or 1, as upstream); each expert is
down @ (silu(gate @ y) * (up @ y)).  The shared expert is the same SwiGLU with
the *_shexp weights; with no shared expert it contributes nothing.
"""
from __future__ import annotations

from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np

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
    n_head_kv: int
    head_dim: int
    n_rot: int
    rope_base: float
    eps: float
    n_dense_lead: int
    n_expert: int
    n_expert_used: int
    n_expert_shared: int
    expert_weights_norm: bool
    expert_weights_scale: float


@dataclass(frozen=True)
class Variant:
    """Switches for deliberately different (broken, or other-convention) references.

    The defaults are the upstream llama.cpp conventions."""

    concat: str = "e_h"           # "h_e": the two halves of eh_proj's input swapped
    trunk_h: str = "post_norm"    # "pre_norm": hand the MTP block the state before output_norm
    mtp_h: str = "post_norm"      # "pre_norm": feed back the state before shared_head_norm (vLLM's convention)
    rope: str = "neox"            # "norm": GPT-J style adjacent pairs (2i, 2i+1)
    no_shexp: str = "zero"        # "silu": what upstream adds when a layer has no shared expert (silu(y))
    qk_norm: bool = True          # False: ignore attn_q_norm / attn_k_norm
    bias_in_weights: bool = False # True: exp_probs_b also added to the chosen experts' weights
    kv_f16: bool = True           # round cached K and V to f16
    attn: str = "ggml_cpu"        # "exact": float64 softmax attention (no f16 accumulator emulation)
    act_f16: bool = True          # round the activation of a product with an f16 weight to f16


def load_gguf(path: str | Path) -> tuple[HParams, dict[str, np.ndarray], set[str]]:
    """Hyper-parameters, float64 weights (numpy layout: rows = output features) and
    the names of the tensors stored as f16, read from a glm4moe GGUF file."""
    import gguf

    r = gguf.GGUFReader(str(path))

    def kv(key, default=None):
        f = r.fields.get(key)
        return default if f is None else f.contents()

    arch = kv("general.architecture")
    if arch != "glm4moe":
        raise ValueError(f"{path}: architecture {arch!r}, expected 'glm4moe'")
    a = arch + "."
    blocks = int(kv(a + "block_count"))
    nextn = int(kv(a + "nextn_predict_layers", 0) or 0)
    n_head = int(kv(a + "attention.head_count"))
    n_embd = int(kv(a + "embedding_length"))
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
    hp = HParams(
        n_vocab=W["token_embd.weight"].shape[0], n_embd=n_embd, n_layer=blocks - nextn, n_layer_nextn=nextn,
        n_head=n_head, n_head_kv=int(kv(a + "attention.head_count_kv", n_head)),
        head_dim=int(kv(a + "attention.key_length", n_embd // n_head)),
        n_rot=int(kv(a + "rope.dimension_count")), rope_base=float(kv(a + "rope.freq_base", 10000.0)),
        eps=float(kv(a + "attention.layer_norm_rms_epsilon")),
        n_dense_lead=int(kv(a + "leading_dense_block_count", 0) or 0),
        n_expert=int(kv(a + "expert_count")), n_expert_used=int(kv(a + "expert_used_count")),
        n_expert_shared=int(kv(a + "expert_shared_count", 0) or 0),
        expert_weights_norm=bool(kv(a + "expert_weights_norm", False)),
        expert_weights_scale=float(kv(a + "expert_weights_scale", 0.0) or 0.0))
    if int(kv(a + "attention.value_length", hp.head_dim)) != hp.head_dim:
        raise ValueError("the reference assumes key_length == value_length")
    return hp, W, f16


# --- numerics ----------------------------------------------------------------------------

def _f16(x: np.ndarray) -> np.ndarray:
    return x.astype(np.float16).astype(np.float64)


def _silu(x: np.ndarray) -> np.ndarray:
    return x / (1.0 + np.exp(-x))


def _sigmoid(x: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-x))


def _fa_f16_accumulator(q: np.ndarray, K: np.ndarray, V: np.ndarray, visible: np.ndarray, scale: float) -> np.ndarray:
    """Softmax attention as ggml's CPU flash-attention one_chunk kernel computes it
    with an f16 KV cache: Q rounded to f16, scores in f32, and an online softmax
    whose V accumulator is an f16 vector rounded after every key (keys in cache
    order, invisible keys skipped).  q (n, H, d); K (m, H, d); V (m, H, dv); visible (n, m).

    The kernel's per-key update is: on a new maximum M' of the scores,
    acc = f16(acc * exp(M - M')); then acc = f16(acc + v * exp(s - M')), and
    S = S * exp(M - M') + exp(s - M').  Both factors follow from the running
    maximum alone, so they are computed for all keys at once; only the f16
    accumulator is a loop over the keys.  V may be narrower than Q and K (MLA: V is the latent, K
    the latent and the rope key)."""
    n, H, d = q.shape
    dv = V.shape[-1]
    s = np.einsum("nhd,mhd->nhm", _f16(q), K).astype(np.float32) * np.float32(scale)
    s = np.where(visible[:, None, :], s, np.float32(-np.inf))
    m_last = int(np.max(np.nonzero(visible.any(axis=0))[0])) + 1          # keys after it are invisible to all rows
    s = s[:, :, :m_last]
    run_max = np.maximum.accumulate(s, axis=2)
    prev_max = np.concatenate([np.full((n, H, 1), -np.inf, np.float32), run_max[:, :, :-1]], axis=2)
    with np.errstate(invalid="ignore"):
        ms = np.exp(prev_max - run_max)                                    # 1 unless a new maximum; 0 at the first key
        vs = np.exp(s - run_max)                                           # 0 for invisible keys
    ms = np.where(np.isnan(ms), np.float32(1.0), ms).astype(np.float32)  # (-inf) - (-inf): nothing seen yet
    vs = np.where(np.isnan(vs), np.float32(0.0), vs).astype(np.float32)
    # the kernel's f32 running sum S equals sum_j exp(s_j - M_final) up to f32 rounding, far below the f16 one
    S = np.exp(s.astype(np.float64) - run_max[:, :, -1:].astype(np.float64)).sum(axis=2)
    Vf = V[:m_last].astype(np.float16).astype(np.float32)                 # (m, H, dv)
    rescale = (ms != 1.0).any(axis=(0, 1))
    acc = np.zeros((n, H, dv), np.float32)
    for j in range(m_last):
        if rescale[j]:
            acc = (acc * ms[:, :, j, None]).astype(np.float16).astype(np.float32)
        acc = (acc + Vf[j][None] * vs[:, :, j, None]).astype(np.float16).astype(np.float32)
    return acc.astype(np.float64) / S[..., None]


def rotate_pairs(x: np.ndarray, n_rot: int, cos: np.ndarray, sin: np.ndarray, neox: bool) -> np.ndarray:
    """x with its first n_rot dims rotated by the angles' cos and sin: pairs (i, i + n_rot/2) (NeoX)
    or (2i, 2i + 1)."""
    out = x.copy()
    if neox:
        x0, x1 = x[..., : n_rot // 2], x[..., n_rot // 2: n_rot]
        out[..., : n_rot // 2] = x0 * cos - x1 * sin
        out[..., n_rot // 2: n_rot] = x0 * sin + x1 * cos
    else:
        x0, x1 = x[..., 0:n_rot:2], x[..., 1:n_rot:2]
        out[..., 0:n_rot:2] = x0 * cos - x1 * sin
        out[..., 1:n_rot:2] = x0 * sin + x1 * cos
    return out


def rel_err(got: np.ndarray, ref: np.ndarray) -> float:
    """max |got - ref| / max |ref| (over one row or a stack of rows)."""
    scale = float(np.max(np.abs(ref)))
    return float(np.max(np.abs(np.asarray(got, np.float64) - ref))) / (scale if scale > 0 else 1.0)


@dataclass
class KVCache:
    """One attention layer's cache: positions and K/V rows (n, n_head_kv, head_dim)."""

    pos: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))
    k: np.ndarray | None = None
    v: np.ndarray | None = None

    def add(self, pos: np.ndarray, k: np.ndarray, v: np.ndarray) -> None:
        if np.intersect1d(self.pos, pos).size:
            raise AssertionError(f"positions {np.intersect1d(self.pos, pos)} are already cached")
        self.pos = np.concatenate([self.pos, pos])
        self.k = k if self.k is None else np.concatenate([self.k, k])
        self.v = v if self.v is None else np.concatenate([self.v, v])

    def forget(self, p0: int) -> None:
        keep = self.pos < p0
        self.pos = self.pos[keep]
        if self.k is not None:
            self.k, self.v = self.k[keep], self.v[keep]

    def __len__(self) -> int:
        return int(self.pos.size)


class Reference:
    """The forward pass.  ``trunk_cache()``/``mtp_cache()`` make empty caches;
    ``trunk(cache, tokens, pos)`` and ``nextn(cache, tokens, h_in, pos)`` evaluate
    one batch of rows (appending them to the cache) and return (logits, h)."""

    def __init__(self, hp: HParams, W: dict[str, np.ndarray], f16: set[str] = frozenset(), variant: Variant = Variant()):
        self.hp, self.W, self.f16, self.var = hp, W, set(f16), variant
        self.il_nextn = hp.n_layer  # the (single) NextN block
        self.margin = np.zeros(0)   # per row of the last batch: see RowError.margin
        # the LM head; a file without output.weight ties it to the token embeddings (as upstream)
        self.output_name = "output.weight" if "output.weight" in W else "token_embd.weight"
        d = hp.n_rot // 2
        self._inv_freq = hp.rope_base ** (-2.0 * np.arange(d) / hp.n_rot)

    def with_variant(self, **kw) -> "Reference":
        return Reference(self.hp, self.W, self.f16, replace(self.var, **kw))

    # -- building blocks ------------------------------------------------------------
    def mm(self, name: str, x: np.ndarray) -> np.ndarray:
        """x (n, in) times weight name (out, in) -> (n, out)."""
        if self.var.act_f16 and name in self.f16:
            x = _f16(x)
        return x @ self.W[name].T

    def rms(self, x: np.ndarray, name: str) -> np.ndarray:
        return x / np.sqrt(np.mean(x * x, axis=-1, keepdims=True) + self.hp.eps) * self.W[name]

    def rope(self, x: np.ndarray, pos: np.ndarray) -> np.ndarray:
        """x (n, heads, head_dim) rotated over its first n_rot dims at positions pos (n,)."""
        n_rot = self.hp.n_rot
        ang = pos[:, None].astype(np.float64) * self._inv_freq[None, :]            # (n, n_rot/2)
        cos, sin = np.cos(ang)[:, None, :], np.sin(ang)[:, None, :]
        return rotate_pairs(x, n_rot, cos, sin, neox=self.var.rope == "neox")

    def attention(self, il: int, x: np.ndarray, pos: np.ndarray, cache: KVCache) -> np.ndarray:
        hp, p = self.hp, f"blk.{il}."
        n, hd = x.shape[0], hp.head_dim
        q = (self.mm(p + "attn_q.weight", x) + self.W[p + "attn_q.bias"]).reshape(n, hp.n_head, hd)
        k = (self.mm(p + "attn_k.weight", x) + self.W[p + "attn_k.bias"]).reshape(n, hp.n_head_kv, hd)
        v = (self.mm(p + "attn_v.weight", x) + self.W[p + "attn_v.bias"]).reshape(n, hp.n_head_kv, hd)
        if self.var.qk_norm and p + "attn_q_norm.weight" in self.W:
            q = self.rms(q, p + "attn_q_norm.weight")
        if self.var.qk_norm and p + "attn_k_norm.weight" in self.W:
            k = self.rms(k, p + "attn_k_norm.weight")
        q, k = self.rope(q, pos), self.rope(k, pos)
        o = self.attend(q, k, v, pos, cache)
        return self.mm(p + "attn_output.weight", o.reshape(n, hp.n_head * hd))

    def attend(self, q: np.ndarray, k: np.ndarray, v: np.ndarray, pos: np.ndarray, cache: KVCache) -> np.ndarray:
        """Causal grouped-query attention of q (n, n_head, hd) over the cache after adding k, v (n,
        n_head_kv, hd) at pos (rounded to f16 as the cache stores them): (n, n_head, hd)."""
        hp = self.hp
        n, hd = q.shape[0], q.shape[-1]
        if self.var.kv_f16:
            k, v = _f16(k), _f16(v)
        cache.add(pos, k, v)
        group = hp.n_head // hp.n_head_kv
        K = np.repeat(cache.k, group, axis=1)                                          # (m, n_head, hd)
        V = np.repeat(cache.v, group, axis=1)
        visible = cache.pos[None, :] <= pos[:, None]                                   # (n, m): causal, by position
        if self.var.attn == "ggml_cpu" and self.var.kv_f16 and n < 64:
            return _fa_f16_accumulator(q, K, V, visible, 1.0 / np.sqrt(hd))
        s = np.einsum("nhd,mhd->hnm", q, K) / np.sqrt(hd)
        s = np.where(visible[None], s, -np.inf)
        s = np.exp(s - s.max(axis=-1, keepdims=True))
        s /= s.sum(axis=-1, keepdims=True)
        return np.einsum("hnm,mhd->nhd", s, V)

    def swiglu(self, prefix: str, suffix: str, y: np.ndarray) -> np.ndarray:
        g = self.mm(f"{prefix}ffn_gate{suffix}.weight", y)
        u = self.mm(f"{prefix}ffn_up{suffix}.weight", y)
        return self.mm(f"{prefix}ffn_down{suffix}.weight", _silu(g) * u)

    def moe(self, il: int, y: np.ndarray) -> np.ndarray:
        hp, p = self.hp, f"blk.{il}."
        s = _sigmoid(self.mm(p + "ffn_gate_inp.weight", y))                            # (n, E)
        chosen = np.argsort(-(s + self.W[p + "exp_probs_b.bias"]), axis=1, kind="stable")[:, : hp.n_expert_used]
        w = np.take_along_axis(s + self.W[p + "exp_probs_b.bias"] if self.var.bias_in_weights else s, chosen, axis=1)
        if hp.expert_weights_norm:
            w = w / np.maximum(w.sum(axis=1, keepdims=True), 6.103515625e-5)
        if hp.expert_weights_scale not in (0.0, 1.0):
            w = w * hp.expert_weights_scale
        if hp.n_expert_used < hp.n_expert:  # how close the choice was: k-th minus (k+1)-th biased score
            sel = -np.sort(-(s + self.W[p + "exp_probs_b.bias"]), axis=1)
            self.margin = np.minimum(self.margin, sel[:, hp.n_expert_used - 1] - sel[:, hp.n_expert_used])
        gate, up, down = (self.W[p + f"ffn_{n}_exps.weight"] for n in ("gate", "up", "down"))
        f16 = self.var.act_f16 and (p + "ffn_gate_exps.weight") in self.f16
        out = np.zeros_like(y)
        for r in range(y.shape[0]):
            yr = _f16(y[r]) if f16 else y[r]
            for e, we in zip(chosen[r], w[r]):
                a = _silu(gate[e] @ yr) * (up[e] @ yr)
                out[r] += we * (down[e] @ (_f16(a) if f16 else a))
        if p + "ffn_gate_shexp.weight" in self.W:
            out += self.swiglu(p, "_shexp", y)
        elif self.var.no_shexp == "silu":
            out += _silu(y)
        return out

    def block(self, il: int, x: np.ndarray, pos: np.ndarray, cache: KVCache) -> np.ndarray:
        p = f"blk.{il}."
        x = x + self.attention(il, self.rms(x, p + "attn_norm.weight"), pos, cache)
        y = self.rms(x, p + "post_attention_norm.weight")
        f = self.swiglu(p, "", y) if il < self.hp.n_dense_lead else self.moe(il, y)
        return x + f

    # -- the two graphs -------------------------------------------------------------------
    def trunk_cache(self) -> list[KVCache]:
        return [KVCache() for _ in range(self.hp.n_layer)]

    def mtp_cache(self) -> KVCache:
        return KVCache()

    def trunk(self, cache: list[KVCache], tokens, pos) -> tuple[np.ndarray, np.ndarray]:
        """Rows tokens at positions pos: (logits (n, n_vocab), h (n, n_embd))."""
        pos = np.asarray(pos, np.int64)
        self.margin = np.full(len(pos), np.inf)
        x = self.W["token_embd.weight"][np.asarray(tokens)]
        for il in range(self.hp.n_layer):
            x = self.block(il, x, pos, cache[il])
        hn = self.rms(x, "output_norm.weight")
        logits = self.mm(self.output_name, hn)
        return logits, (hn if self.var.trunk_h == "post_norm" else x)

    def nextn(self, cache: KVCache, tokens, h_in, pos) -> tuple[np.ndarray, np.ndarray]:
        """NextN rows (tokens, h_in (n, n_embd), pos): (logits, h_out) per row."""
        il, p = self.il_nextn, f"blk.{self.il_nextn}.nextn."
        pos = np.asarray(pos, np.int64)
        self.margin = np.full(len(pos), np.inf)
        emb = self.W.get(p + "embed_tokens.weight", self.W["token_embd.weight"])
        e = self.rms(emb[np.asarray(tokens)], p + "enorm.weight")
        h = self.rms(np.asarray(h_in, np.float64).reshape(len(pos), -1), p + "hnorm.weight")
        x = self.mm(p + "eh_proj.weight", np.concatenate([e, h] if self.var.concat == "e_h" else [h, e], axis=1))
        x = self.block(il, x, pos, cache)
        norm = p + "shared_head_norm.weight" if p + "shared_head_norm.weight" in self.W else "output_norm.weight"
        hn = self.rms(x, norm)
        head = p + "shared_head_head.weight" if p + "shared_head_head.weight" in self.W else self.output_name
        logits = self.mm(head, hn)
        return logits, (hn if self.var.mtp_h == "post_norm" else x)

    def trunk_forward(self, tokens) -> tuple[np.ndarray, np.ndarray]:
        """The whole sequence in one batch from an empty cache: (logits, h) per position."""
        return self.trunk(self.trunk_cache(), tokens, np.arange(len(tokens)))

    def nextn_forward(self, entries) -> tuple[np.ndarray, np.ndarray]:
        """A sequence of cache entries (token, h_in, pos) in one batch from an empty cache."""
        toks, hs, pos = zip(*entries)
        return self.nextn(self.mtp_cache(), list(toks), np.stack(hs), list(pos))


# --- replaying the engine's debug events -----------------------------------------------------

class ProvenanceError(AssertionError):
    """An MTP row's input state is not the state it should be paired with."""


CATEGORIES = ("trunk_logits", "trunk_h", "mtp_logits", "mtp_h")


@dataclass(frozen=True)
class RowError:
    category: str
    err: float            # relative error of the engine's row against the reference
    event: int            # index in the event list
    pos: int
    call_rows: int        # rows in the graph evaluation this row belonged to
    row: int              # its index in that evaluation
    err_vs_row0: float    # error against the reference row 0 of the same evaluation (diagnoses a row mix-up)
    margin: float         # smallest gap, over the row's MoE layers, between the last chosen and the first
                          # unchosen expert's selection score (a near-tie may be broken the other way)


@dataclass
class ReplayResult:
    rows: list[RowError]
    mtp_inputs: dict[str, int]            # MTP rows by the source of h_in: 'trunk', 'draft', 'zero'
    n_calls: dict[str, int]

    def select(self, category: str, batched: bool | None = None) -> list[RowError]:
        """Rows of a category; batched=True/False: only rows of multi-/single-row evaluations."""
        return [r for r in self.rows if r.category == category
                and (batched is None or (r.call_rows > 1) == batched)]

    def max_err(self, category: str, batched: bool | None = None) -> float:
        return max((r.err for r in self.select(category, batched)), default=0.0)

    def worst(self, category: str, batched: bool | None = None) -> RowError | None:
        return max(self.select(category, batched), key=lambda r: r.err, default=None)

    def __str__(self) -> str:
        return ", ".join(f"{c}={self.max_err(c):.2e} (n={len(self.select(c))})" for c in CATEGORIES)


def _groups(events):
    """Consecutive events grouped: row events by (kind, call), other events alone."""
    i = 0
    while i < len(events):
        e = events[i]
        j = i + 1
        if e["kind"] in ("trunk", "mtp"):
            while j < len(events) and events[j]["kind"] == e["kind"] and events[j]["call"] == e["call"]:
                j += 1
        yield i, events[i:j]
        i = j


def replay(ref: Reference, events: list[dict], trunk_h_from: str = "engine") -> ReplayResult:
    """Re-evaluate every recorded batch with the reference, keeping reference KV
    caches in step with the engine's (forgets and resets included), and measure the
    relative error of every recorded output row.  MTP rows are fed the engine's own
    h_in; that h_in is checked to be bit-identical to the engine's trunk state at
    pos-1 (a cache-repair or head entry), the engine's previous MTP output at pos-1
    (a recursive draft), or zeros at position 0 -- anything else raises
    ProvenanceError.  Both caches must stay contiguous from position 0.

    trunk_h_from="reference": MTP rows paired with a trunk state are fed the
    reference's own trunk state at pos-1 instead of the engine's (the trunk ->
    MTP hand-over is then checked end to end, through the MTP outputs)."""
    rows: list[RowError] = []
    sources = {"trunk": 0, "draft": 0, "zero": 0}
    calls = {"trunk": 0, "mtp": 0}
    tcache, mcache = ref.trunk_cache(), ref.mtp_cache()
    eng_trunk_h: dict[int, np.ndarray] = {}     # engine trunk states of cached positions
    eng_trunk_tok: dict[int, int] = {}
    eng_mtp_h: dict[int, np.ndarray] = {}       # engine MTP output states of cached MTP positions
    ref_trunk_h: dict[int, np.ndarray] = {}     # reference trunk states of cached positions
    mtp_kind: dict[int, str] = {}               # what each cached MTP entry was paired with

    def note(cat, got, want, idx, grp, r):
        if got is not None:
            rows.append(RowError(cat, rel_err(got, want[r]), idx, grp[r]["pos"], len(grp), r, rel_err(got, want[0]),
                                 float(ref.margin[r])))

    for i0, grp in _groups(events):
        kind = grp[0]["kind"]
        if kind == "reset":
            tcache, mcache = ref.trunk_cache(), ref.mtp_cache()
            for d in (eng_trunk_h, eng_trunk_tok, eng_mtp_h, mtp_kind, ref_trunk_h):
                d.clear()
        elif kind == "trunk_forget":
            p0 = grp[0]["pos"]
            for c in tcache:
                c.forget(p0)
            for d in (eng_trunk_h, eng_trunk_tok, ref_trunk_h):
                for p in [p for p in d if p >= p0]:
                    del d[p]
        elif kind == "mtp_forget":
            p0 = grp[0]["pos"]
            mcache.forget(p0)
            for d in (eng_mtp_h, mtp_kind):
                for p in [p for p in d if p >= p0]:
                    del d[p]
        elif kind == "trunk":
            calls["trunk"] += 1
            pos = np.array([e["pos"] for e in grp])
            n0 = len(tcache[0])
            if not np.array_equal(pos, np.arange(n0, n0 + len(grp))):
                raise AssertionError(f"trunk call {grp[0]['call']}: positions {pos.tolist()} do not continue a cache of {n0}")
            logits, h = ref.trunk(tcache, [e["token"] for e in grp], pos)
            for r, e in enumerate(grp):
                note("trunk_logits", e["logits"], logits, i0 + r, grp, r)
                note("trunk_h", e["h_out"], h, i0 + r, grp, r)
                ref_trunk_h[e["pos"]] = h[r]
                if e["h_out"] is not None:
                    eng_trunk_h[e["pos"]] = e["h_out"]
                eng_trunk_tok[e["pos"]] = e["token"]
        elif kind == "mtp":
            calls["mtp"] += 1
            pos = np.array([e["pos"] for e in grp])
            n0 = len(mcache)
            if not np.array_equal(pos, np.arange(n0, n0 + len(grp))) or not np.array_equal(mcache.pos, np.arange(n0)):
                raise AssertionError(f"MTP call {grp[0]['call']}: positions {pos.tolist()} do not continue a cache of {n0}")
            for r, e in enumerate(grp):
                p, h = e["pos"], e["h_in"]
                if h is None:
                    raise ProvenanceError(f"MTP row at {p} has no input state")
                if p - 1 in eng_trunk_h and np.array_equal(h, eng_trunk_h[p - 1]):
                    src = "trunk"
                    if p in eng_trunk_tok and eng_trunk_tok[p] != e["token"]:
                        raise ProvenanceError(f"MTP row at {p}: token {e['token']} but the trunk holds {eng_trunk_tok[p]}")
                elif r == 0 and p - 1 in eng_mtp_h and np.array_equal(h, eng_mtp_h[p - 1]):
                    src = "draft"
                elif p == 0 and not np.any(h):
                    src = "zero"
                else:
                    raise ProvenanceError(f"MTP row at {p} (event {i0 + r}): h_in is neither the trunk state at {p - 1} "
                                          f"nor the previous draft's output state")
                if src != "draft" and any(k == "draft" for k in mtp_kind.values()):
                    raise ProvenanceError(f"MTP row at {p}: a trunk-state entry evaluated over a cache holding drafts")
                mtp_kind[p] = src
                sources[src] += 1
            h_in = np.stack([ref_trunk_h[e["pos"] - 1] if trunk_h_from == "reference" and mtp_kind[e["pos"]] == "trunk"
                             else e["h_in"] for e in grp])
            logits, h = ref.nextn(mcache, [e["token"] for e in grp], h_in, pos)
            for r, e in enumerate(grp):
                note("mtp_logits", e["logits"], logits, i0 + r, grp, r)
                note("mtp_h", e["h_out"], h, i0 + r, grp, r)
                if e["h_out"] is not None:
                    eng_mtp_h[e["pos"]] = e["h_out"]
        else:
            raise ValueError(f"unknown event kind {kind!r}")
    return ReplayResult(rows, sources, calls)
