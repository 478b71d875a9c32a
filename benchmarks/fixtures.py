"""What the benchmark scripts share: the prompt, the benchmark models (synthetic ``glm4moe``,
``deepseek2`` and ``qwen35moe`` files, generated and cached on demand) and the decoding settings a run compares."""
from __future__ import annotations

import hashlib
import json
import os
import sys
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import mtpllama
from build_upstream import cache_root  # cmake/fetch_upstream.py's: one definition of the cache location
from mtpllama.testing import SyntheticSpec, train_bpe
from mtpllama.testing.arch import WRITERS, deepseek2, qwen35moe

PROMPT = "def fibonacci(n):\n    \"\"\"Return the n-th Fibonacci number.\"\"\"\n"

# --- benchmark models -------------------------------------------------------------------
#
# Four shapes, each big enough to time: a decode step costs 10-30 ms with 2 threads on the 2-core
# benchmark machines.  The vocabulary is the synthetic tokenizer's ~460 tokens, so nearly every
# byte is in the layers.  Trunk pass costs V(n)/V(1) for 1..5 tokens, batch invariance on, were
# measured with benchmarks/verify_cost.py on those machines:
#
# * dense: dense-dominated, Q8_0, 0.76B parameters (0.75 GiB), ~26 ms per token.  Every trunk
#   layer but the last is dense (big FFN); the last trunk layer and the NextN block are small MoE
#   layers, so the MTP head costs a fraction of a trunk step.  A lone row is memory-bound here and
#   llamafile's Q8_0 kernel reads the weights once for up to 4 rows (with patches/0005 prefetching
#   them): 1, 1.07, 1.11, 1.30, 1.83x.
# * dense-q4: the same shape as Q4_0 (0.40 GiB, ~14 ms per token), kept because Q4_0 is the common
#   quantisation: on AVX-512 machines Q4_0 is repacked for the CPU and its products are
#   compute-bound, so a pass costs 1, 1.8-2.0, 2.5-2.8, 2.3-2.6, 3.2x (batches of 2-3 take the
#   per-row path of the repacked kernels, 4 and more the tiled one): MTP pays less.
# * air: GLM-4.5-Air's proportions, Q8_0, 1.87B parameters (1.85 GiB), ~0.42B read per token,
#   ~19 ms per token.  One leading dense layer, then 23 MoE layers with 64 experts, 8 active, one
#   shared expert, and attention three times as wide as n_embd (as Air's 96 heads of 128 over a
#   4096 hidden size): about 41% of the weights a token reads are attention, 52% routed experts.
#   A batch of n tokens reads ~8n experts but the attention weights once: 1, 1.6, 2.2, 2.5-2.6, 3.1x.
# * moe: expert-heavy MoE, Q8_0, 2.20B parameters (2.18 GiB), ~0.3B active per token.  The same
#   layout with attention only as wide as n_embd and bigger experts, so routed experts are ~79% of
#   the weights a token reads and verification cost grows almost linearly in k
#   (1, 1.7-1.8, 2.3, 2.9, 3.3-3.6x): the hard case for MTP on CPU.
# * flash: GLM-4.7-Flash's proportions (deepseek2: MLA with 20 heads, q/kv LoRA, the rope part split;
#   64 experts, 4 active, one shared expert, one leading dense layer; one NextN block) at n_embd 1024
#   and 10 trunk layers, Q8_0: about 2/3 of the weights a token reads are its 5 experts.
# * qwen36: Qwen3.6-35B-A3B's proportions (qwen35moe: three gated delta-net layers to each gated
#   attention layer, value heads twice the key heads, 8 of many experts + a gated shared expert; one
#   NextN block) at n_embd 1024 and 12 trunk layers (9 recurrent), Q8_0: the experts are about half
#   of what a token reads, the delta nets a third.  A verification pass restores a state snapshot.

_DENSE = SyntheticSpec(
    n_embd=2048, n_layer=12, n_dense_lead=11, n_head=16, n_head_kv=4, head_dim=128, n_rot=64,
    n_ff=8192, n_expert=8, n_expert_used=2, n_expert_shared=1, n_ff_exp=512,
    n_ctx_train=4096, dtype="q8_0", seed=11, name="mtpllama-bench-dense")
_FLASH = deepseek2.SyntheticSpec(
    n_embd=1024, n_layer=10, n_dense_lead=1, n_head=20, q_lora_rank=384, kv_lora_rank=256,
    qk_nope_head_dim=96, qk_rope_head_dim=32, v_head_dim=128, n_ff=5120, n_expert=64, n_expert_used=4,
    n_expert_shared=1, n_ff_exp=768, n_ctx_train=4096, dtype="q8_0", seed=14, name="mtpllama-bench-flash")

# Qwen3.6-35B-A3B: hidden 2048, 40 layers (every 4th attends), 16 heads x 256 over 2 KV heads with a
# quarter rotated, delta nets of 16 key / 32 value heads of 128 (conv 4), 256 experts of 512, 8 used +
# 1 shared of 512; at half the width, with 64 experts
_QWEN36 = qwen35moe.SyntheticSpec(
    n_embd=1024, n_layer=12, full_attention_interval=4, n_head=8, n_head_kv=2, head_dim=128, n_rot=32,
    rope_sections=(6, 5, 5, 0), ssm_state=128, ssm_k_heads=8, ssm_v_heads=16, ssm_conv=4, n_ff=4096,
    n_expert=64, n_expert_used=8, n_ff_exp=384, n_ff_shexp=384, n_ctx_train=4096, dtype="q8_0", seed=15,
    name="mtpllama-bench-qwen36")

SHAPES: dict[str, SyntheticSpec | deepseek2.SyntheticSpec | qwen35moe.SyntheticSpec] = {
    "dense": _DENSE,
    "dense-q4": replace(_DENSE, dtype="q4_0", name="mtpllama-bench-dense-q4"),
    # the quantisation most GLM files use (Q4_K_M); not in the default run
    "dense-q4k": replace(_DENSE, dtype="q4_k", name="mtpllama-bench-dense-q4k"),
    "moe": SyntheticSpec(
        n_embd=1024, n_layer=14, n_dense_lead=1, n_head=8, n_head_kv=2, head_dim=128, n_rot=64,
        n_ff=4096, n_expert=64, n_expert_used=8, n_expert_shared=1, n_ff_exp=768,
        n_ctx_train=4096, dtype="q8_0", seed=12, name="mtpllama-bench-moe"),
    # GLM-4.5-Air (hidden 4096, 96 heads x 128, 8 KV heads, expert FFN 1408, dense FFN 10944, 8 of
    # 128 experts + 1 shared, first layer dense) at n_embd 1024; 64 experts instead of 128 keep the
    # file at 1.85 GiB (a batch's expert overlap is the same)
    "air": SyntheticSpec(
        n_embd=1024, n_layer=24, n_dense_lead=1, n_head=24, n_head_kv=2, head_dim=128, n_rot=64,
        n_ff=2752, n_expert=64, n_expert_used=8, n_expert_shared=1, n_ff_exp=352,
        n_ctx_train=4096, dtype="q8_0", seed=13, name="mtpllama-bench-air"),
    "flash": _FLASH,
    "qwen36": _QWEN36,
}

# Each shape comes at three MTP-head/trunk agreement levels, set with SyntheticSpec.noise (the scale
# of the layers' contributions to the residual stream; larger = less agreement): hi (~0.9
# first-position greedy acceptance), mid (~0.5), lo (~0.1-0.3).  Calibrated with
# `models.py --calibrate` (128 tokens, fixed k, p_min 0; first-position acceptance with k=1, and
# per position with k=3):
#   dense (Q8_0): 3.5 -> 0.98 (1.00 0.97 0.94; a short loop, 15 distinct tokens) | 3.6 -> 0.94 (0.94 0.83 0.77)
#          3.65 -> 0.91 (0.95 0.78 0.68) | 3.75 -> 0.76 | 4.0 -> 0.75 | 4.25 -> 0.26 | 4.5 -> 0.19
#          5.0 -> 0.54 (0.55 0.28 0.14) | 6.0 -> 0.33 | 7.0 -> 0.42 | 8.0 -> 0.12
#   dense-q4 (Q4_0): 1.0-2.5 -> 1.00 | 3.0 -> 0.98 | 3.5 -> 0.97 (0.97 0.86 0.82) | 3.75 -> 0.94 (0.98 0.59 0.51)
#          4.0 -> 0.88 (0.90 0.42 0.34) | 4.5 -> 0.54 | 5.0 -> 0.40 | 7.0 -> 0.29 | 8.0 -> 0.05
#   moe:   2.0 -> 1.00 | 2.25 -> 0.95 (0.92 0.73 0.75) | 2.5 -> 0.90 (0.87 0.74 0.68) | 2.75 -> 0.65
#          2.9 -> 0.27 | 3.0 -> 0.22 | 3.5 -> 0.18 | 4.5 -> 0.12
#   air:   1.5 -> 0.98 | 1.6 -> 1.00 | 1.7 -> 0.92 (0.97 0.89 0.77) | 1.75 -> 0.87 (0.90 0.72 0.59)
#          2.0 -> 0.77 | 2.25 -> 0.63 (0.65 0.38 0.21) | 2.5 -> 0.42 (0.51 0.28 0.01) | 3.0 -> 0.26 | 3.5 -> 0.15
#   flash: 1.0-2.0 -> 1.00 | 3.0 -> 0.81 (0.77 0.64 0.57) | 4.0 -> 0.43 (0.40 0.24 0.13) | 5.0 -> 0.15
#          (0.14 0.03 0.01) | 6.0 -> 0.07; plain ~8-10 ms per token
#   qwen36: 1.0-2.0 -> 1.00 | 3.0 -> 0.91 (0.84 0.81 0.81) | 4.0 -> 0.79 (0.76 0.56 0.47) | 5.0 -> 0.50
#          (0.51 0.29 0.14) | 6.0 -> 0.34 | 8.0 -> 0.17 (0.17 0.06 0.00); plain ~15-20 ms per token
# (past ~noise 4 / 3 the trunk's greedy text falls into short loops: fewer distinct tokens).
# RESULTS.md reports the acceptance each run actually measured.
NOISE: dict[str, dict[str, float]] = {
    "dense": {"hi": 3.6, "mid": 5.0, "lo": 8.0},
    "dense-q4": {"hi": 3.5, "mid": 4.5, "lo": 7.0},
    "dense-q4k": {"hi": 3.5, "mid": 4.5, "lo": 7.0},  # dense-q4's levels, not calibrated
    "moe": {"hi": 2.25, "mid": 2.75, "lo": 3.0},
    "air": {"hi": 1.7, "mid": 2.5, "lo": 3.0},
    "flash": {"hi": 2.75, "mid": 4.0, "lo": 5.0},
    "qwen36": {"hi": 3.0, "mid": 5.0, "lo": 8.0},
}
LEVELS = ("hi", "mid", "lo")


def cache_dir() -> Path:
    return cache_root() / "bench-models"


def all_names() -> list[str]:
    return [f"{s}-{lv}" for s in SHAPES for lv in LEVELS]


def default_names() -> list[str]:
    """What bench.py runs by default: every level of the Q8_0 dense shape and of the GLM-Air-shaped
    MoE, and the Q4_0 dense shape and the expert-heavy MoE at high agreement only (their other
    levels add little and take ~5-9 minutes each)."""
    return [n for n in all_names() if n.rpartition("-")[0] in ("dense", "air") or n in ("dense-q4-hi", "moe-hi")]


def spec_of(name: str) -> SyntheticSpec:
    shape, _, level = name.rpartition("-")
    if shape not in SHAPES or level not in NOISE[shape]:
        raise KeyError(f"unknown benchmark model {name!r}; known: {', '.join(all_names())}")
    return replace(SHAPES[shape], noise=NOISE[shape][level], name=f"mtpllama-bench-{name}")


def spec_hash(spec: SyntheticSpec) -> str:
    return hashlib.sha256(json.dumps(asdict(spec), sort_keys=True).encode()).hexdigest()[:12]


class _Consume(dict):
    """A dict whose items() hands each entry over and drops it: the float32 weights are freed
    one tensor at a time while write_synthetic quantizes them."""

    def items(self):  # type: ignore[override]
        while self:
            k = next(iter(self))
            yield k, self.pop(k)


def writer(spec):
    """The test-file writer of spec's architecture (mtpllama.testing.arch)."""
    for mod in (deepseek2, qwen35moe):
        if isinstance(spec, mod.SyntheticSpec):
            return WRITERS[mod.ARCH]
    return WRITERS["glm4moe"]


def generate(spec, path: Path, quiet: bool = False) -> Path:
    """Write a synthetic file: ~20 s (dense) / ~60 s and ~8-9 GB of memory (air, moe)."""
    t0 = time.perf_counter()
    tok = train_bpe(n_merges=spec.n_merges)
    w = writer(spec)
    weights = _Consume(w.synthetic_weights(spec, tok))
    n_params = sum(a.size for a in weights.values())
    t1 = time.perf_counter()
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    w.write_synthetic(tmp, spec, tok, weights=weights)
    os.replace(tmp, path)
    if not quiet:
        print(f"[models] {path.name}: {n_params / 1e9:.2f}B parameters, {path.stat().st_size / 2**30:.2f} GiB, "
              f"weights {t1 - t0:.0f} s + quantise/write {time.perf_counter() - t1:.0f} s", file=sys.stderr)
    return path


def ensure(name: str) -> Path:
    """Path of the named benchmark model, generating it when it is not cached.  Files are named
    after a hash of their spec, so a changed spec gives a new file."""
    spec = spec_of(name)
    path = cache_dir() / f"{name}-{spec_hash(spec)}.gguf"
    if not path.exists():
        print(f"[models] generating {name} -> {path}", file=sys.stderr, flush=True)
        generate(spec, path)
    return path


def resolve_model(name: str) -> tuple[str, Path]:
    """(label, path) of a benchmark model name or a GGUF file's path."""
    p = Path(name).expanduser()
    if p.suffix == ".gguf" or p.exists():
        if not p.exists():
            raise SystemExit(f"no such model file: {p}")
        return p.stem, p
    return name, ensure(name)


# --- settings ---------------------------------------------------------------------------

def fixed_spec(k: int, p_min: float) -> mtpllama.SpecConfig:
    """Drafting exactly k tokens per step (unless draft_p_min stops a draft): the controller off."""
    return mtpllama.SpecConfig(draft_max=k, draft_p_min=p_min, adaptive=False)


@dataclass(frozen=True)
class Setting:
    """One way of decoding that a run compares."""

    mode: str  # "plain", "fresh" (plain in a new process per run), "fixed" (k drafts, draft_p_min p), "adaptive"
    k: int = 0
    p: float = 0.0

    @property
    def label(self) -> str:
        if self.mode == "fixed":
            return f"k={self.k} p={self.p:g}"
        if self.mode == "fresh":
            return "plain, fresh process"
        return self.mode

    def spec(self) -> mtpllama.SpecConfig | None:
        """mtpllama's SpecConfig for this setting (None: plain decoding); adaptive is SpecConfig()'s defaults."""
        if self.mode == "fixed":
            return fixed_spec(self.k, self.p)
        if self.mode == "adaptive":
            return mtpllama.SpecConfig()
        return None


PLAIN = Setting("plain")
FRESH = Setting("fresh")
ADAPTIVE = Setting("adaptive")


def settings(ks: list[int], p_mins: list[float], adaptive: bool, fresh: bool) -> list[Setting]:
    """A run's settings in the order they run in a round."""
    out = [PLAIN] + ([FRESH] if fresh else []) + [Setting("fixed", k, p) for p in p_mins for k in ks]
    return out + ([ADAPTIVE] if adaptive else [])
