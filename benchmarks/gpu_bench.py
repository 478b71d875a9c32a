#!/usr/bin/env python3
"""The benchmark of the GPU check (benchmarks/gpu_check.sh): mtpllama against upstream's tools on a
GPU, full offload and the GLM recipe (routed experts in RAM, the rest and the whole MTP block on the
GPU), plain vs fixed k vs the defaults, interleaved rounds, three prompt kinds.

    python3 benchmarks/gpu_bench.py --tools build/gpu/bin --json out.json
    python3 benchmarks/gpu_bench.py --tools ... --cpu-rehearsal        # every step, on a CPU

Prints per configuration: decode tokens/s (median over rounds and prompts) of every setting, the
ratios the CUDA issue sets goals for (defaults against our best fixed k, upstream's best fixed k and
plain), greedy equality of every MTP output with plain output, the cost of batch-invariant
verification (mtpllama.set_batch_invariant off vs on) and the CUDA graph counters.  The model is the
Air-shaped benchmark file (fixtures.py "air", hi agreement): 1.85 GiB, generated in about a minute.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path

import mtpllama
from analysis import UpstreamTools
from fixtures import ADAPTIVE, PLAIN, Setting, ensure
from runners import LOADS, Load, Upstream

PROMPTS = {
    "code": "def fibonacci(n):\n    \"\"\"Return the n-th Fibonacci number.\"\"\"\n",
    "prose": "The history of the printing press begins in the fifteenth century, when",
    "chat": "<|user|>\nExplain what a hash map is, briefly.<|assistant|>\n",
}


def configs(cpu: bool, threads: int) -> dict[str, tuple[dict, list[str]]]:
    """name -> (mtpllama Model kwargs, upstream tool arguments)."""
    if cpu:  # the rehearsal: the same calls, no device to place on
        return {"cpu": ({}, [])}
    gpu = next((d.name for d in mtpllama.devices() if d.kind == "gpu"), "CUDA0")
    return {
        "full": ({"n_gpu_layers": -1}, ["-ngl", "99"]),
        "recipe": ({"n_gpu_layers": -1, "tensor_overrides": ("exps=CPU",), "mtp_device": gpu},
                   ["-ngl", "99", "-ot", "exps=CPU"]),
    }


def graph_counts() -> dict[str, int]:
    try:
        return mtpllama.cuda_graph_counts()
    except mtpllama.NoBackendError:
        return {}


def run_config(name: str, path: Path, model_kw: dict, up_args: list[str], tools: UpstreamTools | None,
               a: argparse.Namespace) -> dict:
    ks = a.ks if name != "recipe" else a.recipe_ks
    ours = [PLAIN] + [Setting("fixed", k, 0.0) for k in ks] + [ADAPTIVE]
    theirs = [PLAIN] + [Setting("fixed", k, 0.0) for k in a.upstream_ks]
    n = a.tokens if name != "recipe" else a.recipe_tokens
    LOADS[f"gpu-{name}"] = Load(None, up_args)
    up = Upstream(tools, path, a.threads, 4096, timeout=300, load=f"gpu-{name}") if tools else None
    rates: dict[str, list[float]] = {}
    acc: dict[str, list[float]] = {}
    lossless = True
    cfg = mtpllama.SessionConfig(n_threads=a.threads, n_ctx=4096)
    with mtpllama.Model(str(path), session_defaults=cfg, **model_kw) as m:
        print(f"[gpu_bench] {name}: MTP block on {m.info.mtp_device}", flush=True)
        sessions = {s: m.session(mtp=s != PLAIN) for s in ours}
        for s in ours:  # warm-up (CUDA graphs, caches)
            sessions[s].generate(PROMPTS["code"], 16, spec=s.spec())
        g0 = graph_counts()
        for rnd in range(a.rounds):
            for kind, prompt in PROMPTS.items():
                plain_tokens = None
                for s in ours:
                    sess = sessions[s]
                    sess.reset()
                    r = sess.generate(prompt, n, spec=s.spec())
                    rates.setdefault(f"ours {s.label}", []).append(r.stats.decode_tokens_per_second)
                    acc[f"ours {s.label}"] = r.stats.acceptance
                    if s == PLAIN:
                        plain_tokens = r.tokens
                    elif r.tokens != plain_tokens:
                        lossless = False
                        print(f"[gpu_bench] {name} {s.label} {kind}: MTP output differs from plain", flush=True)
                for s in theirs if up else []:
                    smp = up.run(s, prompt, n)
                    rates.setdefault(f"upstream {s.label}", []).append(smp.tps)
                print(f"[gpu_bench] {name} round {rnd} {kind} done", flush=True)
        g1 = graph_counts()
        # batch-invariant verification's cost: the same settings with the mode off, one round
        cost = {}
        for s in (PLAIN, Setting("fixed", 3, 0.0)):
            for on in (True, False):
                mtpllama.set_batch_invariant(on)
                with m.session(mtp=s != PLAIN) as sess:
                    sess.generate(PROMPTS["code"], 16, spec=s.spec())
                    sess.reset()
                    cost[f"{s.label} invariant={'on' if on else 'off'}"] = \
                        sess.generate(PROMPTS["code"], n, spec=s.spec()).stats.decode_tokens_per_second
        mtpllama.set_batch_invariant(True)
        for sess in sessions.values():
            sess.close()
    med = {k: statistics.median(v) for k, v in rates.items()}
    best_ours = max(v for k, v in med.items() if k.startswith("ours k="))
    up_fixed = [v for k, v in med.items() if k.startswith("upstream k=")]
    res = {
        "config": name, "tokens": n, "rounds": a.rounds, "median_tps": med, "min_tps": {k: min(v) for k, v in rates.items()},
        "acceptance": acc, "greedy_mtp_equals_plain": lossless,
        "defaults_vs_best_fixed": med["ours adaptive"] / best_ours,
        "defaults_vs_plain": med["ours adaptive"] / med["ours plain"],
        "defaults_vs_upstream_best_fixed": med["ours adaptive"] / max(up_fixed) if up_fixed else None,
        "ours_plain_vs_upstream_plain": med["ours plain"] / med["upstream plain"] if "upstream plain" in med else None,
        "batch_invariant_cost": {"plain": cost["plain invariant=off"] / cost["plain invariant=on"],
                                 "k=3": cost["k=3 p=0 invariant=off"] / cost["k=3 p=0 invariant=on"],
                                 "tps": cost},
        "cuda_graphs": {k: g1[k] - g0.get(k, 0) for k in g1},
    }
    return res


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--tools", type=Path, help="folder with llama-completion and llama-speculative-simple")
    ap.add_argument("--json", type=Path, required=True)
    ap.add_argument("--model", default="air-hi", help="benchmark model name (fixtures.py) or GGUF path")
    ap.add_argument("--tokens", type=int, default=256)
    ap.add_argument("--recipe-tokens", type=int, default=128)
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--ks", type=int, nargs="+", default=[1, 2, 3, 4, 6])
    ap.add_argument("--recipe-ks", type=int, nargs="+", default=[1, 3])
    ap.add_argument("--upstream-ks", type=int, nargs="+", default=[1, 3])
    ap.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    ap.add_argument("--cpu-rehearsal", action="store_true", help="run every step on the CPU, small")
    a = ap.parse_args(argv)
    if a.cpu_rehearsal:
        a.tokens, a.rounds, a.ks, a.upstream_ks = 32, 1, [1, 3], [3]
    t0 = time.perf_counter()
    path = Path(a.model) if a.model.endswith(".gguf") else ensure(a.model)
    gen_s = time.perf_counter() - t0
    tools = None
    if a.tools:
        tools = UpstreamTools(str(a.tools / "llama-completion"), str(a.tools / "llama-speculative-simple"),
                              "", "", 0.0)
    out = {"machine": {"platform": platform.platform(), "cpus": os.cpu_count(),
                       "devices": [vars(d) for d in mtpllama.devices()]},
           "model": str(path), "model_bytes": path.stat().st_size, "model_seconds": gen_s, "results": []}
    for name, (kw, up_args) in configs(a.cpu_rehearsal, a.threads).items():
        out["results"].append(run_config(name, path, kw, up_args, tools, a))
        a.json.write_text(json.dumps(out, indent=1))
    print(f"\n{'config':8s} {'setting':20s} {'median t/s':>10s} {'min t/s':>8s}")
    for r in out["results"]:
        for k, v in r["median_tps"].items():
            print(f"{r['config']:8s} {k:20s} {v:10.1f} {r['min_tps'][k]:8.1f}")
    print(f"\n{'config':8s} {'dflt/best':>9s} {'dflt/plain':>10s} {'dflt/up best':>12s} {'plain/up':>8s} "
          f"{'lossless':>8s} {'BI cost plain':>13s} {'BI cost k=3':>11s}  cuda graphs")
    for r in out["results"]:
        f = lambda x: f"{x:.3f}" if x is not None else "-"  # noqa: E731
        print(f"{r['config']:8s} {f(r['defaults_vs_best_fixed']):>9s} {f(r['defaults_vs_plain']):>10s} "
              f"{f(r['defaults_vs_upstream_best_fixed']):>12s} {f(r['ours_plain_vs_upstream_plain']):>8s} "
              f"{str(r['greedy_mtp_equals_plain']):>8s} {f(r['batch_invariant_cost']['plain']):>13s} "
              f"{f(r['batch_invariant_cost']['k=3']):>11s}  {r['cuda_graphs']}")
    print(f"\nmodel {path.name}: {path.stat().st_size / 2**30:.2f} GiB (ready in {gen_s:.0f} s); json: {a.json}")
    return 0 if all(r["greedy_mtp_equals_plain"] for r in out["results"]) else 1


if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    sys.exit(main())
