// How many tokens to draft next: the adaptive controller.
//
// Each step could draft k = 0..draft_max tokens.  With a_i the probability that
// draft i is made (draft_p_min stops drafting where the head is unsure) and
// accepted, given that drafts 1..i-1 were, a step asked for k is expected to emit
//     E(k) = 1 + a_1 + a_1 a_2 + ... + a_1 ... a_k
// tokens.  Its cost T(k) is measured, not modelled (a trunk pass over k + 1 tokens
// is not linear in k on CPUs and MoE models), plus the time the caller spends
// between steps.  The controller picks the k with the highest E(k) / T(k).  k = 0
// is a plain step that does not touch the MTP head at all, so a head that never
// pays costs nothing beyond rare probes.
//
// What is timed is each step's outcome: a plain step, or a drafting step that
// made j drafts (trunk pass over j + 1 tokens, j MTP decodes, bookkeeping).  A
// step asked for k that draft_p_min stopped after j < k drafts also decoded the
// draft it did not make; that decode is taken out and the step counts as outcome
// j, whatever k was asked for.  T(k) is then the expectation over how many drafts
// asking for k makes, with m_i = P(draft i made | drafts before it made), counted
// like acceptance.  Timed per k asked for instead, one step's time would range
// from a plain step to a full k, and a few early stops in a row would make a deep
// k look cheap; this way every step also refreshes the shallower outcomes.
//
// Steps are timed as if the MTP cache were in step: after plain steps (or a
// prompt) the first MTP evaluation also catches the cache up over every position
// it missed, a one-off cost of leaving plain decoding; its excess over a typical
// MTP decode is taken out before the step's time counts.
//
// It starts shallow: one draft per step until one is timed, then plain steps
// until one is timed (the first plain step allocates its graph and is not).  An
// outcome never timed is costed optimistically: the nearest timed one below it,
// plus per extra draft one MTP decode and half of what a verified row added from
// 0 to 1 draft made (batched kernels often make further rows cheaper).  A draft
// position seldom observed is taken to be accepted like the one before it.  So it
// climbs one k at a time while deeper drafts might pay, and at low acceptance it
// stays at one draft.
//
// Acceptance counts age by the step, observed or not, so after a long run of
// plain steps what probes see outweighs what was seen long ago.  Step times age
// too: an outcome's time is the mean of its samples weighted by age (each step
// multiplies a weight by 0.95), so one seen step after step averages about its
// last 20 steps, while an estimate not refreshed for a hundred steps yields to its
// next sample: an outcome timed while the machine was busy (the noisy spells of shared
// machines last seconds) is not kept out of use by that for long.  Draft and
// verification times are running means, then exponential moving averages.
//
// It keeps probing so it notices when acceptance or costs change: now and then
// one step deeper than its choice, at the depth whose rate is best when every
// acceptance estimate gets one more success, spaced so that a probe's expected
// loss stays near 0.5% of the time (at least 16 steps apart, doubling to 512
// while the choice holds); one deeper again, soon, after a probe whose drafts
// were all accepted against the odds; two steps shallower every 32 steps (256
// while that is far behind), and two steps one deeper every 32 steps while that is
// estimated within 10% of the choice, so a stale cost estimate cannot keep a
// neighbouring k out of use; and two steps at each k shallower than those (plain
// steps included) once its timing is 256-1024 steps old, so that no estimate of
// a shallower k, plain decoding's above all, stays as it was timed long ago.  A
// step at another k than the one before also rebuilds compute graphs; once its
// outcome has a sample, it counts only when faster than that, so a probe alone
// never corrects an estimate that is too low (the re-measurements' second steps
// do), and the first step of a re-measurement of an old estimate is not timed.
#include "controller.h"

#include <algorithm>
#include <cmath>

namespace mtpl {

struct controller {
    double accept[MTPL_MAX_DRAFT] = {};          // P(draft i accepted | drafts before it accepted)
    double n_accepted[MTPL_MAX_DRAFT] = {};      // decayed counts behind `accept`
    double n_drafted[MTPL_MAX_DRAFT] = {};
    double t_verify[MTPL_MAX_DRAFT + 2] = {};    // seconds of a trunk pass over n tokens
    int64_t n_verify[MTPL_MAX_DRAFT + 2] = {};
    double t_draft = 0.0;                        // seconds of one MTP decode
    int64_t n_draft = 0;
    double n_made[MTPL_MAX_DRAFT] = {};          // decayed counts: draft i made (draft_p_min let it through) ...
    double n_tried[MTPL_MAX_DRAFT] = {};         // ... of the steps that asked for it with drafts before it made
    double est_rate[MTPL_MAX_DRAFT + 1] = {};    // expected tokens per second by k (last choice)
    // Step times by outcome o: o = 0 a plain step; o = 1 + j a drafting step that made j drafts,
    // as if it had called the MTP head j times (a step that stopped early also paid for the
    // draft it did not make).  T(k) is their expectation over how many drafts k yields.
    double t_out[MTPL_MAX_DRAFT + 2] = {};       // seconds: the mean of samples aged by the step
    double w_out[MTPL_MAX_DRAFT + 2] = {};       // weight behind t_out
    int64_t n_out[MTPL_MAX_DRAFT + 2] = {};      // samples in t_out
    int64_t out_at[MTPL_MAX_DRAFT + 2] = {};     // step of the last sample in t_out
    int64_t n_step[MTPL_MAX_DRAFT + 1] = {};     // steps that asked for k drafts
    int64_t n_timed[MTPL_MAX_DRAFT + 1] = {};    // ... of which were timed (steady-state steps)
    int64_t refreshed[MTPL_MAX_DRAFT + 1] = {};  // step of the last timing (or re-measurement) of k
    double t_gap = 0.0;                          // seconds the caller spends between steps
    int64_t n_gap = 0;
    int64_t steps = 0;
    int64_t next_probe = 0;
    int64_t probe_every = 16;
    int32_t last_best = -1;
    int32_t probing = -1;                        // k of the probe step in flight, or -1
    int32_t remeasuring = -1;                    // k being re-measured, or -1
    int32_t remeasure_left = 0;                  // its steps still to come
    bool refreshing = false;                     // ... to refresh an old estimate: its first step is not timed
    int32_t last_k = -1;                         // k of the step before
    int32_t follow_up_depth = 0;                 // > 0: depth of the next probe, soon (the last was fully accepted)
    double probe_p_full = 1.0;                   // estimated chance that the probe in flight is fully accepted
};

namespace {

constexpr double k_accept_decay = 0.99;   // acceptance counts age by this factor per step (half-life ~70)
constexpr double k_alpha_time = 0.1;      // EMA weight of a new timing (after the first few: their mean)
constexpr double k_time_decay = 0.95;     // step times: a sample's weight ages by this per step (half-life ~14)
constexpr int64_t k_probe_min = 16;      // steps between probes while drafting pays
constexpr int64_t k_probe_max = 512;     // ... backing off to this while it does not
constexpr double k_probe_budget = 0.005; // a probe's expected loss, in steps at the choice, per step
constexpr double k_row_optimism = 0.5;   // an untimed outcome's extra rows cost this share of the timed ones'
constexpr int64_t k_remeasure = 32;      // steps between re-measurements of best - 1
constexpr int64_t k_refresh_min = 256;   // ... and at least this many between those of k < best - 1
constexpr int64_t k_refresh_max = 1024;  // ... at most this many (an old estimate is always re-measured)

// running mean for the first few samples, then an exponential moving average
void ema(double & est, double obs, double alpha, int64_t n_before) {
    est = n_before == 0 ? obs : est + std::max(alpha, 1.0 / (double) (n_before + 1)) * (obs - est);
}

// seconds of outcome o (0: a plain step; 1 + j: a drafting step that made j drafts): sampled,
// else extrapolated from the nearest sampled outcome below it, optimistically: per extra draft
// one MTP decode and a share of what a verified row cost between 0 and 1 drafts made (batched
// kernels often make further rows cheaper)
double outcome_cost(const controller & c, int32_t o) {
    if (c.n_out[o] > 0) {
        return c.t_out[o];
    }
    int32_t i = o - 1;
    while (i >= 0 && c.n_out[i] == 0) {
        --i;
    }
    if (i < 0) {
        return 0.0;
    }
    const auto drafts = [](int32_t x) { return std::max(0, x - 1); };
    const double draft = c.n_draft > 0 ? c.t_draft : 0.0;
    const int32_t base = c.n_out[1] > 0 ? 1 : 0;
    const double row = c.n_out[base] > 0 && c.n_out[2] > 0 ? std::max(0.0, c.t_out[2] - c.t_out[base] - draft) : 0.0;
    return c.t_out[i] + (double) (drafts(o) - drafts(i)) * (draft + k_row_optimism * row);
}

// P(draft i is made | drafts before it were): draft_p_min stops drafting where the head is
// unsure.  Prior: made (weight 1), so with draft_p_min = 0 this is exactly 1.
double p_made(const controller & c, int32_t i) {
    return (c.n_made[i] + 1.0) / (c.n_tried[i] + 1.0);
}

// T(k): the expected time of a step asked for k drafts, over how many of them are made (a step
// that stops after j < k also decoded the draft it did not make)
double step_cost(const controller & c, int32_t k) {
    if (k == 0) {
        return outcome_cost(c, 0);
    }
    const double draft = c.n_draft > 0 ? c.t_draft : 0.0;
    double cost = 0.0, p = 1.0;  // p: P(the first j drafts were made)
    for (int32_t j = 0; j < k; ++j) {
        const double m = p_made(c, j);
        cost += p * (1.0 - m) * (outcome_cost(c, 1 + j) + draft);
        p *= m;
    }
    return cost + p * outcome_cost(c, 1 + k);
}

// two steps at k: the first, a switch, counts only when faster than the estimate
int32_t start_remeasure(controller & c, int32_t k) {
    c.remeasuring = k;
    c.remeasure_left = 1;
    return k;
}

int32_t choose(controller & c, int32_t k_max) {
    c.steps++;
    if (k_max <= 0) {
        return 0;
    }
    // start shallow: time one draft per step, then plain steps
    if (c.n_timed[1] == 0) {
        return 1;
    }
    if (c.n_timed[0] == 0) {
        return 0;
    }
    if (c.remeasure_left > 0 && c.remeasuring >= 0 && c.remeasuring <= k_max) {
        c.remeasure_left--;
        return c.remeasuring;
    }
    int32_t best = 0;
    double best_rate = 0.0, expected[MTPL_MAX_DRAFT + 1], cost[MTPL_MAX_DRAFT + 1];
    double run = 1.0;
    expected[0] = 1.0;
    for (int32_t k = 0; k <= k_max; ++k) {
        if (k > 0) {
            run *= c.accept[k - 1];
            expected[k] = expected[k - 1] + run;
        }
        cost[k] = step_cost(c, k) + c.t_gap;
        const double rate = expected[k] / std::max(cost[k], 1e-9);
        c.est_rate[k] = rate;
        if (rate > best_rate) {
            best_rate = rate;
            best = k;
        }
    }
    // probe one deeper now and then: acceptance beyond `best` is otherwise never observed.
    // A probe costs (a graph switch, the MTP cache catch-up after plain steps, tokens below
    // the best rate), so the next one waits until its expected loss is ~0.5% of the steps in
    // between, and at least probe_every steps, which doubles (16..512) while probes confirm
    // `best`.  A probe whose drafts were all accepted against the odds says acceptance may
    // have risen: then the next probe comes k_probe_min steps later, one deeper than that one.
    // where to probe: the deeper k with the best rate when every acceptance estimate is given
    // one more success (an upper estimate): past an unpromising k = best + 1 (on CPUs a
    // verified row can cost nearly a plain step) the gain may lie deeper, unobserved
    const auto probe_depth = [&] {
        int32_t depth = best + 1;
        double upper_rate = 0.0, e = 1.0, run = 1.0, prior = 0.5;
        for (int32_t k = 1; k <= k_max; ++k) {
            const double a = std::min(1.0, (c.n_accepted[k - 1] + prior + 1.0) / (c.n_drafted[k - 1] + 2.0));
            prior = a;
            run *= a;
            e += run;
            if (k > best && e / cost[k] > upper_rate) {
                upper_rate = e / cost[k];
                depth = k;
            }
        }
        return depth;
    };
    const auto schedule_probe = [&] {
        const int32_t p = probe_depth();
        // expected loss of a probe, in steps at `best`: its time minus what its tokens are worth
        const double loss = std::max(0.0, cost[p] - expected[p] / best_rate) / cost[best];
        const auto wait = std::max(c.probe_every, (int64_t) (loss / k_probe_budget));
        c.next_probe = c.steps + std::min(wait, k_probe_max);
    };
    if (best != c.last_best) {
        c.last_best = best;
        c.probe_every = k_probe_min;
        if (best < k_max && c.follow_up_depth == 0) {
            schedule_probe();
        }
    }
    if (best < k_max && c.steps >= c.next_probe) {
        c.probing = std::min(k_max, std::max(probe_depth(), c.follow_up_depth));
        c.follow_up_depth = 0;
        c.probe_p_full = 1.0;
        for (int32_t i = 0; i < c.probing; ++i) {
            c.probe_p_full *= c.accept[i];
        }
        c.probe_every = std::min(c.probe_every * 2, k_probe_max);
        schedule_probe();
        return c.probing;
    }
    // and now and then one shallower, so the cost of smaller k is re-measured too (a single
    // slow step must not keep a k out of use for long): every 32 steps while best - 1 is
    // estimated within 10% of best, every 256 while it is far behind (such a step costs)
    const int64_t remeasure = c.est_rate[best > 0 ? best - 1 : 0] > 0.9 * best_rate ? k_remeasure : 8 * k_remeasure;
    if (best > 0 && c.steps % remeasure == 0) {
        return start_remeasure(c, best - 1);
    }
    // and shallower still (k = 0 .. best - 2), which nothing else visits: a cost timed early on (a
    // cold cache, a machine slower then) would stand for good and could keep the controller
    // drafting deeper than plain decoding pays.  Each is re-measured once its last timing is
    // 256..1024 steps old, spaced so that its expected loss stays near the probe budget, over two
    // steps of which only the second is timed: the first, a switch, would count only when faster
    // than the estimate, and with drafts that draft_p_min stops, step times vary so much that
    // such a one-sided sample pulls the estimate low.
    for (int32_t k = 0; k + 2 <= best; ++k) {
        const double loss = 2.0 * std::max(0.0, cost[k] - expected[k] / best_rate) / cost[best];
        const int64_t wait = std::clamp((int64_t) (loss / k_probe_budget), k_refresh_min, k_refresh_max);
        if (c.steps - c.refreshed[k] >= wait) {
            c.refreshed[k] = c.steps;
            c.refreshing = true;
            return start_remeasure(c, k);
        }
    }
    // likewise one deeper, halfway between, while it is estimated within 10% of best: its
    // estimate is otherwise refreshed only by probes, whose switch keeps it from rising, so
    // one slow early sample (or a machine that has sped up since) could keep it out of use
    if (best < k_max && c.est_rate[best + 1] > 0.9 * best_rate && c.steps % k_remeasure == k_remeasure / 2) {
        return start_remeasure(c, best + 1);
    }
    return best;
}

void update(controller & c, int32_t k, int32_t n_drafted, int32_t n_accepted, int32_t n_mtp_calls,
            double t_draft, double t_verify, double t_step, double t_gap, double t_catch_up, bool steady) {
    // A step at another k than the step before rebuilds compute graphs for its batch shapes
    // (and the first plain step allocates for them), so switches (probes, re-measurements)
    // would make a k look dearer than it is when chosen step after step: once the step's
    // outcome has a sample, such a step only counts when it is faster than the estimate.
    const bool first_plain = c.n_step[k]++ == 0 && k == 0;
    const bool switched = k != c.last_k;
    c.last_k = k;
    // the step's time as if the MTP cache had been in step: the first MTP evaluation's excess
    // over a typical one is the catch-up (unknown before any steady step timed a typical one)
    double t_steady = first_plain ? -1.0 : t_step;
    if (!steady && !first_plain) {
        t_steady = c.n_draft > 0 ? t_step - std::max(0.0, t_catch_up - c.t_draft) : -1.0;
    }
    // the step's outcome, and its time as if it had decoded only the drafts it made
    const int32_t o = k == 0 ? 0 : 1 + n_drafted;
    if (t_steady > 0.0 && n_mtp_calls > n_drafted && k > 0) {
        const double per_call = c.n_draft > 0 ? c.t_draft : t_draft / n_mtp_calls;
        t_steady = std::max(1e-9, t_steady - (double) (n_mtp_calls - n_drafted) * per_call);
    }
    if (switched && c.n_out[o] > 0 && t_steady >= c.t_out[o]) {
        t_steady = -1.0;
    }
    if (c.refreshing && k == c.remeasuring && c.remeasure_left > 0) {
        t_steady = -1.0;
    }
    if (t_steady > 0.0) {
        // one outlier (a preempted step) moves the estimate at most to 3x its value; the older
        // the estimate, the more a new sample counts
        const double obs = c.n_out[o] == 0 ? t_steady : std::min(t_steady, 3.0 * c.t_out[o]);
        c.w_out[o] = c.w_out[o] * std::pow(k_time_decay, (double) (c.steps - c.out_at[o])) + 1.0;
        c.t_out[o] += (obs - c.t_out[o]) / c.w_out[o];
        c.out_at[o] = c.steps;
        c.n_out[o]++;
        c.n_timed[k]++;
        // fresh: a plain step's estimate, or that of asking for the j drafts made (j > 0)
        if (o == 0 || n_drafted > 0) {
            c.refreshed[n_drafted] = c.steps;
        }
    }
    if (steady && n_mtp_calls > 0) {
        ema(c.t_draft, t_draft / n_mtp_calls, k_alpha_time, c.n_draft);
        c.n_draft++;
    }
    if (c.remeasure_left == 0) {
        c.remeasuring = -1;
        c.refreshing = false;
    }
    if (t_gap >= 0.0) {
        ema(c.t_gap, t_gap, k_alpha_time, c.n_gap);
        c.n_gap++;
    }
    const int32_t n = n_drafted + 1;
    ema(c.t_verify[n], t_verify, k_alpha_time, c.n_verify[n]);
    c.n_verify[n]++;
    if (c.probing == k) {
        c.probing = -1;
        // all drafts accepted where the estimates said that was unlikely: acceptance may have
        // risen, look again soon and one deeper
        if (k > 0 && n_accepted == k && c.probe_p_full < 0.5) {
            c.follow_up_depth = k + 1;
            c.probe_every = k_probe_min;
            c.next_probe = c.steps + k_probe_min;
        }
    }
    // draft i's acceptance is observed only when drafts before it were accepted; estimate it
    // from counts that age by the step, observed or not, so that after a long run of plain
    // steps what probes see outweighs what was seen long ago
    for (int32_t i = 0; i < MTPL_MAX_DRAFT; ++i) {
        // draft i was tried when k reached it and the drafts before it were made
        const bool tried = i < k && i <= n_drafted;
        c.n_made[i] = k_accept_decay * c.n_made[i] + (tried && i < n_drafted ? 1.0 : 0.0);
        c.n_tried[i] = k_accept_decay * c.n_tried[i] + (tried ? 1.0 : 0.0);
        // a draft that draft_p_min kept from being made (i >= n_drafted) yields no token: it
        // counts as rejected, so that E(k) is what asking for k drafts yields
        const bool observed = i < k && i <= n_accepted;
        c.n_accepted[i] = k_accept_decay * c.n_accepted[i] + (observed && i < n_accepted ? 1.0 : 0.0);
        c.n_drafted[i] = k_accept_decay * c.n_drafted[i] + (observed ? 1.0 : 0.0);
        // the prior (weight 1): 1/2 for the first position, the position before for the others,
        // so a position seldom observed is taken to be like the one before it
        const double prior = i == 0 ? 0.5 : c.accept[i - 1];
        c.accept[i] = (c.n_accepted[i] + prior) / (c.n_drafted[i] + 1.0);
    }
}

} // namespace

controller * controller_new() {
    auto * c = new controller();
    controller_reset(c);
    return c;
}

void controller_free(controller * c) {
    delete c;
}

void controller_reset(controller * c) {
    *c = controller{};
    for (double & a : c->accept) a = 0.5;  // the prior: no observation yet
}

step_plan controller_plan(controller * c, int32_t k_max) {
    return {choose(*c, k_max)};
}

void controller_update(controller * c, const step_record & r) {
    update(*c, r.k, r.n_drafted, r.n_accepted, r.n_mtp_calls, r.t_draft, r.t_verify, r.t_step, r.t_gap,
           r.t_catch_up, r.steady);
}

void controller_report(const controller * c, int32_t draft_max, mtpl_stats & out) {
    for (int i = 0; i < MTPL_MAX_DRAFT; ++i) {
        out.est_accept[i] = c->accept[i];
        out.est_made[i] = p_made(*c, i);
    }
    for (int n = 0; n <= MTPL_MAX_DRAFT; ++n) {
        out.est_verify_s[n] = c->n_verify[n] ? c->t_verify[n] : 0.0;
    }
    out.est_draft_s = c->t_draft;
    for (int k = 0; k <= MTPL_MAX_DRAFT; ++k) {
        const double t = k <= draft_max ? step_cost(*c, k) : 0.0;
        out.est_step_s[k] = t > 0.0 ? t + c->t_gap : 0.0;
    }
}

} // namespace mtpl
