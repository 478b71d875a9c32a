#!/usr/bin/env python3
"""The adaptive controller against simulated models, swept over seeds and disturbances.

    python3 benchmarks/controller_sweep.py [--seeds 12] [--steps 1000]
    MTPLLAMA_LIBRARY=/tmp/other/libmtpllama.so python3 benchmarks/controller_sweep.py   # another build

Runs ``mtpl_controller_simulate`` (no model file, no timing noise from this machine) on the
step-cost shapes and acceptances of tests/test_controller.py and prints, per scenario, the
controller's tokens per second over the best fixed draft length's (which runs through the same
disturbance): the minimum and median over seeds, and the steps at k = 0..4 of the worst seed.
Scenarios:

* steady: no disturbance;
* spell: the machine runs 1.25-1.6x slower for 40-200 steps (other load on a shared machine);
* speed-up: it gets 10-20% faster for good early on, after the first k were timed;
* p-min: draft_p_min stops about half the drafts (step times then vary from a plain step to a
  full k), where drafting does not pay.

A summary line per group gives the minimum, the 10th percentile and how many runs fell below
0.95.  The tests hold the controller to a few of these cases; this sweeps many more, to compare
builds side by side before a full benchmark run.
"""
from __future__ import annotations

import argparse
import statistics
import sys
from collections import Counter
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))

from test_controller import (AIR, DENSE, DENSE_Q8, HIGH, MEDIUM, MOE, MOE_HI, MOE_HI_ACCEPT, MS,  # noqa: E402
                             fixed_rates, simulate)

# expert-heavy shape where one draft per step beats plain by 7% and deeper ones only match it
MOE_HI_FLAT = [13.2, 24.1, 36.6, 45.5, 53.3]
# the dense Q8_0 file at low agreement (benchmarks/models.py, dense-lo): one draft per step about
# breaks even with plain decoding, deeper drafts lose
LOW_Q8 = [0.14, 0.05, 0.02, 0.02]
SHAPES = {"dense": (DENSE, HIGH), "dense-q8": (DENSE_Q8, HIGH), "air": (AIR, HIGH),
          "moe-hi": (MOE_HI, MOE_HI_ACCEPT), "dense-medium": (DENSE, MEDIUM)}


def run(cost, accept, steps, seeds, *, slower_steps=0.0, **kw):
    """Efficiencies over seeds against the best fixed k, and the worst seed's choices.
    slower_steps: step-equivalents the disturbance adds to a fixed-k run of `steps` steps."""
    best = max(fixed_rates(cost, accept, kw.get("p_drafted"), kw.get("draft_ms", 0.0), kw.get("switch_ms", 0.0)))
    best *= steps / (steps + slower_steps)
    out = []
    for seed in range(seeds):
        ks, tokens, seconds = simulate(cost, accept, steps, seed=seed, **kw)
        c = Counter(ks)
        out.append((tokens / (seconds / MS) / best, [c[k] for k in range(len(cost))]))
    return out


def report(name, out, group):
    effs = sorted(e for e, _ in out)
    worst = min(out)
    group.extend(effs)
    print(f"  {name:<34} min {effs[0]:.3f}  median {statistics.median(effs):.3f}  worst seed's k: {worst[1]}")


def summary(title, group):
    group.sort()
    below = sum(e < 0.95 for e in group)
    print(f"{title}: {len(group)} runs, min {group[0]:.3f}, p10 {group[len(group) // 10]:.3f}, "
          f"median {statistics.median(group):.3f}, below 0.95: {below}\n")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--seeds", type=int, default=12)
    ap.add_argument("--steps", type=int, default=1000)
    a = ap.parse_args()
    n, seeds = a.steps, a.seeds
    common = {"draft_ms": 1.5, "switch_ms": 1.5}

    group: list[float] = []
    print("steady")
    for name, (cost, acc) in SHAPES.items():
        report(name, run(cost, acc, n, seeds, **common), group)
    summary("steady", group)

    group = []
    print("slow spell (start, steps, slower by)")
    for name, (cost, acc) in SHAPES.items():
        for start, steps, slow in ((200, 60, 1.4), (300, 120, 1.3), (150, 40, 1.6), (400, 200, 1.25)):
            out = run(cost, acc, n, seeds, burst=(start, steps, slow), slower_steps=(slow - 1.0) * steps, **common)
            report(f"{name} {start}+{steps} x{slow}", out, group)
    summary("slow spell", group)

    group = []
    print("speed-up for good (step, new speed)")
    for name, cost in (("moe-hi-flat", MOE_HI_FLAT), ("moe-hi", MOE_HI)):
        for switch, speed in ((40, 0.85), (60, 0.8), (30, 0.9), (40, 1.15)):
            out = run(cost, MOE_HI_ACCEPT, n, seeds, switch=switch, speed_after=speed, draft_ms=1.3, switch_ms=1.5,
                      slower_steps=(speed - 1.0) * (n - switch))
            report(f"{name} at {switch} x{speed}", out, group)
    summary("speed-up", group)

    group = []
    print("p-min: draft_p_min stops drafts (drafts made with p, accepted with a once made)")
    out = run(MOE, [0.9] * 4, n, 3 * seeds, p_drafted=[0.55] * 4, draft_ms=1.5)
    report("moe p 0.55 a 0.9 (best: plain)", out, group)
    plain = statistics.mean(k[0] / n for _, k in out)
    print(f"  mean share of plain steps: {plain:.3f}")
    for name, (cost, acc), made in (("dense", SHAPES["dense"], [0.95, 0.9, 0.85, 0.8]),
                                    ("dense-q8", SHAPES["dense-q8"], [0.9, 0.8, 0.7, 0.7]),
                                    ("air", SHAPES["air"], [0.9, 0.85, 0.8, 0.8]),
                                    ("dense-q8 low", (DENSE_Q8, LOW_Q8), [0.85, 0.8, 0.5, 0.5])):
        out = run(cost, [min(1.0, a / m) for a, m in zip(acc, made)], n, seeds, p_drafted=made, draft_ms=1.5,
                  switch_ms=1.5)
        report(f"{name} p {made[0]}..{made[-1]}", out, group)
    summary("p-min", group)


if __name__ == "__main__":
    main()
