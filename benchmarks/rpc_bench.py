#!/usr/bin/env python3
"""MTP over llama.cpp's RPC backend: two `mtpllama-rpc-server` workers on loopback, each behind a proxy
that delays every chunk of bytes by a fixed one-way time, all layers on the workers.

    python3 benchmarks/rpc_bench.py                                  # the issue's grid (~30 min)
    python3 benchmarks/rpc_bench.py --models dense-hi --delays 0 5 --tokens 64 --rounds 1

Per model, one-way delay and MTP block placement (local: mtp_device="CPU", the default with workers;
remote: on the second worker, where n_gpu_layers alone would put it), decode tokens/s of plain decoding, fixed k (p_min 0) and the defaults,
interleaved, one prompt kind per round (code, prose, chat-formatted), one thread per process.  Prints
a table and writes --json.  Every MTP output is checked against plain output.
"""
from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import socket
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path

import mtpllama
from fixtures import ensure
from mtpllama.testing.rpc import Worker, free_port

PROMPTS = [
    "def fibonacci(n):\n    \"\"\"Return the n-th Fibonacci number.\"\"\"\n",
    "The history of the printing press begins in the fifteenth century, when",
    "<|user|>\nExplain what a hash map is, briefly.<|assistant|>\n",
]


class DelayProxy:
    """Forwards 127.0.0.1:port to a worker; each chunk read from either side is written to the other
    `delay` seconds after it arrived (pipelined: the delay adds latency, not a bandwidth cap)."""

    def __init__(self, target_port: int, delay: float) -> None:
        self.target_port, self.delay, self.port = target_port, delay, free_port()
        self.loop = asyncio.new_event_loop()
        self.ready = threading.Event()
        threading.Thread(target=self._run, daemon=True).start()
        self.ready.wait()

    def _run(self) -> None:
        asyncio.set_event_loop(self.loop)
        server = self.loop.run_until_complete(asyncio.start_server(self._client, "127.0.0.1", self.port))
        self.ready.set()
        self.loop.run_until_complete(server.serve_forever())

    async def _pump(self, reader, writer) -> None:
        queue: asyncio.Queue = asyncio.Queue()

        async def send() -> None:
            while True:
                due, data = await queue.get()
                if data is None:
                    break
                wait = due - time.monotonic()
                if wait > 0:
                    await asyncio.sleep(wait)
                writer.write(data)
                await writer.drain()
            writer.close()

        sender = asyncio.ensure_future(send())
        while True:
            data = await reader.read(1 << 20)
            if not data:
                break
            queue.put_nowait((time.monotonic() + self.delay, data))
        queue.put_nowait((0.0, None))
        await sender

    async def _client(self, creader, cwriter) -> None:
        for w in (cwriter,):
            w.get_extra_info("socket").setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        wreader, wwriter = await asyncio.open_connection("127.0.0.1", self.target_port)
        wwriter.get_extra_info("socket").setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        await asyncio.gather(self._pump(creader, wwriter), self._pump(wreader, cwriter), return_exceptions=True)


def settings(ks: list[int]) -> list[tuple[str, mtpllama.SpecConfig | None]]:
    return ([("plain", None)] + [(f"k={k}", mtpllama.SpecConfig(k, 0.0, adaptive=False)) for k in ks]
            + [("defaults", mtpllama.SpecConfig())])


def run_cell(path: Path, endpoints: list[str], mtp_device: str | None, a: argparse.Namespace) -> dict:
    cfg = mtpllama.SessionConfig(n_threads=a.threads, n_ctx=2048)
    rates: dict[str, list[float]] = {}
    acc: dict[str, list[float]] = {}
    defaults_steps: list[dict] = []
    lossless = True
    t0 = time.perf_counter()
    with mtpllama.Model(str(path), n_gpu_layers=-1, rpc_servers=endpoints, mtp_device=mtp_device,
                        session_defaults=cfg) as m:
        load_s = time.perf_counter() - t0
        sessions = {name: m.session(mtp=spec is not None) for name, spec in settings(a.ks)}
        for name, spec in settings(a.ks):
            sessions[name].generate(PROMPTS[0], 8, spec=spec)  # warm-up
        for rnd in range(a.rounds):
            prompt = PROMPTS[rnd % len(PROMPTS)]
            plain = None
            for name, spec in settings(a.ks):
                s = sessions[name]
                s.reset()
                r = s.generate(prompt, a.tokens, spec=spec)
                rates.setdefault(name, []).append(r.stats.decode_tokens_per_second)
                acc[name] = [round(x, 3) for x in r.stats.acceptance]
                if name == "defaults":  # how the controller spent its steps
                    defaults_steps.append({"steps": r.stats.steps, "drafts_per_step": r.stats.drafts_per_step,
                                           "stateless_passes": r.stats.stateless_passes})
                if spec is None:
                    plain = r.tokens
                elif r.tokens != plain:
                    lossless = False
        placed = m.info.mtp_device
        for s in sessions.values():
            s.close()
    med = {k: statistics.median(v) for k, v in rates.items()}
    best = max(v for k, v in med.items() if k.startswith("k="))
    return {"mtp_device": placed, "load_s": load_s, "median_tps": med, "min_tps": {k: min(v) for k, v in rates.items()},
            "acceptance": acc, "defaults_steps": defaults_steps, "rates": rates, "lossless": lossless, "defaults_vs_plain": med["defaults"] / med["plain"],
            "defaults_vs_plain_paired": statistics.median(d / p for d, p in zip(rates["defaults"], rates["plain"])),
            "best_fixed_vs_plain": best / med["plain"], "defaults_vs_best_fixed": med["defaults"] / best}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--models", nargs="+", default=["dense-hi", "dense-lo", "moe-lo"])
    ap.add_argument("--delays", type=float, nargs="+", default=[0.0, 1.0, 5.0], help="one-way delay, ms")
    ap.add_argument("--placements", nargs="+", default=["local", "remote"], choices=["local", "remote"])
    ap.add_argument("--ks", type=int, nargs="+", default=[1, 2, 3])
    ap.add_argument("--tokens", type=int, default=128)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--threads", type=int, default=1, help="threads of this process and of each worker")
    ap.add_argument("--json", type=Path, default=Path("rpc_bench.json"))
    a = ap.parse_args(argv)
    paths = {name: ensure(name) for name in a.models}
    workers = [Worker(a.threads), Worker(a.threads)]
    out = {"machine": {"platform": platform.platform(), "cpus": os.cpu_count(),
                       "cpu": subprocess.run(["sh", "-c", "grep -m1 'model name' /proc/cpuinfo"],
                                             capture_output=True, text=True).stdout.strip()},
           "args": vars(a) | {"json": str(a.json)}, "cells": []}
    try:
        for name, path in paths.items():
            for delay in a.delays:
                proxies = [DelayProxy(w.port, delay / 1e3) for w in workers]
                eps = [f"127.0.0.1:{p.port}" for p in proxies]
                for place in a.placements:
                    cell = run_cell(path, eps, "CPU" if place == "local" else eps[-1], a)
                    cell.update(model=name, delay_ms=delay, placement=place)
                    out["cells"].append(cell)
                    a.json.write_text(json.dumps(out, indent=1))
                    print(f"[rpc_bench] {name} {delay:g} ms {place} ({cell['mtp_device']}): "
                          + " ".join(f"{k} {v:.1f}" for k, v in cell["median_tps"].items())
                          + f"  defaults/plain {cell['defaults_vs_plain']:.2f} (paired {cell['defaults_vs_plain_paired']:.2f}),"
                          + f" lossless {cell['lossless']}",
                          flush=True)
    finally:
        for w in workers:
            w.stop()
    print("\n| model | one-way delay | MTP block | plain t/s | best fixed / plain | defaults / plain (paired) | "
          "defaults / best fixed | lossless |\n|---|---|---|---|---|---|---|---|")
    for c in out["cells"]:
        print(f"| {c['model']} | {c['delay_ms']:g} ms | {c['placement']} | {c['median_tps']['plain']:.1f} | "
              f"{c['best_fixed_vs_plain']:.2f}x | {c['defaults_vs_plain']:.2f}x ({c['defaults_vs_plain_paired']:.2f}x) | "
              f"{c['defaults_vs_best_fixed']:.2f}x | "
              f"{c['lossless']} |")
    return 0 if all(c["lossless"] for c in out["cells"]) else 1


if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    sys.exit(main())
