"""Simulated models for the adaptive controller, shared by tests/test_controller.py and
benchmarks/controller_sweep.py: step costs and MTP-head behaviours measured on (or shaped after)
the benchmark files, the cases that combine them, and the best fixed policy of each in closed form
(independent of the engine's own simulation)."""
from __future__ import annotations

import numpy as np

from .hooks import SimCosts, SimHead

MS = 1e-3


def ms(*values: float) -> tuple[float, ...]:
    return tuple(v * MS for v in values)


def fixed_rate(costs: SimCosts, head: SimHead, k: int, p_min: float) -> float:
    """Tokens per second of drafting k a step with none below p_min, in closed form: draft i is
    made with chance m_i = P(confidence >= p_min) and then accepted with chance alpha_i (the mean
    acceptance over the confidences >= p_min); a step that made j drafts ran j MTP decodes after
    the head call (k - 1 if j = k) and a trunk pass over j drafts that reports its states."""
    if k == 0:
        return 1.0 / (costs.verify[0] + costs.other)
    m, alpha = [], []
    for i in range(k):
        lo, hi = head.at("conf_lo", i), head.at("conf_hi", i)
        c = np.linspace(lo, hi, 4001) if hi > lo else np.array([lo])
        f = np.clip(head.at("accept", i) + head.at("slope", i) * (c - 0.5 * (lo + hi)), 0.0, 1.0)
        made = c >= p_min
        m.append(made.mean())
        alpha.append(f[made].mean() if made.any() else 0.0)
    at_least = np.cumprod([1.0] + m)  # P(at least j drafts made)
    tokens = 1.0 + sum(np.prod([m[i] * alpha[i] for i in range(j)]) for j in range(1, k + 1))
    seconds = costs.head + costs.other + costs.states
    for j in range(k + 1):
        exactly = at_least[j] - (at_least[j + 1] if j < k else 0.0)
        seconds += exactly * (costs.verify[j] + min(j, k - 1) * costs.draft)
    return tokens / seconds


P_MINS = np.linspace(0.0, 0.95, 20)


def best_fixed(costs: SimCosts, head: SimHead) -> tuple[int, float, float]:
    """(k, p_min, tokens per second) of the best fixed policy."""
    return max(((k, p, fixed_rate(costs, head, k, p)) for k in range(len(costs.verify)) for p in P_MINS),
               key=lambda x: x[2])


# costs measured on the benchmark files (ms), by drafts verified
DENSE_Q8 = SimCosts(ms(30.7, 32.3, 40.4, 43.5, 50.0, 58.0, 66.7), head=1.1 * MS, draft=1.1 * MS, other=0.5 * MS)
AIR = SimCosts(ms(20.2, 31.8, 42.6, 53.6, 60.0, 66.0, 72.0), head=1.5 * MS, draft=1.3 * MS, other=0.5 * MS)
MOE = SimCosts(ms(16.2, 33.1, 46.5, 57.4, 74.2, 85.0, 95.0), head=1.5 * MS, draft=1.5 * MS, other=0.5 * MS,
               catch_up=0.06 * MS)
# a dense Q4_0 file on a CPU with AMX: 2-3 verified rows cost relatively more than 4-7 (not convex)
NONCONVEX = SimCosts(ms(15.0, 28.0, 38.0, 31.0, 33.0, 36.0, 38.0), head=1.2 * MS, draft=1.0 * MS, other=0.5 * MS,
                     catch_up=0.19 * MS)
# the shipped default model: compute-bound, a pass over k + 1 rows costs k + 1 steps
COMPUTE = SimCosts(ms(*(0.5 * (k + 1) for k in range(7))), head=0.3 * MS, draft=0.3 * MS, other=0.05 * MS)
LINEAR = SimCosts(ms(20, 24, 28, 32, 36, 40, 44), head=1.0 * MS, draft=1.0 * MS, other=0.5 * MS)
# layers on RPC workers 5 ms away, the head local: round trips dominate, and reading the states the
# head drafts from is one more (benchmarks/rpc_bench.py, dense files)
RPC = SimCosts(ms(62, 66, 70, 74, 78, 82, 86), head=2.0 * MS, draft=2.0 * MS, other=0.5 * MS, catch_up=0.1 * MS,
               states=10.0 * MS)

SHARP_HIGH = SimHead(accept=(0.95, 0.9, 0.88), conf_lo=(0.6,), conf_hi=(1.0,), slope=(1.0,))
UNSURE = SimHead(accept=(0.9,), conf_lo=(0.1,), conf_hi=(0.5,))                   # right, but unsure
UNSURE_FALLING = SimHead(accept=(0.9, 0.85, 0.8), conf_lo=(0.1,), conf_hi=(0.5,))
CALIBRATED = SimHead(accept=(0.55,), conf_lo=(0.1,), conf_hi=(1.0,), slope=(1.2,))  # about as often as it says
CALIBRATED_WIDE = SimHead(accept=(0.6,), conf_lo=(0.0,), conf_hi=(1.0,), slope=(1.0,))
WRONG_SURE = SimHead(accept=(0.15,), conf_lo=(0.85,), conf_hi=(1.0,))              # wrong, but sure
LOW = SimHead(accept=(0.3, 0.2), conf_lo=(0.2,), conf_hi=(1.0,), slope=(1.0,))
MOE_HI = SimHead(accept=(0.95, 0.87, 0.85), conf_lo=(0.5,), conf_hi=(1.0,), slope=(0.5,))
MID = SimHead(accept=(0.7, 0.6), conf_lo=(0.3,), conf_hi=(1.0,), slope=(1.0,))

CASES = {
    "sharp-high-dense": (DENSE_Q8, SHARP_HIGH),
    "unsure-nonconvex": (NONCONVEX, UNSURE),
    "unsure-air": (AIR, UNSURE_FALLING),
    "calibrated": (LINEAR, CALIBRATED),
    "calibrated-air": (AIR, CALIBRATED_WIDE),    # without a floor, drafting does not pay
    "wrong-but-sure": (LINEAR, WRONG_SURE),
    "low-moe": (MOE, LOW),
    "compute-bound": (COMPUTE, MID),
    "high-moe": (MOE, MOE_HI),
    "rpc-low": (RPC, LOW),                       # confident drafts pay, the rest do not
    "rpc-wrong-but-sure": (RPC, WRONG_SURE),     # plain decoding, without reading the states
    "rpc-high": (RPC, SHARP_HIGH),
}
