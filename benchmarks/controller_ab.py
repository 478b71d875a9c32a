#!/usr/bin/env python3
"""The adaptive controller of two or more engine builds side by side, with fixed k and plain.

    python3 benchmarks/controller_ab.py moe-hi --rounds 12 --lib head=/tmp/a/libmtpllama.so \\
        --lib variant=/tmp/b/libmtpllama.so [--fixed 1 3] [--tokens 128] [--threads 2]

Each configuration is a long-lived server process holding one session, kept across the rounds
as bench.py keeps it, so a controller carries what it learned from round to round.  A build
is a copied libmtpllama.so with its mtpllama.h beside it (the binding reads the header next to
the library), or a directory holding a whole `mtpllama` package (an unpacked wheel of another
commit: its stats may have other fields).  Every round runs each server once, the order rotating; printed per
configuration: median tokens/s, the medians of its per-round ratios to plain decoding and to
each fixed k, and for adaptive the draft lengths it chose (steps at k = 0..4, all rounds).
Fixed k and plain run on the first build.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
from pathlib import Path

from fixtures import PROMPT, resolve_model
from runners import PACKAGE_ROOT

# One configuration's server: a session kept across the rounds; each input line runs it once and
# prints decode tokens/s and the steps at k = 0..4.  k: 0 plain, -1 adaptive (SpecConfig()), else fixed.
SERVER = r'''
import json, sys
sys.path.insert(0, {package_root!r})
import mtpllama
m = mtpllama.Model({path!r}, session_defaults=mtpllama.SessionConfig(n_threads={threads}, n_ctx={ctx}))
k = {k}
spec = None if k == 0 else mtpllama.SpecConfig() if k < 0 else mtpllama.SpecConfig(draft_max=k, draft_p_min=0.0,
                                                                                      adaptive=False)
s = m.session(mtp=spec is not None)
for line in sys.stdin:
    s.reset()
    st = s.generate({prompt!r}, {tokens}, spec=spec).stats
    print(json.dumps([st.decode_tokens_per_second, st.drafts_per_step[:7]]), flush=True)
'''


class Server:
    def __init__(self, lib: str, k: int, path: Path, a) -> None:
        # a directory: an installed package's root (an unpacked wheel), its own Python code with its library
        root, env = (lib, dict(os.environ)) if Path(lib).is_dir() else (PACKAGE_ROOT, dict(os.environ, MTPLLAMA_LIBRARY=lib))
        code = SERVER.format(package_root=str(root), path=str(path), threads=a.threads, ctx=a.ctx, k=k,
                             prompt=a.prompt, tokens=a.tokens)
        self.p = subprocess.Popen([sys.executable, "-c", code], env=env, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                  text=True)

    def run(self) -> tuple[float, list[int]]:
        self.p.stdin.write("go\n")
        self.p.stdin.flush()
        line = self.p.stdout.readline()
        if not line:
            raise RuntimeError("a server exited; run it alone to see its error")
        tps, ks = json.loads(line)
        return tps, ks

    def close(self) -> None:
        self.p.stdin.close()
        self.p.wait()


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("model", help="benchmark model name (models.py) or GGUF path")
    ap.add_argument("--lib", action="append", required=True, metavar="NAME=PATH",
                    help="an engine build to run adaptive with (repeatable)")
    ap.add_argument("--fixed", type=int, nargs="*", default=[1], help="fixed draft lengths to run alongside")
    ap.add_argument("--rounds", type=int, default=8)
    ap.add_argument("--tokens", type=int, default=128)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--ctx", type=int, default=2048)
    ap.add_argument("--prompt", default=PROMPT)
    a = ap.parse_args(argv)
    libs = dict(item.split("=", 1) for item in a.lib)
    _, path = resolve_model(a.model)
    first = next(iter(libs.values()))
    configs = {f"adaptive {n}": (lib, -1) for n, lib in libs.items()}
    configs.update({f"k={k}": (first, k) for k in a.fixed})
    configs["plain"] = (first, 0)
    servers = {n: Server(lib, k, path, a) for n, (lib, k) in configs.items()}
    names = list(servers)
    tps: dict[str, list[float]] = {n: [] for n in names}
    chosen: dict[str, list[int]] = {n: [0] * 5 for n in names}
    try:
        for n in names:
            servers[n].run()  # warm-up
        for r in range(a.rounds):
            for n in names[r % len(names):] + names[:r % len(names)]:
                t, ks = servers[n].run()
                tps[n].append(t)
                chosen[n] = [x + y for x, y in zip(chosen[n], ks + [0] * (5 - len(ks)))]
            print(f"round {r + 1}: " + ", ".join(f"{n} {v[-1]:.1f}" for n, v in tps.items()), flush=True)
    finally:
        for s in servers.values():
            s.close()

    def paired(n: str, base: str) -> float:
        return statistics.median(x / y for x, y in zip(tps[n], tps[base]))

    bases = ["plain"] + [f"k={k}" for k in a.fixed]
    for n in names:
        ratios = ", ".join(f"x {b} {paired(n, b):.3f}" for b in bases if b != n)
        ks = f", k chosen {chosen[n]}" if n.startswith("adaptive") else ""
        print(f"{n}: median {statistics.median(tps[n]):.1f} t/s, paired {ratios}{ks}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
