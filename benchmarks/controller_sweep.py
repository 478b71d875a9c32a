#!/usr/bin/env python3
"""The adaptive controller against simulated models, swept over seeds and disturbances.

    python3 benchmarks/controller_sweep.py [--seeds 12] [--steps 1000]
    MTPLLAMA_LIBRARY=/tmp/other/libmtpllama.so python3 benchmarks/controller_sweep.py   # another build

Runs ``mtpl_controller_simulate`` (no model file, no timing noise from this machine) on the
step-cost shapes and acceptances measured on the benchmark files and prints, per scenario, the
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
from collections import Counter

from mtpllama import _lib

ffi, lib = _lib.ffi, _lib.lib
MS = 1e-3

# Step costs (ms) by k = 0..4 when drafting every step, and acceptance by position, measured on the
# benchmark files (tests/test_controller.py holds the controller to the same shapes).
DENSE = [15.1, 27.8, 38.6, 39.4, 53.4]      # dense-q4: not monotonic in k (4 rows take the repacked gemm)
MOE = [16.2, 33.1, 46.5, 57.4, 74.2]        # moe: grows about linearly in k
DENSE_Q8 = [30.7, 32.3, 40.4, 43.5, 66.7]   # dense, air: the controller's own estimates (with patches/0005)
AIR = [20.2, 31.8, 42.6, 53.6, 68.7]
MOE_HI = [15.4, 28.3, 40.0, 51.8, 63.0]     # moe-hi: k = 1 and 2 beat plain by 6-7% at its acceptance, k = 3 by 3%
MOE_HI_ACCEPT = [0.95, 0.87, 0.85, 0.85]
HIGH = [0.97, 0.86, 0.80, 0.76]
MEDIUM = [0.53, 0.44, 0.40, 0.40]
# expert-heavy shape where one draft per step beats plain by 7% and deeper ones only match it
MOE_HI_FLAT = [13.2, 24.1, 36.6, 45.5, 53.3]
# the dense Q8_0 file at low agreement (dense-lo): one draft per step about breaks even with plain
# decoding, deeper drafts lose
LOW_Q8 = [0.14, 0.05, 0.02, 0.02]
SHAPES = {"dense": (DENSE, HIGH), "dense-q8": (DENSE_Q8, HIGH), "air": (AIR, HIGH),
          "moe-hi": (MOE_HI, MOE_HI_ACCEPT), "dense-medium": (DENSE, MEDIUM)}


def simulate(cost_ms, accept, n_steps, *, seed, draft_ms, catch_up_ms=0.19, switch=-1, speed_after=0.0,
             switch_ms=0.0, p_drafted=None, burst=(0, 0, 1.0)):
    """The engine's controller against a simulated model (mtpl_controller_simulate): its choice of
    k at each step, and the tokens and seconds in all.  catch_up_ms: per position caught up after
    plain steps, as measured on the dense files (the expert-heavy one: 0.06)."""
    sim = ffi.new("mtpl_controller_sim *")
    sim.k_max = len(cost_ms) - 1
    sim.n_steps = n_steps
    sim.n_prompt = 30
    sim.switch_step = switch
    for k, c in enumerate(cost_ms):
        sim.cost_s[k] = c * MS
    sim.draft_s = draft_ms * MS
    sim.catch_up_s = catch_up_ms * MS
    sim.noise = 0.05
    for i, a in enumerate(accept):
        sim.accept[i] = sim.accept_after[i] = a
    for i, p in enumerate(p_drafted or []):
        sim.p_drafted[i] = p
    sim.speed_after = speed_after
    sim.k_switch_s = switch_ms * MS
    sim.burst_start, sim.burst_steps, sim.burst_speed = burst
    sim.seed = seed
    ks = ffi.new("int32_t[]", max(n_steps, 1))
    tokens, seconds = ffi.new("double *"), ffi.new("double *")
    _lib.check(lib.mtpl_controller_simulate(sim, ks, tokens, seconds))
    return list(ks)[:n_steps], tokens[0], seconds[0]


def fixed_rates(cost_ms, accept, p_drafted=None, draft_ms=0.0, switch_ms=0.0):
    """Expected tokens per ms of asking for k drafts every step: E(k) / T(k).  With p_drafted,
    draft_p_min stops drafting: draft i is made with probability p_drafted[i] (given drafts
    before it were) and then accepted with probability accept[i]; a step that made j < k drafts
    costs cost_ms[j] plus the MTP decode of the draft it did not make, and switch_ms more when
    the step before made another number (the simulator's graph rebuilds)."""
    p_drafted = p_drafted or [1.0] * len(accept)
    rates = []
    for k in range(len(cost_ms)):
        expected, run, cost, p_made = 1.0, 1.0, 0.0, 1.0  # p_made: P(the first j drafts were made)
        p_same = 0.0  # P(two steps in a row make as many drafts)
        for j in range(k + 1):
            stop = 1.0 - p_drafted[j] if j < k else 1.0  # P(drafting stops after j drafts | j made)
            cost += p_made * stop * (cost_ms[j] + (draft_ms if j < k else 0.0))
            p_same += (p_made * stop) ** 2
            if j < k:
                run *= p_drafted[j] * accept[j]
                expected += run
                p_made *= p_drafted[j]
        rates.append(expected / (cost + (1.0 - p_same) * switch_ms))
    return rates


def run(cost, accept, steps, seeds, *, slower_steps=0.0, **kw):
    """Efficiencies over seeds against the best fixed k, and the worst seed's choices.
    slower_steps: step-equivalents the disturbance adds to a fixed-k run of `steps` steps."""
    best = max(fixed_rates(cost, accept, kw.get("p_drafted"), kw["draft_ms"], kw.get("switch_ms", 0.0)))
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
    out = run(MOE, [0.9] * 4, n, 3 * seeds, p_drafted=[0.55] * 4, draft_ms=1.5, catch_up_ms=0.06)
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
