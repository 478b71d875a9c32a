// How many tokens to draft next: the adaptive controller.
//
// Each step could draft k = 0..draft_max tokens.  With a_i the probability that
// draft i is accepted given that drafts 1..i-1 were, a step is expected to emit
//     E(k) = 1 + a_1 + a_1 a_2 + ... + a_1 ... a_k
// tokens.  Its cost T(k) is measured, not modelled: the whole step's time when k
// was asked for (trunk pass over k + 1 tokens, which is not linear in k on CPUs
// and MoE models, the MTP decodes including the cache catch-up, bookkeeping),
// plus the time the caller spends between steps.  The controller picks the k with
// the highest E(k) / T(k).  k = 0 is a plain step that does not touch the MTP
// head at all, so a head that never pays costs nothing beyond rare probes.
//
// Estimates are exponential moving averages.  The controller drafts draft_max for a
// few steps and tries every k once while warming up, then keeps probing so it
// notices when acceptance or costs change: one step deeper than its choice every
// probe_every steps (16, doubling to 512 while the choice holds; all the way to
// draft_max after a probe whose drafts were all accepted), and one step shallower
// every 32 steps, so a stale cost estimate cannot keep a cheaper k out of use.
#include "engine.h"

#include <algorithm>

namespace mtpl {
namespace {

constexpr double k_accept_decay = 0.98;   // acceptance counts forget with this factor (window ~50)
constexpr int64_t k_warmup_drafts = 3;    // steps at draft_max before the first decision
constexpr double k_alpha_time = 0.1;      // EMA weight of a new timing
constexpr double k_alpha_remeasure = 0.5; // ... of a deliberate re-measurement
constexpr int64_t k_probe_min = 16;      // steps between probes while drafting pays
constexpr int64_t k_probe_max = 512;     // ... backing off to this while it does not
constexpr int64_t k_remeasure = 32;      // steps between re-measurements of best - 1

void ema(double & est, double obs, double alpha, bool first) {
    est = first ? obs : (1.0 - alpha) * est + alpha * obs;
}

} // namespace

void controller_reset(controller & c) {
    c = controller{};
    for (double & a : c.accept) a = 0.5;  // (1 + 0) / (2 + 0): no observation yet
}

int32_t controller_choose(controller & c, int32_t k_max) {
    c.steps++;
    // warm-up: draft_max for a few steps (acceptance at every position), then time every k once
    if (k_max > 0 && c.n_step[k_max] < k_warmup_drafts) {
        return k_max;
    }
    for (int32_t k = k_max; k >= 0; --k) {
        if (c.n_step[k] == 0) {
            return k;
        }
    }
    int32_t best = 0;
    double best_rate = 0.0;
    for (int32_t k = 0; k <= k_max; ++k) {
        double expected = 1.0, run = 1.0;
        for (int32_t i = 0; i < k; ++i) {
            run *= c.accept[i];
            expected += run;
        }
        const double cost = c.t_step[k] + c.t_gap;
        const double rate = expected / std::max(cost, 1e-9);
        c.est_rate[k] = rate;
        if (rate > best_rate) {
            best_rate = rate;
            best = k;
        }
    }
    // probe one deeper now and then: acceptance beyond `best` is otherwise never observed.
    // A probe costs (a graph switch, the MTP cache catch-up), so while probes keep
    // confirming `best`, they get rarer.
    if (best != c.last_best) {
        c.probe_every = k_probe_min;
        c.last_best = best;
    }
    if (best < k_max && c.steps >= c.next_probe) {
        c.next_probe = c.steps + c.probe_every;
        c.probe_every = std::min(c.probe_every * 2, k_probe_max);
        // one deeper; all the way to k_max after a probe whose drafts were all accepted, so deep
        // positions get observed when they might pay, while at low acceptance a probe costs
        // little more than a plain step
        c.probing = c.last_probe_full ? k_max : best + 1;
        return c.probing;
    }
    // and now and then one shallower, so the cost of smaller k is re-measured too
    // (a single slow step must not keep a k out of use for long; such a step is cheap)
    if (best > 0 && c.steps % k_remeasure == 0) {
        c.remeasuring = best - 1;
        return best - 1;
    }
    return best;
}

void controller_update(controller & c, int32_t k, int32_t n_drafted, int32_t n_accepted, int32_t n_mtp_calls,
                       double t_draft, double t_verify, double t_step, double t_gap) {
    // one outlier (a preempted step) moves the estimate at most to 3x its value; a deliberate
    // re-measurement of a shallower k replaces a stale estimate faster
    const double obs = c.n_step[k] == 0 ? t_step : std::min(t_step, 3.0 * c.t_step[k]);
    ema(c.t_step[k], obs, k == c.remeasuring ? k_alpha_remeasure : k_alpha_time, c.n_step[k] == 0);
    c.remeasuring = -1;
    c.n_step[k]++;
    if (t_gap >= 0.0) {
        ema(c.t_gap, t_gap, k_alpha_time, c.n_gap == 0);
        c.n_gap++;
    }
    const int32_t n = n_drafted + 1;
    ema(c.t_verify[n], t_verify, k_alpha_time, c.n_verify[n] == 0);
    c.n_verify[n]++;
    if (n_mtp_calls > 0) {
        ema(c.t_draft, t_draft / n_mtp_calls, k_alpha_time, c.n_draft == 0);
        c.n_draft++;
    }
    if (c.probing == k) {
        c.last_probe_full = n_drafted > 0 && n_accepted == n_drafted;
        c.probing = -1;
    }
    // draft i's acceptance is observed only when drafts before it were accepted;
    // estimate (accepted + 1) / (drafted + 2) over decayed counts
    for (int32_t i = 0; i < n_drafted && i <= n_accepted; ++i) {
        c.n_accepted[i] = k_accept_decay * c.n_accepted[i] + (i < n_accepted ? 1.0 : 0.0);
        c.n_drafted[i] = k_accept_decay * c.n_drafted[i] + 1.0;
        c.accept[i] = (c.n_accepted[i] + 1.0) / (c.n_drafted[i] + 2.0);
    }
}

} // namespace mtpl
