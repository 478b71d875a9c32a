#!/usr/bin/env python3
"""What batch invariance costs: trunk pass time by batch size, with and without it.

    python3 benchmarks/verify_cost.py dense-hi moe-hi [--tokens 96] [--repeats 3] [--threads 2]

mtpllama computes every row of a verification batch with the CPU kernels a lone row takes
(``mtpllama.set_batch_invariant(True)``, the default; patches/0003), so that greedy MTP output
equals plain output bit for bit.  llama.cpp would otherwise switch to batched kernels (tinyBLAS,
repacked gemm, tiled K-quants) for 2+ / 4+ / 8+ rows: faster, but rounding differently.

For each model, k = 0..4 drafted tokens (fixed, draft_p_min 0) is run with invariance on and off,
interleaved; the mean seconds of a decode-phase trunk pass over k+1 rows is t_verify / passes.
Printed: V(n) / V(1) for both modes, on/off per n, and decode tokens/s at each k with the ratio.
"""
from __future__ import annotations

import argparse
import statistics
import sys
from dataclasses import dataclass
from pathlib import Path

import mtpllama
from fixtures import PROMPT, fixed_spec, resolve_model


@dataclass
class VerifyCost:
    """Medians over the repeats, by (batch invariance on, k)."""

    verify_s: dict[tuple[bool, int], float]  # seconds of a decode-phase trunk pass over k + 1 rows
    tps: dict[tuple[bool, int], float]       # decode tokens/s
    lossless: bool                           # with invariance, every k's greedy tokens are the same


def verify_seconds(st: mtpllama.GenerationStats) -> float:
    passes = st.steps - 1  # the prompt pass is a step, timed as prefill
    return st.t_verify / passes if passes > 0 else float("nan")


def measure(path: Path, tokens: int, repeats: int, threads: int, ks: list[int]) -> VerifyCost:
    v: dict[tuple[bool, int], list[float]] = {}
    rate: dict[tuple[bool, int], list[float]] = {}
    equal = True
    with mtpllama.Model(str(path), session_defaults=mtpllama.SessionConfig(n_threads=threads)) as m:
        m.generate(PROMPT, 8, mtp=False)
        ref = None
        for _ in range(repeats):
            for k in ks:
                for inv in (True, False):
                    mtpllama.set_batch_invariant(inv)
                    r = m.generate(PROMPT, tokens, spec=fixed_spec(k, 0.0) if k else None, mtp=k > 0)
                    if inv:
                        ref = ref or r.tokens
                        equal &= r.tokens == ref
                    v.setdefault((inv, k), []).append(verify_seconds(r.stats))
                    rate.setdefault((inv, k), []).append(r.stats.decode_tokens_per_second)
    mtpllama.set_batch_invariant(True)
    return VerifyCost({key: statistics.median(x) for key, x in v.items()},
                      {key: statistics.median(x) for key, x in rate.items()}, equal)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("models", nargs="+", help="benchmark model names (models.py) or GGUF paths")
    ap.add_argument("--tokens", type=int, default=96)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--ks", type=int, nargs="+", default=[0, 1, 2, 3, 4])
    a = ap.parse_args(argv)
    for name in a.models:
        _, path = resolve_model(name)
        res = measure(path, a.tokens, a.repeats, a.threads, a.ks)
        v, rate = res.verify_s, res.tps
        v1 = {inv: v[(inv, a.ks[0])] for inv in (True, False)}
        print(f"\n{name} ({path.name}); greedy output identical across k with invariance: {res.lossless}")
        print(f"{'rows':>4s} {'V/V1 inv':>9s} {'V/V1 off':>9s} {'inv/off':>8s} {'tok/s inv':>10s} {'tok/s off':>10s} {'inv/off':>8s}")
        for k in a.ks:
            print(f"{k + 1:4d} {v[(True, k)] / v1[True]:9.2f} {v[(False, k)] / v1[False]:9.2f} "
                  f"{v[(True, k)] / v[(False, k)]:8.2f} {rate[(True, k)]:10.1f} {rate[(False, k)]:10.1f} "
                  f"{rate[(True, k)] / rate[(False, k)]:8.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
