#!/usr/bin/env python3
"""Parity with upstream llama.cpp on an architecture's test files: the same greedy text as
``llama-completion``, and first-position acceptance at k=1 as ``llama-speculative-simple
--spec-type draft-mtp`` measures it on the same file.

    python3 benchmarks/parity.py deepseek2 --tokens 64 --prompts 20
    python3 benchmarks/parity.py hy_v3 --k 3     # several heads: acceptance over 3 chained drafts

For each test file of the architecture (own head f32, tied head f32, Q8_0; written by its writer
in mtpllama.testing.arch) and each prompt: mtpllama's plain greedy text against llama-completion's,
and the k=1 acceptance (accepted / drafted, p_min 0) of both engines over all prompts.  Both tools
are built from the package's own pinned, patched tree (build_upstream.py).  Exits 1 when a text
differs or an acceptance differs by more than --max-gap (default 0.03).
"""
from __future__ import annotations

import argparse
import re
import subprocess
import sys
import tempfile
from dataclasses import replace
from pathlib import Path

import mtpllama
from mtpllama.testing.arch import WRITERS
from mtpllama.testing.fixtures import PROMPTS
from runners import _generated_text, build_upstream_tools

_RE_DRAFTS = re.compile(r"n_drafted\s*=\s*(\d+)")
_RE_ACCEPT = re.compile(r"n_accept\s*=\s*(\d+)")


# architectures whose files differ from the common case: the NextN blocks of nemotron_h_moe and
# bailingmoe3 have no own embeddings or head, and nemotron's layers need less noise for the head to
# agree with the trunk
BASES = {"nemotron_h_moe": dict(nextn="tied", noise=0.6), "bailingmoe3": dict(nextn="tied"), "hy_v3": dict(nextn="tied"), "mimo2": dict(nextn="tied"), "cohere2moe": dict(nextn="own")}


def files(arch: str, d: Path) -> dict[str, Path]:
    w = WRITERS[arch]
    base = w.SyntheticSpec(**{"nextn": "own", **BASES.get(arch, {})}, norm_noise=0.3, seed=101)
    specs = {f"{base.nextn}-f32": base, "tied-f32": replace(base, nextn="tied", seed=102),
             f"{base.nextn}-q8_0": replace(base, dtype="q8_0", seed=103)}
    return {k: Path(w.write_synthetic(d / f"{k}.gguf", s)) for k, s in specs.items()}


def upstream(cmd: list[str]) -> tuple[str, str]:
    p = subprocess.run(cmd, stdin=subprocess.DEVNULL, capture_output=True, timeout=600)
    out, err = p.stdout.decode("utf-8", "replace"), p.stderr.decode("utf-8", "replace")
    if p.returncode != 0:
        raise RuntimeError(f"{cmd[0]} exited {p.returncode}:\n{err[-3000:]}")
    return out, err


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("arch", choices=sorted(WRITERS))
    ap.add_argument("--tokens", type=int, default=64)
    ap.add_argument("--prompts", type=int, default=20)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--max-gap", type=float, default=0.03)
    ap.add_argument("--k", type=int, default=1, help="draft length of both engines (p_min 0, fixed)")
    a = ap.parse_args(argv)
    tools = build_upstream_tools()
    prompts = PROMPTS[: a.prompts]
    ok = True
    print(f"| file | texts equal | mtpllama k={a.k} acceptance (drafts) | upstream draft-mtp k={a.k} (drafts) | gap |")
    print("|---|---|---|---|---|")
    with tempfile.TemporaryDirectory() as tmp:
        for name, path in files(a.arch, Path(tmp)).items():
            t = str(a.threads)
            common = ["-m", str(path), "-n", str(a.tokens), "-t", t, "-tb", t, "-c", "1024", "--temp", "0", "-s", "0"]
            same, acc, dr, up_acc, up_dr = 0, 0, 0, 0, 0
            cfg = mtpllama.SessionConfig(n_threads=a.threads, n_ctx=1024)
            with mtpllama.Model(str(path), session_defaults=cfg) as m:
                for prompt in prompts:
                    plain = m.generate(prompt, a.tokens, mtp=False)
                    k1 = m.generate(prompt, a.tokens, spec=mtpllama.SpecConfig(a.k, 0.0, adaptive=False))
                    assert k1.tokens == plain.tokens, f"{name}: greedy MTP != plain on {prompt!r}"
                    dr += sum(k1.stats.drafted)
                    acc += sum(k1.stats.accepted)
                    # the tools print each piece with %s, which ends at a NUL byte (the synthetic
                    # vocabulary has a token for byte 0): compare without those
                    # (and the tool's stdout ends with newlines of its own: trailing ones are not compared)
                    # (bytes first: a NUL between the bytes of one character must not split it)
                    want = m.token_bytes(plain.tokens).replace(b"\x00", b"").decode("utf-8", "replace").rstrip("\n")
                    for _ in range(3):  # its asynchronous log sometimes loses the tail at exit: run again
                        out, _ = upstream([tools.completion, *common, "-p", prompt, "-no-cnv"])
                        text = _generated_text(out, prompt)
                        if text == want or not want.startswith(text):
                            break
                    if text == want:
                        same += 1
                    else:
                        ok = False
                        print(f"  {name}: texts differ on {prompt!r}:\n    mtpllama {plain.text!r}\n    upstream {text!r}",
                              file=sys.stderr)
                    for _ in range(3):  # the same asynchronous log may lose the report
                        _, err = upstream([tools.speculative, *common, "-p", prompt, "--spec-type", "draft-mtp",
                                           "--spec-draft-n-max", str(a.k), "--spec-draft-p-min", "0", "-lv", "4"])
                        md, ma = _RE_DRAFTS.search(err), _RE_ACCEPT.search(err)
                        if md and ma:
                            break
                    if not (md and ma):
                        raise RuntimeError(f"no n_drafted / n_accept in llama-speculative-simple's output:\n{err[-2000:]}")
                    up_dr += int(md.group(1))
                    up_acc += int(ma.group(1))
            mine, theirs = acc / max(dr, 1), up_acc / max(up_dr, 1)
            gap = mine - theirs
            ok &= abs(gap) <= a.max_gap and same == len(prompts)
            print(f"| {a.arch} {name} | {same}/{len(prompts)} | {mine:.3f} ({dr}) | {theirs:.3f} ({up_dr}) | {gap:+.3f} |",
                  flush=True)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
