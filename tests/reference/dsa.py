"""The numpy reference of llama.cpp's DeepSeek Sparse Attention architectures (``glm-dsa``: GLM-5.x,
``deepseek32``: DeepSeek-V3.2), written from upstream's graphs (src/models/glm-dsa.cpp, deepseek32.cpp,
llama-graph.cpp's DSA build_attn, ggml-cpu's lightning indexer; docs/dsa.md), not from this project's C++.

Everything is reference/deepseek2.py's (MLA, MoE, NextN step, numerics, replay) except that in the
trunk each row attends only to the cells a lightning indexer chooses.  For trunk layer il, with the
attention input x (= rms(x) * attn_norm), the normalised q latent qa (= rms(attn_q_a @ x) * q_a_norm),
Hi indexer heads of D dims and dr = rope.dimension_count::

    q_h  = (indexer.attn_q_b @ qa)[h]                         # (D,) per head, [rope (dr) | nope]
    k    = LayerNorm(indexer.attn_k @ x) * k_norm.weight + k_norm.bias   # one key per row
    q_h, k rotated over their first dr dims: NORM rope for glm-dsa, NEOX for deepseek32 (the MLA rope is
           NORM in both), with the file's YaRN parameters (the rotated dims take its mscale)
    q_h, k = Hadamard(D) @ q_h, Hadamard(D) @ k               # orthonormal: dot products unchanged
    cache  k rounded to f16 (the indexer's own K cache, type_k)
    w_h  = (indexer.proj @ x)[h] / sqrt(D * Hi)               # f32 router-like weights
    score(row, cell) = sum_h w_h * relu(q_h . k_cell)         # causal cells only
    chosen = the top_k cells by score (every causal cell when there are at most top_k)

and MLA attention is restricted to the chosen cells (a -inf mask elsewhere; the cache order and the
flash-attention kernel are unchanged).  glm-dsa's "shared" layers (attention.indexer.types false)
reuse the choice of the last full layer before them; without the key every layer is full below a
1048576-token training context (GLM-5.2's pattern above).  The LayerNorm's eps is hparams.f_norm_eps:
never set for glm-dsa (0), 1e-6 for deepseek32.  The NextN block (graph_mtp) attends densely.

Differences from deepseek2 in the loader, also modelled: glm-dsa's gating falls back to sigmoid (not
by layer count) and it ignores rope.scaling.yarn_log_multiplier; deepseek32 requires the gating key
and reads the multiplier.  For YaRN both take mscale = 1 (only DEEPSEEK2 takes mscale_all_dim), so
attn_factor = get_mscale(f, 1) / get_mscale(f, log_mul) / (1 + 0.1 ln f).

Near-ties.  The indexer's k-th and (k+1)-th scores can be closer than the engine's f32 error (its
inputs in later layers carry the MLA rows' ~1e-4 relative error), and then the engine may choose the
other cell.  Every chosen set records its relative gap (k-th minus (k+1)-th score over the row's
largest |score|) in ``Reference.margin`` with the MoE routing gaps, so a test can excuse a flip as it
excuses expert near-ties.  ``replay(..., follow=(tol, near_tie))`` goes further: a trunk call whose
rows miss the engine's by tol is re-evaluated with each near-tie (gap < near_tie) decided the other
way, and the first decision that matches is kept (``ReplayResult.followed`` lists them).
"""
from __future__ import annotations

import copy
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np

from . import deepseek2 as _d
from . import glm4moe as _g
from .glm4moe import CATEGORIES, KVCache, ProvenanceError, ReplayResult, RowError, _f16, rel_err

__all__ = ["HParams", "Variant", "KVCache", "DSACache", "Reference", "load_gguf", "replay", "rel_err",
           "ProvenanceError", "ReplayResult", "RowError", "CATEGORIES", "hadamard"]


# --- model description ----------------------------------------------------------------

@dataclass(frozen=True)
class HParams(_d.HParams):
    arch: str = "glm-dsa"
    index_n_head: int = 0            # Hi: attention.indexer.head_count
    index_head_dim: int = 0          # D: attention.indexer.key_length
    index_top_k: int = 0
    index_full: tuple[bool, ...] = ()   # per trunk layer: its own indexer (True) or the last full one's choice
    index_rope: str = "norm"         # the indexer's rope: "norm" (glm-dsa) or "neox" (deepseek32)
    index_norm_eps: float = 0.0      # the indexer key LayerNorm's eps (hparams.f_norm_eps)


@dataclass(frozen=True)
class Variant(_d.Variant):
    """deepseek2's switches plus the indexer's.  The defaults are the upstream llama.cpp conventions."""

    topk: str = "indexer"            # "dense": every causal cell (the indexer ignored)
    index_rope: str = "arch"         # "other": the other pairing (NEOX for glm-dsa, NORM for deepseek32)
    index_rope_dims: str = "first"   # "last": rope on each indexer head's last dr dims ([nope | rope])
    index_relu: bool = True          # False: no ReLU on q.k
    index_k_norm: str = "layer"      # "rms": an RMS norm of the indexer key (no mean, no bias)
    shared: str = "reuse"            # "dense": a shared layer attends to every causal cell


def hadamard(n: int) -> np.ndarray:
    """The orthonormal Walsh-Hadamard matrix llama.cpp builds (ggml_gen_hadamard, Sylvester's order)."""
    if n < 1 or n & (n - 1):
        raise ValueError(f"Hadamard size {n} is not a power of two")
    h = np.ones((1, 1))
    while h.shape[0] < n:
        h = np.block([[h, h], [h, -h]])
    return h / np.sqrt(n)


GLM52_FULL = [il < 2 or (il < 78 and (il - 2) % 4 == 0) for il in range(512)]  # glm-dsa.cpp:6-27


def load_gguf(path: str | Path, arch: str | None = None) -> tuple[HParams, dict[str, np.ndarray], set[str]]:
    """Hyper-parameters, float64 weights (numpy layout: rows = output features) and the names of the
    tensors stored as f16, read from a glm-dsa or deepseek32 GGUF file (arch: the one expected)."""
    import gguf

    r = gguf.GGUFReader(str(path))

    def kv(key, default=None):
        f = r.fields.get(key)
        return default if f is None else f.contents()

    got = kv("general.architecture")
    if got not in ("glm-dsa", "deepseek32") or (arch is not None and got != arch):
        raise ValueError(f"{path}: architecture {got!r}, expected {arch or 'glm-dsa or deepseek32'!r}")
    a = got + "."
    if kv(a + "attention.key_length_mla") is None or kv(a + "attention.value_length_mla") is None:
        raise ValueError("the reference models the absorbed MLA graph only (a file with both MLA lengths)")
    blocks = int(kv(a + "block_count"))
    nextn = int(kv(a + "nextn_predict_layers", 0) or 0)
    n_layer = blocks - nextn
    W, f16 = _d.read_weights(r)
    n_vocab = int(kv(a + "vocab_size", 0) or 0) or len(r.fields["tokenizer.ggml.tokens"].data)

    gating = int(kv(a + "expert_gating_func", 0) or 0)
    if got == "glm-dsa":
        gating = gating or 2                                     # glm-dsa.cpp:54-57
        log_mul = 0.0                                            # not read by glm-dsa's loader
        n_ctx_train = int(kv(a + "context_length"))
        types = kv(a + "attention.indexer.types")
        if types is None:
            full = tuple(True if n_ctx_train < 1048576 else GLM52_FULL[il] for il in range(n_layer))
        elif isinstance(types, list):
            if len(types) != n_layer:
                raise ValueError(f"attention.indexer.types has {len(types)} entries for {n_layer} trunk layers")
            full = tuple(bool(t) for t in types)
        else:
            full = (bool(types),) * n_layer
        index_rope, eps = "norm", 0.0                            # f_norm_eps is never set for glm-dsa
    else:
        if gating == 0:
            raise ValueError("deepseek32 requires expert_gating_func")
        log_mul = float(kv(a + "rope.scaling.yarn_log_multiplier", 0.0) or 0.0) / 0.1
        full = (True,) * n_layer
        index_rope, eps = "neox", 1e-6                           # deepseek32.cpp:9, :234
    if gating not in (1, 2):
        raise ValueError(f"expert_gating_func {gating} is not modelled")
    if n_layer and not full[0]:
        raise ValueError("trunk layer 0 must have a full indexer")

    n_rot = int(kv(a + "rope.dimension_count"))
    hp = HParams(**_d.mla_fields(kv, a, n_vocab, n_layer, nextn, n_rot), gating="sigmoid" if gating == 2 else "softmax",
                 yarn_log_mul=log_mul, **_d.rope_scaling(kv, a, log_mul, deepseek2_mscale=False),
                 arch=got, index_n_head=int(kv(a + "attention.indexer.head_count")),
                 index_head_dim=int(kv(a + "attention.indexer.key_length")),
                 index_top_k=int(kv(a + "attention.indexer.top_k")), index_full=full, index_rope=index_rope,
                 index_norm_eps=eps)
    return hp, W, f16


# --- the forward pass ------------------------------------------------------------------------

@dataclass
class DSACache(KVCache):
    """A trunk layer's cache: deepseek2's latent and rope key rows, and the indexer's keys (rows aligned
    with pos; None for a shared layer, which has no indexer cache)."""

    ik: np.ndarray | None = None

    def add_index(self, ik: np.ndarray) -> None:
        self.ik = ik if self.ik is None else np.concatenate([self.ik, ik])
        if len(self.ik) != len(self.pos):
            raise AssertionError(f"{len(self.ik)} indexer keys for {len(self.pos)} cached rows")

    def forget(self, p0: int) -> None:
        if self.ik is not None:
            self.ik = self.ik[self.pos < p0]
        super().forget(p0)


class Reference(_d.Reference):
    """deepseek2's Reference whose trunk attention is restricted to the indexer's choice.  Same interface."""

    def __init__(self, hp: HParams, W: dict[str, np.ndarray], f16: set[str] = frozenset(), variant: Variant = Variant()):
        super().__init__(hp, W, f16, variant)  # type: ignore[arg-type]
        self.hadamard = hadamard(hp.index_head_dim)
        self._sel: np.ndarray | None = None    # the last full layer's choice (glm-dsa's shared layers)
        self.sparse_rows = 0                    # rows whose choice left causal cells out (n_kv above top_k)
        # near-tie following (see replay): the oracle's engine rows, tolerances, what was decided
        self.oracle = None
        self.follow_tol = 0.0
        self.tie_margin = 0.0
        self.override: dict[tuple[int, int], tuple[int, int]] = {}   # (il, pos) -> (cell dropped, cell added)
        self.near: list[tuple[float, int, int, int, int]] = []
        self.followed: list[tuple[float, int, int, int, int]] = []

    def with_variant(self, **kw) -> "Reference":
        return Reference(self.hp, self.W, self.f16, replace(self.var, **kw))

    def trunk_cache(self) -> list[KVCache]:
        return [DSACache() for _ in range(self.hp.n_layer)]

    # -- the indexer ------------------------------------------------------------------------
    def rope_indexer(self, x: np.ndarray, pos: np.ndarray) -> np.ndarray:
        """x (n, heads, D) rotated over the rope part of each indexer head."""
        hp, var = self.hp, self.var
        mode = hp.index_rope if var.index_rope == "arch" else {"norm": "neox", "neox": "norm"}[hp.index_rope]
        if var.index_rope_dims == "first":
            return self.rope(x, pos, mode)
        dr = hp.n_rot
        return np.concatenate([x[..., :-dr], self.rope(x[..., -dr:], pos, mode)], axis=-1)

    def index_scores(self, il: int, x: np.ndarray, qa: np.ndarray, pos: np.ndarray, cache: DSACache) -> np.ndarray:
        """The indexer's scores (n, m) of the rows x over every cached cell (the rows' keys are added)."""
        hp, var, p = self.hp, self.var, f"blk.{il}.indexer."
        n, Hi, D = len(pos), hp.index_n_head, hp.index_head_dim
        q = self.mm(p + "attn_q_b.weight", qa).reshape(n, Hi, D)
        k = self.mm(p + "attn_k.weight", x)
        if var.index_k_norm == "layer":
            c = k - k.mean(axis=-1, keepdims=True)
            k = c / np.sqrt(np.mean(c * c, axis=-1, keepdims=True) + hp.index_norm_eps)
            k = k * self.W[p + "k_norm.weight"] + self.W[p + "k_norm.bias"]
        else:
            k = k / np.sqrt(np.mean(k * k, axis=-1, keepdims=True) + hp.index_norm_eps) * self.W[p + "k_norm.weight"]
        q = self.rope_indexer(q, pos) @ self.hadamard                    # H is symmetric: H @ v == v @ H
        k = self.rope_indexer(k[:, None, :], pos)[:, 0] @ self.hadamard
        cache.add_index(_f16(k) if var.kv_f16 else k)
        w = self.mm(p + "proj.weight", x) / np.sqrt(D * Hi)           # (n, Hi)
        s = np.einsum("nhd,md->nhm", q, cache.ik)
        if var.index_relu:
            s = np.maximum(s, 0.0)
        return np.einsum("nhm,nh->nm", s, w)

    def choose(self, il: int, score: np.ndarray, pos: np.ndarray, cache: DSACache, visible: np.ndarray) -> np.ndarray:
        """The top_k causal cells of each row by score (all of them when there are at most top_k)."""
        k_top = self.hp.index_top_k
        sel = np.zeros_like(visible)
        for r in range(len(pos)):
            idx = np.flatnonzero(visible[r])
            if len(idx) <= k_top:
                sel[r, idx] = True
                continue
            sc = score[r, idx]
            order = np.argsort(-sc, kind="stable")
            chosen = idx[order[:k_top]]
            key = (il, int(pos[r]))
            if key in self.override:                            # a near-tie decided the other way
                drop, add = self.override[key]
                chosen = np.append(chosen[cache.pos[chosen] != drop], np.flatnonzero(cache.pos == add))
            sel[r, chosen] = True
            self.sparse_rows += 1
            scale = float(np.max(np.abs(sc))) or 1.0
            gap = float(sc[order[k_top - 1]] - sc[order[k_top]]) / scale
            self.margin[r] = min(self.margin[r], gap)
            if gap < self.tie_margin:
                self.near.append((gap, il, int(pos[r]), int(cache.pos[idx[order[k_top - 1]]]),
                                  int(cache.pos[idx[order[k_top]]])))
        return sel

    def restrict(self, il: int, x: np.ndarray, qa: np.ndarray | None, pos: np.ndarray, cache: KVCache,
                 visible: np.ndarray) -> np.ndarray:
        hp, var = self.hp, self.var
        if il >= hp.n_layer:                                    # the NextN block: dense (graph_mtp)
            return visible
        if not hp.index_full[il]:                               # glm-dsa's shared layer
            if var.shared == "dense" or var.topk == "dense":
                return visible
            assert self._sel is not None and self._sel.shape == visible.shape, "a shared layer before a full one"
            return self._sel
        assert isinstance(cache, DSACache) and qa is not None
        score = self.index_scores(il, x, qa, pos, cache)       # (the keys are cached even when unused)
        if var.topk == "dense":
            self._sel = visible
            return visible
        self._sel = self.choose(il, np.where(visible, score, -np.inf), pos, cache, visible)
        return self._sel

    # -- the trunk, following the engine's near-tie decisions ----------------------------------
    def _matches(self, out: tuple[np.ndarray, np.ndarray], want) -> bool:
        logits, h = out
        for r, (el, eh) in enumerate(want):
            if el is not None and rel_err(el, logits[r]) >= self.follow_tol:
                return False
            if eh is not None and rel_err(eh, h[r]) >= self.follow_tol:
                return False
        return True

    def trunk(self, cache, tokens, pos) -> tuple[np.ndarray, np.ndarray]:
        self.near, self.override = [], {}
        if self.oracle is None:
            return super().trunk(cache, tokens, pos)
        want = next(self.oracle)
        snap = [copy.copy(c) for c in cache]

        def run(override):
            cache[:] = [copy.copy(c) for c in snap]
            self.near, self.override = [], override
            try:
                return super(Reference, self).trunk(cache, tokens, pos)
            finally:
                self.override = {}

        out = run({})
        if self._matches(out, want):
            return out
        for cand in sorted(self.near)[:8]:
            _, il, p, drop, add = cand
            alt = run({(il, p): (drop, add)})
            if self._matches(alt, want):
                self.followed.append(cand)
                return alt
        return run({})


def replay(ref: Reference, events: list[dict], trunk_h_from: str = "engine",
           follow: tuple[float, float] | None = None) -> ReplayResult:
    """glm4moe's replay (reference/glm4moe.py).  follow=(tol, near_tie): a trunk call with a row off
    the engine's by tol or more is re-evaluated with each indexer near-tie (relative gap < near_tie)
    decided the other way, keeping the first that matches every row (result.followed lists them)."""
    if follow is None:
        res = _g.replay(ref, events, trunk_h_from)
        res.followed = []
        return res
    calls = [[(e["logits"], e["h_out"]) for e in grp] for _, grp in _g._groups(events) if grp[0]["kind"] == "trunk"]
    ref.oracle, (ref.follow_tol, ref.tie_margin), ref.followed = iter(calls), follow, []
    try:
        res = _g.replay(ref, events, trunk_h_from)
    finally:
        ref.oracle, ref.tie_margin = None, 0.0
    res.followed = list(ref.followed)
    return res
