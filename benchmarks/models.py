#!/usr/bin/env python3
"""Generate, list and calibrate the benchmark models (fixtures.py describes them).

    python3 benchmarks/models.py                    # generate (if needed) and list every model
    python3 benchmarks/models.py dense-hi moe-lo    # just these
    python3 benchmarks/models.py --calibrate dense --noise 0.5 1.0 2.0   # acceptance vs noise

Files are cached under ``~/.cache/mtpllama/bench-models`` (or ``$MTPLLAMA_CACHE_DIR/bench-models``)
and never committed.
"""
from __future__ import annotations

import argparse
import json
import sys
import tempfile
from dataclasses import replace
from pathlib import Path

import mtpllama
from fixtures import PROMPT, SHAPES, all_names, cache_dir, ensure, fixed_spec, generate


def measure_acceptance(path: Path, n_tokens: int = 128, threads: int = 2, draft_max: int = 3) -> dict:
    """Greedy acceptance per draft position (fixed k, draft_p_min 0) and plain ms per token."""
    with mtpllama.Model(str(path), session_defaults=mtpllama.SessionConfig(n_threads=threads)) as m:
        plain = m.generate(PROMPT, n_tokens, mtp=False)
        r1 = m.generate(PROMPT, n_tokens, spec=fixed_spec(1, 0.0))
        rk = m.generate(PROMPT, n_tokens, spec=fixed_spec(draft_max, 0.0))
        return {"acc_k1": r1.stats.acceptance, f"acc_k{draft_max}": rk.stats.acceptance,
                "plain_ms_per_token": 1e3 / plain.stats.decode_tokens_per_second,
                "distinct_tokens": len(set(plain.tokens)), "lossless": plain.tokens == rk.tokens == r1.tokens,
                "text": plain.text[:60]}


def calibrate(shape: str, noises: list[float], n_tokens: int, threads: int = 2) -> None:
    """Throw-away files of one shape at each noise level, and their acceptance."""
    for g in noises:
        spec = replace(SHAPES[shape], noise=g)
        with tempfile.TemporaryDirectory(dir=cache_dir().parent) as d:
            p = generate(spec, Path(d) / "cal.gguf", quiet=True)
            r = measure_acceptance(p, n_tokens, threads)
        print(json.dumps({"shape": shape, "noise": g, **r}), flush=True)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("names", nargs="*", help=f"models (default: all): {' '.join(all_names())}")
    ap.add_argument("--calibrate", metavar="SHAPE", choices=sorted(SHAPES),
                    help="generate throw-away files of SHAPE at each --noise and print their acceptance")
    ap.add_argument("--noise", type=float, nargs="+", default=[0.5, 1.0, 1.5, 2.0, 3.0])
    ap.add_argument("--tokens", type=int, default=128)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--measure", action="store_true", help="also print each model's acceptance and speed")
    a = ap.parse_args(argv)
    cache_dir().mkdir(parents=True, exist_ok=True)
    if a.calibrate:
        calibrate(a.calibrate, a.noise, a.tokens, a.threads)
        return 0
    for name in a.names or all_names():
        p = ensure(name)
        line = {"name": name, "path": str(p)}
        if a.measure:
            line.update(measure_acceptance(p, a.tokens, a.threads))
        print(json.dumps(line), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
