#!/usr/bin/env python3
"""Drafts accepted per step by verification method and temperature.

    python3 benchmarks/sampling_acceptance.py [--runs 100]

Two synthetic models: the test suite's GLM-4.5-style file (its head is sharper
than the trunk's next-token distribution) and the same shape with two equally
likely successors per token (a genuinely uncertain next token).  Fixed draft
length 3, 48 tokens per run, one prompt and seed per run.
"""
from __future__ import annotations

import argparse
import tempfile
from dataclasses import replace
from pathlib import Path

import mtpllama
from mtpllama import SamplingConfig, SessionConfig, SpecConfig
from mtpllama.testing import add_second_successor, synthetic_weights, train_bpe, write_synthetic
from mtpllama.testing.fixtures import PROMPTS, SPECS


def measure(path: str, temps, methods, runs: int) -> dict:
    out = {}
    with mtpllama.Model(path, session_defaults=SessionConfig(n_threads=1)) as m, m.session() as s:
        for t in temps:
            for v in methods:
                acc = steps = 0
                per_pos = [0, 0, 0]
                drafted = [0, 0, 0]
                for i in range(runs):
                    s.reset()
                    r = s.generate(PROMPTS[i % len(PROMPTS)], 48, spec=SpecConfig(3, 0.0, verify=v, adaptive=False),
                                   sampling=SamplingConfig(temperature=t, seed=i))
                    acc += sum(r.stats.accepted)
                    steps += r.stats.steps
                    for j in range(min(3, len(r.stats.drafted))):
                        per_pos[j] += r.stats.accepted[j]
                        drafted[j] += r.stats.drafted[j]
                out[(t, v)] = (acc / steps, [a / d if d else 0.0 for a, d in zip(per_pos, drafted)])
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--runs", type=int, default=100)
    a = ap.parse_args()
    temps, methods = (0.3, 0.8, 1.2), ("rejection", "coupled", "exact")
    tok = train_bpe()
    with tempfile.TemporaryDirectory() as d:
        base = write_synthetic(Path(d) / "glm45.gguf", SPECS["glm45"], tok)
        spec = replace(SPECS["glm45"], noise=0.5)
        branching = write_synthetic(Path(d) / "branching.gguf", spec, tok,
                                    add_second_successor(synthetic_weights(spec, tok), spec, tok))
        for name, path in (("test model (glm45)", base), ("two successors per token", branching)):
            res = measure(str(path), temps, methods, a.runs)
            print(f"\n{name}: accepted drafts per step (acceptance at positions 1/2/3)")
            print("| T | " + " | ".join(methods) + " |")
            print("|---|" + "---|" * len(methods))
            for t in temps:
                cells = [f"{res[(t, v)][0]:.3f} ({'/'.join(f'{x:.2f}' for x in res[(t, v)][1])})" for v in methods]
                print(f"| {t} | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()
