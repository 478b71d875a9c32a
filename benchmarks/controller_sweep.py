#!/usr/bin/env python3
"""The adaptive controller against simulated models, swept over seeds and disturbances.

    python3 benchmarks/controller_sweep.py [--seeds 12] [--steps 1500]
    MTPLLAMA_LIBRARY=/tmp/other/libmtpllama.so python3 benchmarks/controller_sweep.py   # another build

Runs ``mtpl_controller_simulate`` (no model file, no timing noise from this machine) on every
case of mtpllama.testing.sim_cases (cost curves and head behaviours measured on, or shaped after,
the benchmark files) and prints, per case and disturbance, the controller's tokens per second over
the best fixed policy's (k and p_min chosen with hindsight, closed form) and over plain decoding:
the minimum and median over seeds, and the worst seed's drafts per step.  Disturbances:

* steady: 5% timing noise;
* noisy: 20% timing noise;
* spell: the machine runs 1.3-2.5x slower for 40-200 steps (other load on a shared machine);
* speed: it gets 0.7x or 1.4x as fast for good half-way.

A summary line per disturbance gives the minimum, the 10th percentile and how many runs fell below
0.95x best.  tests/test_controller.py holds the controller to a few of these; this sweeps more, to
compare builds side by side before a full benchmark run.
"""
from __future__ import annotations

import argparse
import statistics
from collections import Counter

from mtpllama.testing.hooks import simulate_controller
from mtpllama.testing.sim_cases import CASES, best_fixed, fixed_rate

DISTURBANCES = {
    "steady": [{}],
    "noisy": [{"noise": 0.2}],
    "spell": [{"burst": (200, 60, 1.4)}, {"burst": (20, 100, 2.5)}, {"burst": (400, 200, 1.3)}],
    "speed": [{"speed_after": 0.7}, {"speed_after": 1.4}],
}


def expected_best(best: float, steps: int, kw: dict) -> float:
    """A fixed policy's rate under the disturbance (a slower spell or a new speed scales its seconds)."""
    if "burst" in kw:
        _, n, slow = kw["burst"]
        return steps / ((steps - n) / best + n * slow / best)
    if "speed_after" in kw:
        half = steps // 2
        return steps / (half / best + (steps - half) * kw["speed_after"] / best)
    return best


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--seeds", type=int, default=12)
    ap.add_argument("--steps", type=int, default=1500)
    a = ap.parse_args()
    for group, variants in DISTURBANCES.items():
        effs: list[float] = []
        print(group)
        for name, (costs, head) in CASES.items():
            best = best_fixed(costs, head)[2]
            plain = fixed_rate(costs, head, 0, 0.0)
            for kw in variants:
                if "speed_after" in kw:
                    kw = {**kw, "switch_step": a.steps // 2, "head_after": head}
                target = expected_best(best, a.steps, kw)
                runs = []
                for seed in range(a.seeds):
                    d, tokens, seconds = simulate_controller(costs, head, a.steps, seed=seed, **kw)
                    runs.append((tokens / seconds / target, tokens / seconds / expected_best(plain, a.steps, kw), d))
                runs.sort(key=lambda r: r[0])
                x_best = [r[0] for r in runs]
                effs += x_best
                worst = Counter(runs[0][2])
                label = name + ("" if kw == {} else " " + ",".join(f"{k}={v}" for k, v in kw.items() if k != "head_after"))
                print(f"  {label:<58} x best min {x_best[0]:.3f} median {statistics.median(x_best):.3f}  "
                      f"x plain min {min(r[1] for r in runs):.3f}  worst seed's drafts: "
                      f"{dict(sorted(worst.items()))}")
        effs.sort()
        print(f"{group}: {len(effs)} runs, min {effs[0]:.3f}, p10 {effs[len(effs) // 10]:.3f}, "
              f"median {statistics.median(effs):.3f}, below 0.95: {sum(e < 0.95 for e in effs)}\n")


if __name__ == "__main__":
    main()
