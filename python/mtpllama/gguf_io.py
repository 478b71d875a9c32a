"""GGUF files: inspect what a file holds, and write small GLM4-MoE files for tests
and benchmarks (with a real byte-level BPE tokenizer and a NextN block).

The synthetic weights make the trunk behave mostly like a fixed "next token"
map sigma (a random permutation of the ordinary tokens), perturbed in a
context-dependent way by its attention and MoE layers; the NextN block's
token-embedding path predicts sigma(t_next), which the trunk then produces
with a probability set by ``noise``.  That gives MTP heads that agree with the
trunk often, but not always, so multi-token acceptance and rejection are both
exercised.
"""
from __future__ import annotations

import re
from collections import Counter, defaultdict
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np

# --- byte-level BPE tokenizer ----------------------------------------------------

SPECIAL_TOKENS = ("<|endoftext|>", "[gMASK]", "<sop>", "<|user|>", "<|assistant|>")

_CORPUS = """\
def fibonacci(n):
    \"\"\"Return the n-th Fibonacci number.\"\"\"
    a, b = 0, 1
    for _ in range(n):
        a, b = b, a + b
    return a


class Stack:
    def __init__(self):
        self.items = []

    def push(self, item):
        self.items.append(item)

    def pop(self):
        if not self.items:
            raise IndexError("pop from empty stack")
        return self.items.pop()


import os
import sys

for name in sorted(os.listdir(path)):
    if name.endswith(".py"):
        print(name, file=sys.stderr)

The quick brown fox jumps over the lazy dog. The model predicts the next token,
and the multi-token prediction head predicts the token after that. When the
draft is right, the trunk accepts it and the text comes out faster.
Greedy decoding with speculation must give exactly the same output as greedy
decoding without it: every token is checked by the main model.
"""

_PRETOKENIZE = re.compile(r"""'s|'t|'re|'ve|'m|'ll|'d| ?[A-Za-z_]+| ?[0-9]+| ?[^\sA-Za-z_0-9]+|\s+(?!\S)|\s+""")


def bytes_to_unicode() -> dict[int, str]:
    """GPT-2's reversible map from bytes to printable unicode characters."""
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return dict(zip(bs, (chr(c) for c in cs)))


@dataclass(frozen=True)
class Tokenizer:
    tokens: list[str]
    merges: list[str]
    token_types: list[int]
    eos_id: int

    @property
    def n_vocab(self) -> int:
        return len(self.tokens)

    @property
    def normal_ids(self) -> list[int]:
        return [i for i, t in enumerate(self.token_types) if t == 1]


def apply_merge(symbols, a: str, b: str) -> list[str]:
    """The symbols with every adjacent (a, b) replaced by a + b, left to right."""
    out, i = [], 0
    while i < len(symbols):
        if i + 1 < len(symbols) and symbols[i] == a and symbols[i + 1] == b:
            out.append(a + b)
            i += 2
        else:
            out.append(symbols[i])
            i += 1
    return out


def bpe_from_words(word_counts: Mapping[str, int], n_merges: int) -> Tokenizer:
    """Learn up to n_merges byte-level BPE merges from pre-tokenized words and their counts.

    Deterministic: the most frequent pair wins, ties go to the larger pair text.  Incremental:
    pair counts are kept and only the words holding the merged pair are updated, so a few
    thousand merges over megabytes of text take seconds."""
    b2u = bytes_to_unicode()
    words: list[list[str]] = []
    freq: list[int] = []
    for w, c in sorted(word_counts.items()):
        words.append([b2u[b] for b in w.encode("utf-8")])
        freq.append(c)
    pairs: Counter = Counter()
    where: dict[tuple[str, str], set[int]] = defaultdict(set)
    for i, w in enumerate(words):
        for p in zip(w, w[1:]):
            pairs[p] += freq[i]
            where[p].add(i)
    vocab = [b2u[b] for b in range(256)]
    known = set(vocab)
    merges: list[str] = []
    while len(merges) < n_merges and pairs:
        (a, b), count = max(pairs.items(), key=lambda kv: (kv[1], kv[0]))
        if count < 2:
            break
        merges.append(f"{a} {b}")
        if a + b not in known:
            vocab.append(a + b)
            known.add(a + b)
        for i in sorted(where.pop((a, b), ())):
            w, c = words[i], freq[i]
            for p in zip(w, w[1:]):
                pairs[p] -= c
                if pairs[p] <= 0:
                    del pairs[p]
            words[i] = apply_merge(w, a, b)
            for p in zip(words[i], words[i][1:]):
                pairs[p] += c
                where[p].add(i)
        pairs.pop((a, b), None)
    types = [1] * len(vocab)
    eos = len(vocab)
    vocab += list(SPECIAL_TOKENS)
    types += [3] * len(SPECIAL_TOKENS)
    return Tokenizer(vocab, merges, types, eos)


def train_bpe(text: str = _CORPUS, n_merges: int = 200) -> Tokenizer:
    """Learn n_merges byte-level BPE merges from text (deterministic)."""
    return bpe_from_words(Counter(_PRETOKENIZE.findall(text)), n_merges)


# --- synthetic GLM4-MoE files ------------------------------------------------------

@dataclass(frozen=True)
class SyntheticSpec:
    """Shape and behaviour of a synthetic glm4moe file."""

    n_embd: int = 64
    n_layer: int = 2                 # trunk layers
    n_dense_lead: int = 1            # leading dense layers
    n_head: int = 4
    n_head_kv: int = 2
    head_dim: int = 16
    n_rot: int = 8                   # partial rotary embedding
    n_ff: int = 128                  # dense FFN width
    n_expert: int = 8
    n_expert_used: int = 2
    n_expert_shared: int = 1
    n_ff_exp: int = 32
    qk_norm: bool = False
    expert_weights_norm: bool = True
    expert_weights_scale: float = 1.0
    nextn: str = "own"               # "own": own embed_tokens/shared_head_head (GLM-4.5); "tied" (GLM-4.6); "none"
    nextn_declared: bool = True      # with nextn="none": still declare nextn_predict_layers=1 (a trunk-only file)
    n_ctx_train: int = 2048
    noise: float = 1.4               # scale of the layers' contributions: higher = less agreement
    norm_noise: float = 0.0          # > 0: every RMS-norm weight is multiplied by 1 + N(0, norm_noise) (not all ones),
                                     # so that a pre-/post-norm mix-up changes results (own random stream: the other
                                     # weights stay those of norm_noise=0)
    dtype: str = "f32"               # "f32", "f16", "q8_0", "q4_0", "q4_k" for the large matrices
    n_merges: int = 200
    seed: int = 0
    name: str = "mtpllama-synthetic"


def _rng_normal(rng: np.random.Generator, shape, scale: float) -> np.ndarray:
    return (rng.standard_normal(shape) * scale).astype(np.float32)


def synthetic_weights(spec: SyntheticSpec, tok: Tokenizer) -> dict[str, np.ndarray]:
    """Weights in numpy layout (rows = output features), keyed by GGUF tensor name."""
    rng = np.random.default_rng(spec.seed)
    d, V = spec.n_embd, tok.n_vocab
    hd, nh, nkv = spec.head_dim, spec.n_head, spec.n_head_kv
    g = spec.noise
    W: dict[str, np.ndarray] = {}

    emb = _rng_normal(rng, (V, d), 1.0)
    normal = np.array(tok.normal_ids)
    sigma = normal[rng.permutation(len(normal))]         # the trunk's favourite next token
    out = _rng_normal(rng, (V, d), 0.05)
    unit = emb / np.sqrt((emb ** 2).mean(axis=1, keepdims=True))
    out[sigma] = unit[normal] * (3.0 / np.sqrt(d))
    W["token_embd.weight"] = emb
    W["output_norm.weight"] = np.ones(d, np.float32)
    W["output.weight"] = out

    def block(i: int, moe: bool) -> None:
        p = f"blk.{i}."
        W[p + "attn_norm.weight"] = np.ones(d, np.float32)
        W[p + "attn_q.weight"] = _rng_normal(rng, (nh * hd, d), 1.0 / np.sqrt(d))
        W[p + "attn_q.bias"] = _rng_normal(rng, (nh * hd,), 0.1)
        W[p + "attn_k.weight"] = _rng_normal(rng, (nkv * hd, d), 1.0 / np.sqrt(d))
        W[p + "attn_k.bias"] = _rng_normal(rng, (nkv * hd,), 0.1)
        W[p + "attn_v.weight"] = _rng_normal(rng, (nkv * hd, d), 1.0 / np.sqrt(d))
        W[p + "attn_v.bias"] = _rng_normal(rng, (nkv * hd,), 0.1)
        W[p + "attn_output.weight"] = _rng_normal(rng, (d, nh * hd), g / np.sqrt(nh * hd))
        if spec.qk_norm:
            W[p + "attn_q_norm.weight"] = (1.0 + _rng_normal(rng, (hd,), 0.1)).astype(np.float32)
            W[p + "attn_k_norm.weight"] = (1.0 + _rng_normal(rng, (hd,), 0.1)).astype(np.float32)
        W[p + "post_attention_norm.weight"] = np.ones(d, np.float32)
        if not moe:
            W[p + "ffn_gate.weight"] = _rng_normal(rng, (spec.n_ff, d), 1.0 / np.sqrt(d))
            W[p + "ffn_up.weight"] = _rng_normal(rng, (spec.n_ff, d), 1.0 / np.sqrt(d))
            W[p + "ffn_down.weight"] = _rng_normal(rng, (d, spec.n_ff), g / np.sqrt(spec.n_ff))
            return
        E, f = spec.n_expert, spec.n_ff_exp
        W[p + "ffn_gate_inp.weight"] = _rng_normal(rng, (E, d), 1.0 / np.sqrt(d))
        W[p + "exp_probs_b.bias"] = _rng_normal(rng, (E,), 0.1)
        W[p + "ffn_gate_exps.weight"] = _rng_normal(rng, (E, f, d), 1.0 / np.sqrt(d))
        W[p + "ffn_up_exps.weight"] = _rng_normal(rng, (E, f, d), 1.0 / np.sqrt(d))
        W[p + "ffn_down_exps.weight"] = _rng_normal(rng, (E, d, f), g / np.sqrt(f))
        if spec.n_expert_shared > 0:
            fs = f * spec.n_expert_shared
            W[p + "ffn_gate_shexp.weight"] = _rng_normal(rng, (fs, d), 1.0 / np.sqrt(d))
            W[p + "ffn_up_shexp.weight"] = _rng_normal(rng, (fs, d), 1.0 / np.sqrt(d))
            W[p + "ffn_down_shexp.weight"] = _rng_normal(rng, (d, fs), g / np.sqrt(fs))

    for i in range(spec.n_layer):
        block(i, moe=i >= spec.n_dense_lead)

    if spec.nextn != "none":
        n = spec.n_layer
        block(n, moe=True)
        p = f"blk.{n}.nextn."
        eh = np.zeros((d, 2 * d), np.float32)
        eh[:, :d] = np.eye(d, dtype=np.float32)                  # the token-embedding half carries the signal
        eh[:, d:] = _rng_normal(rng, (d, d), g / np.sqrt(d))     # the trunk-state half perturbs it
        W[p + "eh_proj.weight"] = eh
        W[p + "enorm.weight"] = np.ones(d, np.float32)
        W[p + "hnorm.weight"] = np.ones(d, np.float32)
        W[p + "shared_head_norm.weight"] = np.ones(d, np.float32)
        if spec.nextn == "own":  # close to the trunk's, but not equal: a test can tell which one is used
            W[p + "embed_tokens.weight"] = emb + _rng_normal(rng, emb.shape, 0.1)
            W[p + "shared_head_head.weight"] = out + _rng_normal(rng, out.shape, 0.01)
        elif spec.nextn != "tied":
            raise ValueError(f"nextn must be 'own', 'tied' or 'none', got {spec.nextn!r}")
    if spec.norm_noise > 0:
        nrng = np.random.default_rng([spec.seed, 0x6E6F726D])
        for name in sorted(W):
            if name.endswith("norm.weight"):
                W[name] = (W[name] * (1.0 + _rng_normal(nrng, W[name].shape, spec.norm_noise))).astype(np.float32)
    return W


def add_second_successor(W: dict[str, np.ndarray], spec: SyntheticSpec, tok: Tokenizer,
                         seed: int = 3) -> dict[str, np.ndarray]:
    """Give every token a second, equally likely successor, in the trunk's output head and in the
    NextN head alike: a model whose next token is genuinely uncertain (sampling matters)."""
    rng = np.random.default_rng(seed)
    emb = W["token_embd.weight"]
    unit = emb / np.sqrt((emb ** 2).mean(axis=1, keepdims=True))
    normal = np.array(tok.normal_ids)
    second = normal[rng.permutation(len(normal))]
    for key in ("output.weight", f"blk.{spec.n_layer}.nextn.shared_head_head.weight"):
        if key in W:
            W[key][second] += unit[normal] * (3.0 / np.sqrt(spec.n_embd))
    return W


def _store(arr: np.ndarray, dtype: str):
    """Convert a weight for writing: (data, raw ggml type or None)."""
    import gguf

    if arr.ndim == 1 or dtype == "f32":
        return arr.astype(np.float32), None
    if dtype == "f16":
        return arr.astype(np.float16), None
    qtype = {"q8_0": gguf.GGMLQuantizationType.Q8_0, "q4_0": gguf.GGMLQuantizationType.Q4_0,
             "q4_k": gguf.GGMLQuantizationType.Q4_K}[dtype]
    if arr.shape[-1] % gguf.GGML_QUANT_SIZES[qtype][0]:       # rows not whole blocks: f16
        return arr.astype(np.float16), None
    if qtype == gguf.GGMLQuantizationType.Q4_K:
        return quantize_q4_k(arr), qtype
    return gguf.quants.quantize(arr, qtype), qtype


def quantize_q4_k(arr: np.ndarray) -> np.ndarray:
    """Q4_K blocks (the gguf package dequantizes K-quants but does not quantize them).

    Per 256 values: f16 d and dmin, twelve bytes packing eight 6-bit scales and mins (one per
    32 values), and 128 bytes of 4-bit codes; a value is d*scale*q - dmin*min.  A plain
    min/max fit per 32 values, not llama.cpp's search: these files exist to exercise the
    kernels, and the round trip is checked against gguf's dequantizer in the tests."""
    shape = arr.shape
    sub = arr.reshape(-1, 8, 32).astype(np.float32)
    lo = np.minimum(sub.min(axis=2), 0.0)
    hi = sub.max(axis=2)
    # 6-bit mins and scales rounded up, so that every value lies inside its sub-block's 16 codes
    dmin = (-lo.min(axis=1) / 62.0).astype(np.float16).astype(np.float32)
    mn = np.clip(np.ceil(-lo / np.where(dmin > 0, dmin, 1.0)[:, None]), 0, 63).astype(np.uint8)
    step = np.maximum(hi + dmin[:, None] * mn, 1e-12) / 15.0        # per 32 values
    d = (step.max(axis=1) / 62.0).astype(np.float16).astype(np.float32)
    d = np.where(d > 0, d, np.float32(6e-8))
    sc = np.clip(np.ceil(step / d[:, None]), 1, 63).astype(np.uint8)
    q = np.round((sub + (dmin[:, None] * mn)[..., None]) / (d[:, None] * sc)[..., None])
    q = np.clip(q, 0, 15).astype(np.uint8)
    packed = np.empty((sub.shape[0], 12), np.uint8)
    packed[:, 0:4] = sc[:, 0:4] | ((sc[:, 4:8] >> 4) << 6)          # 6 low bits, then the high 2 of 4..7
    packed[:, 4:8] = mn[:, 0:4] | ((mn[:, 4:8] >> 4) << 6)
    packed[:, 8:12] = (sc[:, 4:8] & 0xF) | ((mn[:, 4:8] & 0xF) << 4)
    codes = (q[:, 0::2, :] | (q[:, 1::2, :] << 4)).reshape(-1, 128)  # pairs of 32: low nibble, high nibble
    blocks = np.concatenate([d.astype(np.float16).view(np.uint8).reshape(-1, 2),
                             dmin.astype(np.float16).view(np.uint8).reshape(-1, 2), packed, codes], axis=1)
    return blocks.reshape(*shape[:-1], shape[-1] // 256 * 144)


def write_synthetic(path: str | Path, spec: SyntheticSpec = SyntheticSpec(), tok: Tokenizer | None = None,
                    weights: dict[str, np.ndarray] | None = None) -> Path:
    """Write a synthetic glm4moe GGUF file and return its path."""
    import gguf

    tok = tok or train_bpe(n_merges=spec.n_merges)
    W = weights if weights is not None else synthetic_weights(spec, tok)
    path = Path(path)
    has_block = spec.nextn != "none"
    declared = 1 if (has_block or spec.nextn_declared) else 0
    w = gguf.GGUFWriter(str(path), "glm4moe")
    w.add_name(spec.name)
    w.add_context_length(spec.n_ctx_train)
    w.add_embedding_length(spec.n_embd)
    w.add_block_count(spec.n_layer + declared)
    w.add_feed_forward_length(spec.n_ff)
    w.add_head_count(spec.n_head)
    w.add_head_count_kv(spec.n_head_kv)
    w.add_key_length(spec.head_dim)
    w.add_value_length(spec.head_dim)
    w.add_rope_dimension_count(spec.n_rot)
    w.add_rope_freq_base(10000.0)
    w.add_layer_norm_rms_eps(1e-5)
    w.add_expert_count(spec.n_expert)
    w.add_expert_used_count(spec.n_expert_used)
    w.add_expert_shared_count(spec.n_expert_shared)
    w.add_leading_dense_block_count(spec.n_dense_lead)
    w.add_expert_feed_forward_length(spec.n_ff_exp)
    w.add_expert_weights_scale(spec.expert_weights_scale)
    w.add_expert_weights_norm(spec.expert_weights_norm)
    w.add_expert_gating_func(gguf.ExpertGatingFuncType.SIGMOID)
    w.add_nextn_predict_layers(declared)
    w.add_vocab_size(tok.n_vocab)
    w.add_tokenizer_model("gpt2")
    w.add_tokenizer_pre("glm4")
    w.add_token_list(tok.tokens)
    w.add_token_types(tok.token_types)
    w.add_token_merges(tok.merges)
    w.add_eos_token_id(tok.eos_id)
    w.add_add_bos_token(False)
    for name, arr in W.items():
        data, raw = _store(arr, spec.dtype)
        if raw is None:
            w.add_tensor(name, data)
        else:
            w.add_tensor(name, data, raw_shape=data.shape, raw_dtype=raw)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return path


# --- inspection -----------------------------------------------------------------

@dataclass
class GGUFSummary:
    path: str
    arch: str
    name: str
    block_count: int
    nextn_predict_layers: int
    n_tensors: int
    nextn_tensors: dict[str, tuple[str, tuple[int, ...], int]] = field(default_factory=dict)
    """NextN tensors: name -> (type, shape, bytes)."""
    embed_tokens: str = "absent"
    """'own' (nextn.embed_tokens present) or 'tied' (uses token_embd)."""
    shared_head_head: str = "absent"

    @property
    def has_mtp(self) -> bool:
        return self.nextn_predict_layers > 0 and any(n.endswith("nextn.eh_proj.weight") for n in self.nextn_tensors)

    @property
    def nextn_bytes(self) -> int:
        return sum(b for _, _, b in self.nextn_tensors.values())


def inspect(path: str | Path) -> GGUFSummary:
    """Read a GGUF file's metadata and describe its NextN (MTP) block."""
    import gguf

    r = gguf.GGUFReader(str(path))

    def field_value(key: str, default=None):
        f = r.fields.get(key)
        if f is None:
            return default
        v = f.contents()
        return v

    arch = field_value("general.architecture", "?")
    blocks = int(field_value(f"{arch}.block_count", 0) or 0)
    nextn = int(field_value(f"{arch}.nextn_predict_layers", 0) or 0)
    s = GGUFSummary(str(path), arch, field_value("general.name", "") or "", blocks, nextn, len(r.tensors))
    first = blocks - nextn
    for t in r.tensors:
        m = re.match(r"blk\.(\d+)\.", t.name)
        if nextn and m and int(m.group(1)) >= first:
            s.nextn_tensors[t.name] = (t.tensor_type.name, tuple(int(x) for x in t.shape), int(t.n_bytes))
    if nextn:
        s.embed_tokens = "own" if any(n.endswith("nextn.embed_tokens.weight") for n in s.nextn_tensors) else "tied"
        s.shared_head_head = "own" if any(n.endswith("nextn.shared_head_head.weight") for n in s.nextn_tensors) else "tied"
        if not s.has_mtp:
            s.embed_tokens = s.shared_head_head = "absent"
    return s


__all__ = ["Tokenizer", "train_bpe", "SyntheticSpec", "synthetic_weights", "add_second_successor",
           "write_synthetic", "inspect",
           "GGUFSummary", "replace"]
