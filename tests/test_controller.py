"""The adaptive controller on its own, against simulated models (no GGUF file, no timing noise of
this machine): ``simulate_controller`` runs the engine's controller (csrc/controller.cpp) step by
step, draft by draft.  The best fixed policy (k drafts a step, none whose head confidence is below
p_min) is computed independently, in closed form (mtpllama.testing.sim_cases), from the same
costs, confidences and acceptance, and the controller is held to it.

The cases vary what a controller tuned on one machine would get wrong: the head's calibration
(sharp, right but unsure, wrong but sure, calibrated), the agreement, and the cost curve (cheap
rows, expensive rows, compute-bound, not convex)."""
from __future__ import annotations

from collections import Counter

import pytest

from mtpllama.errors import InvalidArgumentError
from mtpllama.testing.hooks import SimCosts, SimHead, simulate_controller
from mtpllama.testing.sim_cases import (AIR, CASES, DENSE_Q8, LOW, MOE, MOE_HI, MS, SHARP_HIGH, WRONG_SURE,
                                        best_fixed, fixed_rate, ms)


def rates(costs, head, n_steps, seeds=range(6), **kw) -> tuple[list[float], Counter]:
    """The controller's tokens per second over seeds, and the drafts verified per step."""
    out, drafts = [], Counter()
    for seed in seeds:
        d, tokens, seconds = simulate_controller(costs, head, n_steps, seed=seed, **kw)
        out.append(tokens / seconds)
        drafts.update(d)
    return sorted(out), drafts


def test_closed_form_matches_the_simulated_fixed_policy():
    """The closed form (sim_cases.fixed_rate) and the engine's simulation of the same fixed policy agree."""
    for costs, head in CASES.values():
        for k, p in ((1, 0.0), (3, 0.0), (3, 0.4), (6, 0.2)):
            _, tokens, seconds = simulate_controller(costs, head, 20000, adaptive=False, k_max=k, p_min=p, noise=0.0)
            assert tokens / seconds == pytest.approx(fixed_rate(costs, head, k, p), rel=0.02), (k, p)


def test_the_cases_mean_what_they_say():
    assert best_fixed(*CASES["sharp-high-dense"])[0] >= 3
    assert best_fixed(*CASES["unsure-nonconvex"])[:2] == (6, 0.0)  # deep, and no floor
    for name in ("wrong-but-sure", "low-moe", "compute-bound"):
        assert best_fixed(*CASES[name])[0] == 0, name                  # plain decoding
    k, p, r = best_fixed(*CASES["calibrated"])
    assert p > 0.2 and r > 1.05 * max(fixed_rate(*CASES["calibrated"], k, 0.0) for k in range(7))  # a floor pays
    costs, head = CASES["calibrated-air"]
    assert max(fixed_rate(costs, head, k, 0.0) for k in range(7)) == fixed_rate(costs, head, 0, 0.0)
    assert best_fixed(costs, head)[2] > 1.04 * fixed_rate(costs, head, 0, 0.0)
    # right but unsure: a floor of 0.5 (the old default) makes it plain decoding
    assert fixed_rate(*CASES["unsure-nonconvex"], 6, 0.5) < 1.01 * fixed_rate(*CASES["unsure-nonconvex"], 0, 0.0)


@pytest.mark.parametrize("name", list(CASES))
def test_within_five_percent_of_the_best_fixed_policy(name):
    """Every case: the controller's median over seeds >= 0.95x the best fixed policy (k and p_min
    chosen with hindsight), the worst seed >= 0.92x, and never below 0.97x plain decoding."""
    costs, head = CASES[name]
    best = best_fixed(costs, head)[2]
    plain = fixed_rate(costs, head, 0, 0.0)
    r, drafts = rates(costs, head, 1500)
    assert r[len(r) // 2] >= 0.95 * best, (name, [x / best for x in r], drafts)
    assert r[0] >= 0.92 * best and r[0] >= 0.97 * plain, (name, [x / best for x in r], drafts)


@pytest.mark.parametrize("name", ["wrong-but-sure", "low-moe", "compute-bound"])
def test_a_fresh_session_loses_little_where_drafting_cannot_pay(name):
    """150 steps from scratch (about one 256-token generation): the start (one draft verified, a
    plain step), the probes and, where early drafts were accepted, one timing of the deepest draft
    length (about k plain steps, once a session) cost 3% in the median, 10% at worst."""
    costs, head = CASES[name]
    r, drafts = rates(costs, head, 150, seeds=range(12))
    assert r[len(r) // 2] >= 0.97 * fixed_rate(costs, head, 0, 0.0), drafts
    assert r[0] >= 0.90 * fixed_rate(costs, head, 0, 0.0), drafts


def test_right_but_unsure_head_drafts_deep_on_a_cost_curve_that_is_not_convex():
    """Costs rise from 1 to 2 drafts and fall at 3: a search that climbs one length at a time stops
    early.  The controller ends up verifying 6 drafts a step, low confidences notwithstanding."""
    _, drafts = rates(*CASES["unsure-nonconvex"], 1500)
    assert drafts[6] >= 0.8 * sum(drafts.values()), drafts


def test_calibrated_head_stops_where_its_confidence_says():
    """A calibrated head: the controller beats every fixed length without a floor (it drops the
    drafts the head is unsure of), in the median over seeds."""
    for name in ("calibrated", "calibrated-air"):
        costs, head = CASES[name]
        r, _ = rates(costs, head, 1500)
        assert r[len(r) // 2] > max(fixed_rate(costs, head, k, 0.0) for k in range(7)), name


def test_recovers_when_acceptance_rises():
    costs = DENSE_Q8
    r, drafts = rates(costs, WRONG_SURE, 3000, head_after=SHARP_HIGH, switch_step=500)
    best = best_fixed(costs, SHARP_HIGH)[2]
    seconds_best = 500 / fixed_rate(costs, WRONG_SURE, 0, 0.0) + 2500 / best  # roughly, in steps' tokens
    assert drafts[0] < 0.35 * sum(drafts.values()), drafts
    assert r[0] >= 0.85 * best, ([x / best for x in r], seconds_best)


def test_a_new_text_is_learnt_anew():
    """One session, prompts alternating between text the head gets wrong (plain decoding or one
    draft is best) and text it gets right (deep drafting is), 85 steps each (about a 256-token generation): each
    text starts from counts carried over at a lower weight, so the controller reaches 0.9x what
    the best fixed policy of each text would (in the median over seeds)."""
    costs, n = DENSE_Q8, 85
    tokens = seconds = 0.0
    for head in (WRONG_SURE, SHARP_HIGH):
        k, p, _ = best_fixed(costs, head)
        _, t, s = simulate_controller(costs, head, 10 * n, adaptive=False, k_max=k, p_min=p)
        tokens, seconds = tokens + t, seconds + s
    oracle = tokens / seconds
    r, drafts = rates(costs, WRONG_SURE, 20 * n, head_after=SHARP_HIGH, text_steps=n)
    assert r[len(r) // 2] >= 0.9 * oracle, ([x / oracle for x in r], drafts)


def test_backs_off_when_acceptance_falls():
    costs = MOE
    r, drafts = rates(costs, MOE_HI, 3000, head_after=LOW, switch_step=500)
    plain = fixed_rate(costs, LOW, 0, 0.0)
    assert r[0] >= 0.95 * plain, [x / plain for x in r]


@pytest.mark.parametrize("speed", [0.6, 1.6])
def test_machine_speed_changes(speed):
    """The machine gets faster or slower half-way: the best policy stays the best, the
    controller keeps finding it."""
    costs, head = CASES["unsure-nonconvex"]
    best = best_fixed(costs, head)[2]
    r, _ = rates(costs, head, 2000, switch_step=1000, speed_after=speed, head_after=head)
    expect = 2000 / (1000 / best + 1000 * speed / best)
    assert r[len(r) // 2] >= 0.93 * expect, [x / expect for x in r]


def test_a_slow_spell_does_not_keep_the_best_length_out_of_use():
    """Another process takes the machine for 100 steps early on: estimates timed then are 2.5x
    too high, and aged or re-measured estimates bring the best length back."""
    costs, head = CASES["sharp-high-dense"]
    best = best_fixed(costs, head)[2]
    r, _ = rates(costs, head, 2000, burst=(20, 100, 2.5))
    expect = 2000 / (1900 / best + 100 * 2.5 / best)
    assert r[len(r) // 2] >= 0.93 * expect, [x / expect for x in r]


def test_noisy_costs():
    costs, head = CASES["high-moe"]
    best = best_fixed(costs, head)[2]
    r, _ = rates(costs, head, 1500, noise=0.2)
    assert r[len(r) // 2] >= 0.93 * best, [x / best for x in r]


def test_draft_max_zero_and_one():
    d, _, _ = simulate_controller(DENSE_Q8, SHARP_HIGH, 200, k_max=0)
    assert set(d) == {0}
    d, _, _ = simulate_controller(DENSE_Q8, SHARP_HIGH, 200, k_max=1)
    assert set(d) <= {0, 1} and d.count(1) > 150


def test_bad_simulation_arguments():
    with pytest.raises(InvalidArgumentError):
        simulate_controller(SimCosts(ms(10, -1), head=MS, draft=MS), SHARP_HIGH, 10)
    with pytest.raises(InvalidArgumentError):
        simulate_controller(DENSE_Q8, SimHead(accept=(0.5,), conf_lo=(0.8,), conf_hi=(0.2,)), 10)
    with pytest.raises(InvalidArgumentError):
        simulate_controller(DENSE_Q8, SHARP_HIGH, 10, k_max=99)
    with pytest.raises(InvalidArgumentError):
        simulate_controller(DENSE_Q8, SHARP_HIGH, 10, text_steps=-1)
