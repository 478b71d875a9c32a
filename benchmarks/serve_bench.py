#!/usr/bin/env python3
"""Serving benchmark: aggregate tokens/s of `mtpllama serve` and of upstream's `llama-server`
(built from the same pinned, patched tree by build_upstream.py) on the same file, side by side.

    python3 benchmarks/serve_bench.py dense-hi --streams 1 2 4 8 --tokens 128 --requests 2 --repeats 2

Each server runs alone (the machine has 2 cores), with --parallel max(streams) slots and 2 threads;
for each concurrency N, N clients each send --requests greedy /v1/completions requests one after
another (prompts: code, prose and a chat-formatted one, in rotation), and the aggregate is the
completion tokens of all replies over the wall time from the first request to the last reply.
Configurations: ours in the exact and batched modes and upstream, each with MTP on (ours: the
defaults; upstream: --spec-type draft-mtp --spec-draft-n-max 3) and off.  The repeats interleave
the configurations (the order rotates); the table gives medians and the ratios of medians.
Greedy replies are compared too: ours must not depend on the concurrency nor on MTP.
"""
from __future__ import annotations

import argparse
import http.client
import json
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

PROMPTS = [
    "def merge_sorted(a, b):\n    \"\"\"Merge two sorted lists into one sorted list.\"\"\"\n",
    "The river ran high that spring, and the people of the valley",
    "<|user|>\nWrite a function that reverses a linked list.\n<|assistant|>\n",
    "import os\nimport sys\n\n\ndef main(argv):\n",
]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Server:
    def __init__(self, cmd: list[str], port: int, log: Path) -> None:
        self.port = port
        self.logf = open(log, "wb")
        self.proc = subprocess.Popen(cmd, stdout=self.logf, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 300
        while True:
            if self.proc.poll() is not None:
                raise SystemExit(f"server exited ({self.proc.returncode}): {' '.join(cmd)}\n{log.read_text()[-3000:]}")
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=2) as r:
                    if r.status == 200:
                        return
            except OSError:
                pass
            if time.monotonic() > deadline:
                self.stop()
                raise SystemExit(f"server did not come up: {' '.join(cmd)}")
            time.sleep(0.3)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(60)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.logf.close()


def complete(port: int, prompt: str, max_tokens: int) -> tuple[int, str]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=600)
    body = {"prompt": prompt, "max_tokens": max_tokens, "temperature": 0.0}
    conn.request("POST", "/v1/completions", body=json.dumps(body).encode(), headers={"Content-Type": "application/json"})
    r = conn.getresponse()
    data = json.loads(r.read())
    conn.close()
    if r.status != 200:
        raise RuntimeError(f"HTTP {r.status}: {data}")
    return data["usage"]["completion_tokens"], data["choices"][0]["text"]


def drive(port: int, n_clients: int, per_client: int, max_tokens: int) -> tuple[float, int, dict]:
    """(aggregate tokens/s, tokens, {(client, request): text})"""
    texts: dict = {}
    counts = [0] * n_clients
    errors: list = []
    start = threading.Barrier(n_clients + 1)

    def client(c: int) -> None:
        start.wait()
        try:
            for r in range(per_client):
                n, text = complete(port, PROMPTS[(c + r) % len(PROMPTS)], max_tokens)
                counts[c] += n
                texts[(c, r)] = text
        except Exception as e:  # reported below
            errors.append(e)

    threads = [threading.Thread(target=client, args=(c,)) for c in range(n_clients)]
    for t in threads:
        t.start()
    start.wait()
    t0 = time.perf_counter()
    for t in threads:
        t.join()
    wall = time.perf_counter() - t0
    if errors:
        raise errors[0]
    return sum(counts) / wall, sum(counts), texts


def main(argv: list[str] | None = None) -> int:
    from fixtures import resolve_model
    from runners import describe_machine

    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("model", help="a benchmark model name (fixtures.py) or a GGUF path")
    ap.add_argument("--streams", type=int, nargs="+", default=[1, 2, 4, 8])
    ap.add_argument("--tokens", type=int, default=128)
    ap.add_argument("--requests", type=int, default=2, help="requests per client")
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--ctx", type=int, default=1024, help="context per slot")
    ap.add_argument("--configs", nargs="+",
                    default=["ours-exact-mtp", "ours-exact-plain", "ours-batched-mtp", "ours-batched-plain",
                             "upstream-mtp", "upstream-plain"])
    ap.add_argument("--json", help="write the raw samples here")
    a = ap.parse_args(argv)
    name, path = resolve_model(a.model)
    m = describe_machine()
    cpu = next((ln.split(":", 1)[1].strip() for ln in m.lscpu.splitlines() if ln.startswith("Model name")), "?")
    flags = Path("/proc/cpuinfo").read_text().split("flags", 1)[1].split("\n", 1)[0] if Path("/proc/cpuinfo").exists() else ""
    simd = " ".join(f for f in flags.split() if f.startswith(("avx512", "amx")) or f in ("avx2", "fma"))
    print(f"# {name}: {path}\n# machine: {cpu} ({simd}) | nproc {m.nproc} | "
          f"commit {m.git_commit}{' (dirty)' if m.git_dirty else ''}", flush=True)
    server_bin = None
    if any(c.startswith("upstream") for c in a.configs):
        import build_upstream
        server_bin = build_upstream.build()["SERVER"]
    slots = max(a.streams)
    logdir = Path(tempfile.mkdtemp(prefix="serve_bench_"))

    def command(cfg: str, port: int) -> list[str]:
        if cfg.startswith("ours"):
            mode = cfg.split("-")[1]
            cmd = [sys.executable, "-m", "mtpllama", "serve", "-m", str(path), "--port", str(port), "-t",
                   str(a.threads), "-c", str(a.ctx), "--parallel", str(slots), "--batching", mode]
            return cmd + (["--no-mtp"] if cfg.endswith("plain") else [])
        cmd = [server_bin, "-m", str(path), "--port", str(port), "-t", str(a.threads), "-tb", str(a.threads),
               "-c", str(a.ctx * slots), "-np", str(slots), "--no-webui"]
        if cfg.endswith("mtp"):
            cmd += ["--spec-type", "draft-mtp", "--spec-draft-n-max", "3"]
        return cmd

    samples: dict = {}
    texts: dict = {}
    for rep in range(a.repeats):
        order = a.configs[rep % len(a.configs):] + a.configs[:rep % len(a.configs)]
        for cfg in order:
            port = _free_port()
            srv = Server(command(cfg, port), port, logdir / f"{cfg}-{rep}.log")
            try:
                complete(port, PROMPTS[0], 16)  # warm-up
                for n in a.streams:
                    rate, ntok, tx = drive(port, n, a.requests, a.tokens)
                    samples.setdefault((cfg, n), []).append(rate)
                    texts[(cfg, n, rep)] = tx
                    print(f"rep {rep} {cfg:20s} streams {n}: {rate:7.1f} tok/s ({ntok} tokens)", flush=True)
            finally:
                srv.stop()

    med = {k: statistics.median(v) for k, v in samples.items()}
    print("\n| streams | " + " | ".join(a.configs) + " |")
    print("|---|" + "---|" * len(a.configs))
    for n in a.streams:
        print(f"| {n} | " + " | ".join(f"{med.get((c, n), float('nan')):.1f}" for c in a.configs) + " |")
    print("\nratios of medians:")
    for n in a.streams:
        parts = []
        for mode in ("exact", "batched"):
            on, off, up = med.get((f"ours-{mode}-mtp", n)), med.get((f"ours-{mode}-plain", n)), med.get(("upstream-mtp", n))
            if on and up:
                parts.append(f"ours-{mode} MTP / upstream MTP {on / up:.2f}x")
            if on and off:
                parts.append(f"ours-{mode} MTP on/off {on / off:.2f}x")
        upon, upoff = med.get(("upstream-mtp", n)), med.get(("upstream-plain", n))
        if upon and upoff:
            parts.append(f"upstream MTP on/off {upon / upoff:.2f}x")
        print(f"  streams {n}: " + "; ".join(parts))
    for c in a.configs:
        if (c, 1) in med and (c, 4) in med:
            print(f"  {c}: 4 streams / 1 stream {med[(c, 4)] / med[(c, 1)]:.2f}x")
    # ours: a request's greedy reply is the same at every concurrency, MTP on or off
    ref: dict = {}
    mismatches = 0
    for (cfg, n, rep), tx in texts.items():
        if not cfg.startswith("ours"):
            continue
        for (c, r), text in tx.items():
            key = (c + r) % len(PROMPTS)
            if key in ref and ref[key] != text:
                mismatches += 1
            ref.setdefault(key, text)
    print(f"\nours: replies that differ from the first reply to the same prompt (any mode, MTP, concurrency): "
          f"{mismatches}")
    if a.json:
        Path(a.json).write_text(json.dumps({f"{c}|{n}": v for (c, n), v in samples.items()}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
