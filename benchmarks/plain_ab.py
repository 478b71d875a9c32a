#!/usr/bin/env python3
"""Plain decoding, mtpllama against upstream, each run in a fresh process.

    python3 benchmarks/plain_ab.py dense-hi moe-lo [--rounds 6] [--tokens 128] [--threads 2]

bench.py keeps one mtpllama process for all of a model's settings (so that the adaptive
controller keeps what it learned), while every upstream run is a new process.  Here both
engines start cold on every run, in alternating order, and the ratio is taken per round (the
two runs back to back).  --load as bench.py's: each engine's default (mtpllama reads the file
into memory on huge pages, upstream maps it), or both the same way (memory, mmap).
Upstream's command, and how its speed is read, are bench.py's.
"""
from __future__ import annotations

import argparse
import statistics
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import bench  # noqa: E402
import build_upstream  # noqa: E402

def ours_tps(path: Path, a) -> float:
    return bench.fresh_plain(path, a.threads, a.ctx, a.prompt, a.tokens, a.load)[0]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("models", nargs="+", help="benchmark model names (models.py) or GGUF paths")
    ap.add_argument("--rounds", type=int, default=6)
    ap.add_argument("--tokens", type=int, default=128)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--ctx", type=int, default=2048)
    ap.add_argument("--prompt", default=bench.DEFAULT_PROMPT)
    ap.add_argument("--load", choices=sorted(bench.LOADS), default="default", help="as bench.py's --load")
    a = ap.parse_args(argv)
    built = build_upstream.build()
    bins = {k: built[k] for k in ("SPECULATIVE", "COMPLETION")}
    plain = bench.Setting("plain")
    for name in a.models:
        label, path = bench.resolve_model(name)
        up = bench.Upstream(bins, path, a.threads, a.ctx, timeout=600, load=a.load)
        ratios = []
        for r in range(a.rounds):
            runs = {}
            for engine in (("mtpllama", "upstream") if r % 2 == 0 else ("upstream", "mtpllama")):
                runs[engine] = ours_tps(path, a) if engine == "mtpllama" else up.run(plain, a.prompt, a.tokens).tps
            ratios.append(runs["mtpllama"] / runs["upstream"])
            print(f"{label} round {r + 1}: mtpllama {runs['mtpllama']:.2f} t/s, upstream {runs['upstream']:.2f} t/s, "
                  f"ratio {ratios[-1]:.3f}", flush=True)
        print(f"{label}: plain mtpllama / upstream, median of {a.rounds} rounds {statistics.median(ratios):.3f} "
              f"(min {min(ratios):.3f}, max {max(ratios):.3f})", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
