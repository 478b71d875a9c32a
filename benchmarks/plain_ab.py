#!/usr/bin/env python3
"""Plain decoding, mtpllama against upstream, each run in a fresh process.

    python3 benchmarks/plain_ab.py dense-hi moe-lo [--rounds 6] [--tokens 128] [--threads 2]

bench.py keeps one mtpllama process for all of a model's settings (so that the adaptive
controller keeps what it learned), while every upstream run is a new process.  Here both
engines start cold on every run, in alternating order, and the ratio is taken per round (the
two runs back to back).  --load as bench.py's: each engine's default (mtpllama reads the file
into memory on huge pages, upstream maps it), or both the same way (memory, mmap).
Both engines run as in bench.py (runners.py).
"""
from __future__ import annotations

import argparse
import statistics
import sys

from fixtures import PLAIN, PROMPT, resolve_model
from runners import LOADS, Upstream, build_upstream_tools, fresh_plain


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("models", nargs="+", help="benchmark model names (models.py) or GGUF paths")
    ap.add_argument("--rounds", type=int, default=6)
    ap.add_argument("--tokens", type=int, default=128)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--ctx", type=int, default=2048)
    ap.add_argument("--prompt", default=PROMPT)
    ap.add_argument("--load", choices=sorted(LOADS), default="default", help="as bench.py's --load")
    a = ap.parse_args(argv)
    tools = build_upstream_tools()
    for name in a.models:
        label, path = resolve_model(name)
        up = Upstream(tools, path, a.threads, a.ctx, timeout=600, load=a.load)
        ratios = []
        for r in range(a.rounds):
            runs = {}
            for engine in (("mtpllama", "upstream") if r % 2 == 0 else ("upstream", "mtpllama")):
                smp = (fresh_plain(path, a.threads, a.ctx, a.prompt, a.tokens, a.load) if engine == "mtpllama"
                       else up.run(PLAIN, a.prompt, a.tokens))
                runs[engine] = smp.tps
            ratios.append(runs["mtpllama"] / runs["upstream"])
            print(f"{label} round {r + 1}: mtpllama {runs['mtpllama']:.2f} t/s, upstream {runs['upstream']:.2f} t/s, "
                  f"ratio {ratios[-1]:.3f}", flush=True)
        print(f"{label}: plain mtpllama / upstream, median of {a.rounds} rounds {statistics.median(ratios):.3f} "
              f"(min {min(ratios):.3f}, max {max(ratios):.3f})", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
