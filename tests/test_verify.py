"""The verifier alone, on hand-made trunk rows and draft distributions (no model).

Rows are fixed whatever the context, so the "trunk" draws each position from its own
distribution p_i; the emitted tokens must then be distributed as p_0 (first token) and, after
an accepted first draft, p_1 (second token).  Goodness-of-fit chi-square tests, 20,000 fixed
seeds, failing at p < 1e-3; the same test catches a verifier that keeps every draft.
"""
from __future__ import annotations

from collections import Counter
from dataclasses import replace

import numpy as np
import pytest

from mtpllama import SamplingConfig, SpecConfig
from mtpllama.testing.hooks import spec_with_verify, verify_rows
from mtpllama.testing.stats import goodness_of_fit

GREEDY = SamplingConfig()
V = 6
N = 20_000
ALPHA = 1e-3


def softmax(x: np.ndarray) -> np.ndarray:
    e = np.exp(x - x.max())
    return e / e.sum()


def test_greedy_keeps_the_prefix_that_matches_the_arg_max():
    rows = np.zeros((4, V), np.float32)
    for i, top in enumerate([2, 5, 1, 3]):
        rows[i, top] = 1.0
    ctx = [0, 4]  # pending token last
    assert verify_rows(rows, ctx + [2, 5, 1], len(ctx), None, GREEDY) == (3, 3)  # all kept, bonus from row 3
    assert verify_rows(rows, ctx + [2, 5, 0], len(ctx), None, GREEDY) == (2, 1)  # recovered at row 2
    assert verify_rows(rows, ctx + [3, 5, 1], len(ctx), None, GREEDY) == (0, 2)
    assert verify_rows(rows[:1], ctx, len(ctx), None, GREEDY) == (0, 2)          # no drafts: a plain step


def test_greedy_ties_go_to_the_lowest_id():
    rows = np.ones((2, V), np.float32)
    assert verify_rows(rows, [1, 0], 1, None, GREEDY) == (1, 0)
    assert verify_rows(rows, [1, 3], 1, None, GREEDY) == (0, 0)


def test_penalties_see_the_drafts_before_each_row():
    # row 1 prefers token 2 slightly; a repeat penalty counts draft 0 == 2 in row 1's context only
    rows = np.array([[0, 0, 3.0, 0, 0, 0], [0, 0, 1.1, 1.0, 0, 0]], np.float32)
    pen = SamplingConfig(repeat_penalty=2.0, penalty_last_n=-1)
    assert verify_rows(rows, [5, 2], 1, None, pen) == (1, 3)   # 1.1 / 2 < 1.0: the penalised arg-max is 3
    assert verify_rows(rows, [5, 2], 1, None, GREEDY) == (1, 2)


P_LOGITS = np.array([[1.2, 0.3, -0.5, 0.9, -1.0, 0.1], [0.0, 1.5, 0.2, -0.3, 0.8, -1.2]], np.float32)
Q = np.array([[0.05, 0.5, 0.2, 0.05, 0.1, 0.1], [0.3, 0.1, 0.3, 0.1, 0.1, 0.1]], np.float32)


def emitted(verify: str, sampling: SamplingConfig, draft_q: np.ndarray, n: int = N):
    """First and (after an accepted first draft) second emitted tokens over n seeds."""
    rng = np.random.default_rng(5)
    rows = np.vstack([P_LOGITS, P_LOGITS[:1]])  # 2 drafts, 3 rows
    spec = spec_with_verify(SpecConfig(2, 0.0, adaptive=False), verify)
    first, second = Counter(), Counter()
    for seed in range(n):
        drafts = [int(rng.choice(V, p=draft_q[i] / draft_q[i].sum())) for i in range(2)]
        # the generator's seed, and the sampling seed that keys the coupled mode's noise
        acc, nxt = verify_rows(rows, [3] + drafts, 1, draft_q, replace(sampling, seed=seed), spec, seed=seed)
        out = drafts[:acc] + [nxt]
        first[out[0]] += 1
        if acc >= 1:
            second[out[1]] += 1
    return first, second


T1 = SamplingConfig(temperature=1.0)


@pytest.mark.parametrize("verify", ["rejection", "exact", "coupled"])
def test_sampled_verification_emits_the_trunk_distribution(verify):
    q = Q if verify == "rejection" else np.eye(V, dtype=np.float32)[[0, 1]]  # exact/coupled: arg-max-like drafts
    first, second = emitted(verify, T1, q)
    for counts, row in ((first, 0), (second, 1)):
        stat, df, p = goodness_of_fit(counts, dict(enumerate(softmax(P_LOGITS[row].astype(np.float64)))))
        assert sum(counts.values()) > 1000
        assert p > ALPHA, f"{verify} row {row}: chi2={stat:.1f} df={df} p={p:.2e}"


def test_a_verifier_that_keeps_every_draft_is_caught():
    first, _ = emitted("test_accept_all", T1, Q)
    stat, df, p = goodness_of_fit(first, dict(enumerate(softmax(P_LOGITS[0].astype(np.float64)))))
    assert p < 1e-6, f"chi2={stat:.1f} df={df} p={p:.2e}"


def test_rejection_accepts_as_often_as_the_overlap_of_p_and_q():
    # P(accept draft 0) = sum_x min(p(x), q(x))
    p0 = softmax(P_LOGITS[0].astype(np.float64))
    overlap = float(np.minimum(p0, Q[0] / Q[0].sum()).sum())
    rng = np.random.default_rng(5)
    rows = np.vstack([P_LOGITS, P_LOGITS[:1]])
    accepted = 0
    for seed in range(8000):
        drafts = [int(rng.choice(V, p=Q[i] / Q[i].sum())) for i in range(2)]
        acc, _ = verify_rows(rows, [3] + drafts, 1, Q, T1, seed=seed)
        accepted += acc >= 1
    assert abs(accepted / 8000 - overlap) < 4 * np.sqrt(overlap * (1 - overlap) / 8000)
