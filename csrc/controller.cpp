// How deep each step drafts, and with which draft distribution: the adaptive controller.
//
// Objective.  Tokens per second.  With R a rate, a step is worth (tokens it emits) - R * (seconds
// it takes), and the controller takes every decision that raises that worth (for a renewal
// process, the policy maximising it at R = its own rate maximises the rate).  R is the best rate
// of a fixed draft length under the current estimates; the adaptive policy does at least as well,
// so decisions against R err towards drafting a little more.
//
// Draft by draft.  Draft i is verified only if some depth n > i is worth reaching from here:
//     reach * a_i * (1 + a_{i+1} + a_{i+1} a_{i+2} + ...)  >  R * (V(n) - V(i) + (n - 1 - i) D)
// where reach is the chance that every draft before i is accepted, a_i the chance that draft i is
// accepted given its head confidence (the head's probability of its token), a_j for later drafts
// the expected acceptance at position j, V(k) the seconds of a trunk pass over k drafts and D of
// one MTP decode.  The head runs once more for draft i + 1 if that draft is worth its decode:
// over the confidences seen at position i + 1, the mean of the best such gain where it would be
// kept, 0 where not.  Looking at every depth, not one ahead, follows cost curves that are not
// convex (on CPUs a pass over 4 rows can cost less than one over 3).
//
// Calibration is learnt, not assumed: acceptance is counted by position and confidence bucket,
// so a head that is right but unsure keeps drafting and a calibrated one stops where its
// confidence says.  A position seldom seen starts from the one before it (the first from a coin),
// weight 2, and the draft in hand's bucket gets half an acceptance more (optimism that shrinks as
// counts grow).  Counts age by the drafting step (x0.98), so a change of text shows within tens
// of steps, and drop to 0.1 of their weight when a new text begins (a session reset: a session's
// next prompt may be code where the last was prose).
//
// Costs are measured, never guessed: V(k) for each k, the head call, a further decode, and the
// rest of a step (bookkeeping, the caller's time between steps), each a mean of samples aged by
// the step (x0.95), so one new sample replaces an estimate that went stale.  llama.cpp keeps the
// compute graph of the last pass only: a pass over another row count builds its graph anew.  That
// extra is learnt apart (a length chosen seldom would otherwise only ever be timed with it, and
// look dearer than it is) and charged to a decision that changes the row count.  Every draft length
// the drafts could pay for is timed early (the most promising first: a compute-bound curve costs
// one timing), and the length timed longest ago is timed again once stale: after 128 steps where
// it is close to the best (one noisy sample must not rule out the right length for long), up to
// 512 where it is far.
//
// Plain steps.  A step drafts at all only if the first draft is worth the head call, as above.
// Whether it is uses a draw of the first position's acceptance from what the counts allow
// (Thompson sampling), so a head judged on a few unlucky drafts is tried again, and often where
// the decision is close.  Otherwise the step is plain and leaves the MTP head alone.  Its trunk
// pass leaves out the states the head drafts from where that saves more than 3% of a plain pass
// (their transfer, over RPC a read from a worker, timed at the start and now and then by leaving them
// out; and the catch-up each would cost later) and more than it costs: a next step that wants to
// draft (as often as recent steps did) must first run plain with the states.  Decisions then
// weigh drafting against a plain pass without them.  A pass without states leaves a gap in the
// MTP cache (draft.h).  While plain, a probe drafts now and then: at least 16 steps apart,
// doubling to 512 while probes confirm, spaced so that a probe's expected loss (its verified row,
// the head call, the states and graphs it needs) stays near 0.5% of the time; 2 steps after a
// probe whose first draft was accepted against the odds (estimated below one in two), and as far
// after a session reset as the same budget says, where drafting could pay at all (not where a
// verified row costs a full step, whatever the acceptance).  Once under 5% of recent steps want to
// draft (controller_idle), the head keeps a window of its last 16 states and a new prompt reports
// states for its last 16 rows only: a probe drafts from recent context, and the head's readiness no
// longer costs a catch-up over every position or the last layer's work on every prompt row.
//
// Sampled decoding.  Rejection sampling is lossless for any draft distribution q; its acceptance
// at a position is sum_x min(p(x), q(x)).  The verifier computes that overlap for each mixture of
// k_mix_grid at every reached row (a counterfactual: no exploration needed), and each position
// drafts with the mixture whose mean overlap is highest, which is also its expected acceptance.
// Mixture 0 is the head's distribution at the sampling temperature; 1 its arg-max, which accepts
// as often as exact-match verification.
#include "controller.h"

#include <algorithm>
#include <cmath>
#include <limits>

#include "sampler.h"

namespace mtpl {
namespace {

constexpr int32_t K = MTPL_MAX_DRAFT;
constexpr int32_t NB = MTPL_CONF_BUCKETS;
// lower edges of the confidence buckets
constexpr float k_bucket_lo[NB] = {0.0f, 0.05f, 0.1f, 0.2f, 0.3f, 0.4f, 0.5f, 0.6f, 0.7f, 0.8f, 0.9f, 0.97f};

constexpr double k_accept_decay = 0.98;   // acceptance counts age by this per drafting step
constexpr double k_prior_weight = 2.0;    // a bucket's counts against its position's acceptance
constexpr double k_optimism = 0.5;        // acceptances added to the draft in hand's bucket
constexpr double k_time_decay = 0.95;     // a timing sample's weight ages by this per step
constexpr int64_t k_sweep_every = 2;      // steps between the first timings of the draft lengths
constexpr double k_sweep_after = 2.5;     // ... once this many first drafts were verified
constexpr double k_sweep_margin = 0.05;   // ... that could beat the best known by this many tokens a step
constexpr int64_t k_stale_steps = 512;    // a pass timed this long ago is timed again ...
constexpr int64_t k_resweep_min = 128;    // ... at most once per this many steps, a length that is close to the best this often
constexpr int64_t k_probe_min = 16;
constexpr int64_t k_probe_soon = 2;       // after a probe whose first draft was accepted against the odds
constexpr int64_t k_probe_max = 512;
constexpr double k_probe_budget = 0.005;  // a probe's expected loss, as a share of the time between probes
constexpr double k_states_share = 0.03;   // plain passes may leave the states out where that saves this share
constexpr double k_want_decay = 0.9;      // the share of steps that want to draft: a mean aged by this per step
constexpr double k_idle_want = 0.05;      // idle (controller_idle) below this share of steps that want to draft
constexpr int64_t k_idle_steps = 32;      // ... and after this many steps
constexpr double k_min_overlap_rows = 8;  // a position chooses its own mixture after this many rows
constexpr int32_t k_mix_start = 1;        // ... before that, the first position's is this one of k_mix_grid
constexpr double k_mix_forget = 0.3;      // a position's acceptance counts are kept at this weight when its mixture changes
constexpr double k_new_text_keep = 0.1;   // acceptance counts are kept at this weight when a new text begins

int32_t bucket_of(float conf) {
    int32_t b = 0;
    while (b + 1 < NB && conf >= k_bucket_lo[b + 1]) {
        ++b;
    }
    return b;
}

// a mean of samples whose weights age by the step
struct timing {
    double mean = 0.0;
    double weight = 0.0;
    int64_t n = 0;
    int64_t at = 0;         // step of the last sample

    void add(double obs, int64_t step) {
        if (!(obs > 0.0)) {
            return;
        }
        if (n > 0) {
            obs = std::min(obs, 3.0 * mean);  // a preempted step moves the estimate at most to 3x
        }
        weight = weight * std::pow(k_time_decay, (double) (step - at)) + 1.0;
        mean += (obs - mean) / weight;
        at = step;
        n++;
    }
};

// decayed counts of outcomes
struct tally {
    double hit = 0.0;
    double n = 0.0;
    void add(bool h) { hit += h ? 1.0 : 0.0; n += 1.0; }
    void age(double f) { hit *= f; n *= f; }
    double mean(double prior, double w) const { return (hit + prior * w) / (n + w); }
};

} // namespace

struct controller {
    int64_t steps = 0;
    timing verify[K + 1];           // trunk pass over k drafts (k + 1 rows), by k, its compute graph reused
    bool verify_reused[K + 1] = {}; // ... measured on a reused graph at least once
    timing rebuild;                 // what a trunk pass adds when its graph is built anew (another row count)
    int32_t last_n = -1;            // drafts the last step verified: the row count whose graph is kept
    timing head;                    // the step's first MTP evaluation, in steady state
    timing catch_up;                // ... and what it adds per position it catches up after plain steps
    int64_t behind = 0;             // positions the head call would catch up (plain steps that reported states)
    double want = 0.0;              // share of recent steps whose plan wanted to draft
    timing bare;                    // a plain trunk pass that does not report its states
    int32_t bare_tries = 0;         // plain steps at the start spent timing it
    double states_cost = 0.0;       // what reporting them adds to a plain pass
    bool states_off_pays = false;   // leaving the states out of plain passes saves more than k_states_share
    bool states = true;             // this step's trunk pass reports its states
    bool deferred = false;          // the last step wanted to draft but had no states: this one drafts
    timing decode;                  // one further MTP evaluation
    timing other;                   // the rest of a step, the caller's time between steps included
    tally cell[K][NB];              // draft i accepted, by its confidence bucket
    tally pos[K];                   // draft i accepted, any confidence
    double seen[K][NB] = {};        // confidences of the drafts made at position i (aged counts)
    double acc[K][NB] = {};         // estimates (estimate()): acceptance by bucket, ...
    double prior[K][NB] = {};       // ... the prior behind it ...
    double pi[K][NB] = {};          // ... and the share of drafts in the bucket
    double overlap[K][k_n_mix] = {};  // summed acceptance chance of each mixture at position i (aged)
    double overlap_n[K] = {};
    int32_t mix_idx[K] = {};        // each position's mixture (index into k_mix_grid), -1 until chosen

    // derived in plan, used by keep and extend
    bool adaptive = true;
    int32_t k_max = 0;
    double rate = 0.0;              // R, tokens per second
    double a_mean[K] = {};          // expected acceptance at position i
    double acc_draw[NB] = {};       // the first position's acceptance by bucket, as one draw makes it
    rng_type rng{0x6d74706c};
    double v[K + 1] = {};           // V(k) as decisions see it
    double sw[K + 1] = {};          // ... plus this when k differs from the last step's (the graph is rebuilt)
    double d = 0.0;                 // D
    double reach = 1.0;             // chance that the drafts kept so far are all accepted
    int32_t n_conf = 0;             // drafts made this step
    int32_t bucket[K] = {};
    bool probing = false;
    bool could_pay = true;          // some draft length would pay were every draft accepted
    int32_t force = 0;              // this step verifies this many drafts, whatever they look like (a timing)
    int64_t next_sweep = 0;
    int64_t next_probe = 0;
    int64_t probe_every = k_probe_min;
};

namespace {

// a draw from Beta(a (n + 1), (1 - a) (n + 1)): acceptance a as uncertain as n observations make it
double draw_accept(double a, double n, rng_type & rng) {
    std::gamma_distribution<double> x(std::max(1e-3, a * (n + 1.0))), y(std::max(1e-3, (1.0 - a) * (n + 1.0)));
    const double gx = x(rng), gy = y(rng);
    return gx + gy > 0.0 ? gx / (gx + gy) : a;
}

// Acceptance by position and confidence bucket, and how confidences fall at each position.  A
// position seldom observed is taken to be like the one before it: its buckets' acceptance and its
// confidences start from that position's (weight k_prior_weight), the first position's from a coin.
void estimate(controller & c) {
    for (int32_t i = 0; i < K; ++i) {
        double seen = 0.0;
        for (int32_t b = 0; b < NB; ++b) {
            seen += c.seen[i][b];
        }
        // sampled decoding: the chosen mixture's mean overlap is the expected acceptance here
        const bool sampled = c.mix_idx[i] >= 0;
        const double pos_prior = sampled ? c.overlap[i][c.mix_idx[i]] / c.overlap_n[i] : c.pos[0].mean(0.5, 1.0);
        for (int32_t b = 0; b < NB; ++b) {
            c.prior[i][b] = i == 0 || sampled ? pos_prior : c.acc[i - 1][b];
            c.acc[i][b] = c.cell[i][b].mean(c.prior[i][b], k_prior_weight);
            const double pi_prior = i == 0 ? 1.0 / NB : c.pi[i - 1][b];
            c.pi[i][b] = (c.seen[i][b] + k_prior_weight * pi_prior) / (seen + k_prior_weight);
        }
    }
}

// expected acceptance at position i over its confidences
double mean_accept(const controller & c, int32_t i) {
    double s = 0.0;
    for (int32_t b = 0; b < NB; ++b) {
        s += c.pi[i][b] * c.acc[i][b];
    }
    return s;
}

// V(k) (0 before anything is measured).  A k not timed yet (until the sweep reaches it) is
// extrapolated linearly from the nearest timed k below it: no guess makes a deep draft look cheap.
double verify_cost(const controller & c, int32_t k) {
    int32_t j = k;
    while (j >= 0 && c.verify[j].n == 0) {
        --j;
    }
    if (j < 0) {
        return 0.0;
    }
    if (j == k) {
        return c.verify[k].mean;
    }
    const double row = j > 0 && c.verify[0].n > 0 ? std::max(0.0, c.verify[j].mean - c.verify[0].mean) / j : 0.0;
    return c.verify[j].mean + row * (k - j);
}

// seconds of a step that verifies n drafts (n = 0: a plain step)
double step_seconds(const controller & c, int32_t n) {
    const double mtp = n > 0 ? c.head.mean + (n - 1) * c.d : 0.0;
    return c.v[n] + mtp + c.other.mean;
}

// the best gain over the depths n in (from, k_max] of verifying drafts from..n-1, where draft
// `from` is accepted with chance a_first, the later ones with a[j], and the step already holds
// `from` drafts (cost V(from))
double best_gain(const controller & c, int32_t from, double reach, double a_first, const double * a) {
    double best = -std::numeric_limits<double>::infinity(), tokens = 0.0, p = reach;
    for (int32_t n = from + 1; n <= c.k_max; ++n) {
        p *= n == from + 1 ? a_first : a[n - 1];
        tokens += p;
        const double cost = c.v[n] + c.sw[n] - c.v[from] - c.sw[from] + (n - 1 - from) * c.d;
        best = std::max(best, tokens - c.rate * cost);
    }
    return best;
}

// each position's mixture: the best mean overlap, or the position before's while it has few rows
void choose_mixes(const controller & c, float * mix) {
    for (int32_t i = 0; i < K; ++i) {
        mix[i] = c.mix_idx[i] >= 0 ? k_mix_grid[c.mix_idx[i]] : i > 0 ? mix[i - 1] : k_mix_grid[k_mix_start];
    }
}

// the worth of computing draft `from` (the step holds `from` drafts, reached with chance reach):
// over the confidences seen at that position, the best gain where it is kept, 0 where it is not;
// acc: the acceptance by confidence bucket at that position
double draft_worth(const controller & c, int32_t from, double reach, const double * acc) {
    double s = 0.0;
    for (int32_t b = 0; b < NB; ++b) {
        s += c.pi[from][b] * std::max(0.0, best_gain(c, from, reach, acc[b], c.a_mean));
    }
    return s;
}

// acceptance counts, confidences seen and mixture overlaps, all kept at weight f
void age_counts(controller & c, double f) {
    for (int32_t i = 0; i < K; ++i) {
        c.pos[i].age(f);
        for (int32_t b = 0; b < NB; ++b) {
            c.cell[i][b].age(f);
            c.seen[i][b] *= f;
        }
        for (int32_t j = 0; j < k_n_mix; ++j) {
            c.overlap[i][j] *= f;
        }
        c.overlap_n[i] *= f;
    }
}

// A draft length to time this step, or -1.  Cost curves need not be convex (a CPU's kernels
// switch at some batch size: 4 rows can cost less than 3), so lengths are timed, not guessed:
// each one not yet timed that would beat the best length known were its passes as cheap as one
// over a single draft (the cheapest a batch of drafts plausibly costs), the most promising first.
// A compute-bound curve, where a draft does not pay even at that price, is never swept.  Later,
// the length timed longest ago, once stale, while drafting pays.
int32_t sweep_length(const controller & c, bool drafting) {
    double tokens = 1.0, p = 1.0, best = -std::numeric_limits<double>::infinity();
    double promise[K + 1] = {}, value[K + 1] = {};
    for (int32_t n = 0; n <= c.k_max; ++n) {
        if (n > 0) {
            p *= c.a_mean[n - 1];
            tokens += p;
        }
        value[n] = tokens - c.rate * step_seconds(c, n);
        best = std::max(best, value[n]);
        const double cheapest = n > 0 ? c.verify[1].mean + c.head.mean + (n - 1) * c.d + c.other.mean : 0.0;
        promise[n] = tokens - c.rate * cheapest;
    }
    int32_t k = -1;
    for (int32_t n = 2; n <= c.k_max; ++n) {
        if (c.verify[n].n == 0 && promise[n] > best + k_sweep_margin && (k < 0 || promise[n] > promise[k])) {
            k = n;
        }
    }
    if (k >= 0 || !drafting) {
        return k;
    }
    // a length close to the best goes stale sooner: timing it costs little, and a wrong estimate of it
    // costs the most
    const double plain_tokens = std::max(c.rate * step_seconds(c, 0), 1e-12);
    for (int32_t j = 0; j <= c.k_max; ++j) {
        const double loss = std::max(0.0, best - value[j]) / plain_tokens;
        const int64_t stale = std::clamp((int64_t) (loss / k_probe_budget), k_resweep_min, k_stale_steps);
        if (c.verify[j].n > 0 && c.steps - c.verify[j].at >= stale && (k < 0 || c.verify[j].at < c.verify[k].at)) {
            k = j;
        }
    }
    return k;
}

// steps until the next probe: a probe verifies one draft at least, and its expected loss (in plain
// steps) may be k_probe_budget of the time until the next one.
int64_t probe_wait(const controller & c) {
    const double t0 = std::max(step_seconds(c, 0), 1e-12);
    // the trunk's graph is built anew when the states come back and when they go again
    // (and a plain pass before it reports the states, where plain passes leave them out)
    const double extra = c.v[1] - c.v[0] + c.head.mean + (c.states_off_pays ? c.states_cost + 2.0 * c.rebuild.mean : 0.0);
    const double loss = std::max(0.0, c.rate * extra - c.a_mean[0]) / std::max(c.rate * t0, 1e-12);
    return (int64_t) std::min(loss / k_probe_budget, 1e9);
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
    std::fill(std::begin(c->mix_idx), std::end(c->mix_idx), -1);
}

void controller_new_text(controller * c) {
    age_counts(*c, k_new_text_keep);
    if (c->could_pay) {
        c->probe_every = k_probe_min;
        c->next_probe = c->steps + std::clamp(probe_wait(*c), k_probe_min, k_probe_max);
    }
}

// This step would draft but the last pass left its states out: it runs plain and reports them.
step_plan defer(controller * c, step_plan plan) {
    plan.k_max = 0;
    plan.states = c->states = true;
    c->probing = false;
    c->force = 0;
    return plan;
}

step_plan controller_plan(controller * c, int32_t k_max, bool adaptive, bool have_states) {
    c->steps++;
    c->adaptive = adaptive;
    c->k_max = std::clamp(k_max, 0, K);
    c->reach = 1.0;
    c->n_conf = 0;
    c->probing = false;
    c->force = 0;
    c->states = c->k_max > 0;
    step_plan plan{c->k_max, {}, c->states};
    if (adaptive) {
        choose_mixes(*c, plan.mix);
    }
    estimate(*c);
    for (int32_t i = 0; i < c->k_max; ++i) {
        c->a_mean[i] = mean_accept(*c, i);
    }
    for (int32_t k = 0; k <= c->k_max; ++k) {
        c->v[k] = verify_cost(*c, k);
        c->sw[k] = k != c->last_n && c->rebuild.n > 0 ? c->rebuild.mean : 0.0;
    }
    c->d = c->decode.n > 0 ? c->decode.mean : c->head.mean;
    // a plain pass that leaves its states out saves their transfer and their later catch-up
    c->states_cost = c->bare.n > 0 && c->verify[0].n > 0 ? std::max(0.0, c->verify[0].mean - c->bare.mean) : 0.0;
    c->states_off_pays = c->states_cost + c->catch_up.mean > k_states_share * c->verify[0].mean;
    if (c->states_off_pays && c->bare.n > 0) {
        c->v[0] = c->bare.mean;
    }
    // R: the best fixed draft length under the estimates
    double tokens = 1.0, p = 1.0;
    c->rate = 0.0;
    for (int32_t n = 0; n <= c->k_max; ++n) {
        if (n > 0) {
            p *= c->a_mean[n - 1];
            tokens += p;
        }
        const double t = step_seconds(*c, n);
        c->rate = std::max(c->rate, t > 0.0 ? tokens / t : 0.0);
    }
    // were every draft accepted, would some length pay?  (not on a compute-bound machine)
    c->could_pay = false;
    for (int32_t n = 1; n <= c->k_max; ++n) {
        c->could_pay = c->could_pay || (double) n > c->rate * (step_seconds(*c, n) - step_seconds(*c, 0));
    }
    if (!adaptive || c->k_max == 0) {
        return plan;
    }

    // start: time a step verifying one draft (kept whatever its confidence), then a plain one
    if (c->head.n == 0 || c->verify[1].n == 0) {
        if (!have_states) {
            return defer(c, plan);
        }
        plan.k_max = 1;
        c->probing = true;
        return plan;
    }
    if (c->verify[0].n == 0) {
        plan.k_max = 0;
        return plan;
    }
    // ... and plain ones that leave the states out (the first builds its graph anew)
    if (c->bare.n < 3 && c->bare_tries < 5) {
        c->bare_tries++;
        plan.k_max = 0;
        plan.states = c->states = false;
        return plan;
    }
    const bool deferred = c->deferred;
    c->deferred = false;
    // draft if the first draft is worth the head call, at acceptances scaled by one draw of the first
    // position's acceptance from what its counts allow (one draw, not one per bucket: the largest of
    // many noisy draws would draft far too often where drafting does not pay)
    const double a0 = c->a_mean[0];
    const double scale = a0 > 0.0 ? draw_accept(a0, c->pos[0].n, c->rng) / a0 : 1.0;
    for (int32_t b = 0; b < NB; ++b) {
        c->acc_draw[b] = std::min(1.0, c->acc[0][b] * scale);
    }
    // after plain steps the head call also catches up on them (charged up to k_probe_min of them: the
    // rest buys the drafting steps that follow, and probes keep finding those)
    const double behind = (double) std::min(c->behind, k_probe_min);
    // (and without the states, a plain pass that reports them first)
    const double head_cost = c->head.mean + c->catch_up.mean * behind + (have_states ? 0.0 : c->states_cost);
    const double gain = draft_worth(*c, 0, 1.0, c->acc_draw) - c->rate * head_cost;
    c->want = k_want_decay * c->want + (1.0 - k_want_decay) * (gain > 0.0 ? 1.0 : 0.0);
    if (c->steps >= c->next_sweep && c->pos[0].n >= k_sweep_after) {
        const int32_t k = sweep_length(*c, gain > 0.0);
        if (k >= 0 && !have_states) {
            return defer(c, plan);
        }
        if (k >= 0) {
            const double loss = std::max(0.0, step_seconds(*c, k) - step_seconds(*c, 0)) / std::max(step_seconds(*c, 0), 1e-12);
            c->next_sweep = c->steps + (c->verify[k].n == 0 ? k_sweep_every
                                                            : std::max(k_resweep_min, (int64_t) (loss / k_probe_budget)));
            c->force = k;
            plan.k_max = k;
            return plan;
        }
        c->next_sweep = c->steps + k_resweep_min;
    }
    if ((gain > 0.0 || deferred) && !have_states) {
        c->deferred = true;
        return defer(c, plan);
    }
    if (gain > 0.0 || deferred) {
        c->probe_every = k_probe_min;
        c->next_probe = c->steps + k_probe_min;
        return plan;
    }
    if (c->steps >= c->next_probe && !have_states) {
        return defer(c, plan);
    }
    if (c->steps >= c->next_probe) {
        c->next_probe = c->steps + std::min(std::max(c->probe_every, probe_wait(*c)), k_probe_max);
        c->probe_every = std::min(c->probe_every * 2, k_probe_max);
        c->probing = true;
        return plan;
    }
    // Leave the states out where that saves more than it costs: a next step that wants to draft
    // (as often as recent ones did) would run plain first, giving up its expected gain and building
    // the trunk's graph twice.  Or leave them out to time a pass without them.
    bool off = c->bare.n == 0 || c->steps - c->bare.at > k_stale_steps;
    if (!off && c->states_off_pays) {
        const double g = std::max(0.0, draft_worth(*c, 0, 1.0, c->acc[0]) - c->rate * head_cost) / std::max(c->rate, 1e-12);
        off = c->want * (g + 2.0 * c->rebuild.mean) <= c->states_cost + c->catch_up.mean;
    }
    plan.k_max = 0;
    plan.states = c->states = !off;
    return plan;
}

bool controller_keep(controller * c, int32_t i, float conf) {
    const int32_t b = conf >= 0.0f ? bucket_of(conf) : -1;
    c->bucket[i] = b;
    c->n_conf = i + 1;
    if (!c->adaptive || b < 0) {
        return true;
    }
    if (i < c->force) {
        return true;
    }
    const tally & t = c->cell[i][b];
    const double a = (t.hit + k_prior_weight * c->prior[i][b] + k_optimism) / (t.n + k_prior_weight + k_optimism);
    const bool keep = (c->probing && i == 0) || best_gain(*c, i, c->reach, a, c->a_mean) > 0.0;
    if (keep) {
        c->reach *= a;
    }
    return keep;
}

bool controller_extend(controller * c, int32_t i) {
    if (!c->adaptive || i + 1 < c->force) {
        return true;
    }
    if (i + 1 >= c->k_max) {
        return false;
    }
    return draft_worth(*c, i + 1, c->reach, c->acc[i + 1]) - c->rate * c->d > 0.0;
}

void controller_update(controller * c, const step_record & r) {
    // a probe whose first draft was accepted against the odds: the head may have got better, look
    // again soon
    if (c->probing && r.n_accepted > 0 && c->a_mean[0] < 0.5 && c->steps >= k_probe_min && c->could_pay) {
        c->probe_every = k_probe_min;
        c->next_probe = c->steps + k_probe_soon;
    }
    if (r.n_mtp_calls > 0) {
        age_counts(*c, k_accept_decay);
    }
    // draft i's outcome is observed when the drafts before it were accepted
    for (int32_t i = 0; i < r.n_drafted && i <= r.n_accepted; ++i) {
        const bool hit = i < r.n_accepted;
        c->pos[i].add(hit);
        if (c->bucket[i] >= 0) {
            c->cell[i][c->bucket[i]].add(hit);
        }
    }
    for (int32_t i = 0; i < c->n_conf; ++i) {
        if (c->bucket[i] >= 0) {
            c->seen[i][c->bucket[i]] += 1.0;
        }
    }
    for (int32_t i = 0; i < r.n_overlap && i < K; ++i) {
        int32_t best = 0;
        for (int32_t j = 0; j < k_n_mix; ++j) {
            c->overlap[i][j] += r.overlap[i][j];
            best = c->overlap[i][j] > c->overlap[i][best] ? j : best;
        }
        c->overlap_n[i] += 1.0;
        // a new mixture accepts differently: what was counted under the old one counts less
        if (c->overlap_n[i] >= k_min_overlap_rows && best != c->mix_idx[i]) {
            c->pos[i].age(k_mix_forget);
            for (int32_t b = 0; b < NB; ++b) {
                c->cell[i][b].age(k_mix_forget);
            }
            c->mix_idx[i] = best;
        }
    }
    c->behind = r.n_mtp_calls > 0 || !c->states ? 0 : c->behind + 1;
    // a pass that built its graph anew (the row count changed) costs more than the steady pass V(k) is
    // about: that extra is learnt apart and charged to a decision that changes the row count
    const int32_t n = r.n_drafted;
    if (!c->states) {  // a plain pass without states (built anew when the states were on before)
        if (r.trunk_reused) {
            c->bare.add(r.t_verify, c->steps);
        } else if (c->bare.n > 0) {
            c->rebuild.add(std::max(1e-9, r.t_verify - c->bare.mean), c->steps);
        }
    } else if (r.trunk_reused) {
        c->verify[n].add(r.t_verify, c->steps);
        c->verify_reused[n] = true;
    } else {
        if (c->verify_reused[n]) {
            c->rebuild.add(std::max(1e-9, r.t_verify - c->verify[n].mean), c->steps);
        }
        c->verify[n].add(c->rebuild.n > 0 ? std::max(r.t_verify - c->rebuild.mean, 0.5 * r.t_verify) : r.t_verify,
                         c->steps);
    }
    c->last_n = n;
    if (r.n_mtp_calls > 0 && r.steady) {
        c->head.add(r.t_head, c->steps);
    } else if (r.n_mtp_calls > 0 && r.n_behind > 0 && c->head.n > 0) {
        c->catch_up.add(std::max(1e-9, r.t_head - c->head.mean) / r.n_behind, c->steps);
    }
    if (r.n_mtp_calls > 1) {
        c->decode.add(r.t_draft / (r.n_mtp_calls - 1), c->steps);
    }
    c->other.add(std::max(1e-9, r.t_step - r.t_head - r.t_draft - r.t_verify + std::max(0.0, r.t_gap)), c->steps);
}

bool controller_idle(const controller * c) {
    return c->adaptive && c->k_max > 0 && c->steps >= k_idle_steps && c->want < k_idle_want;
}

void controller_report(const controller * c_in, int32_t draft_max, mtpl_stats & out) {
    controller c_now = *c_in;  // the estimates as of now
    estimate(c_now);
    const controller * c = &c_now;
    for (int32_t i = 0; i < K; ++i) {
        out.est_accept[i] = i < draft_max ? mean_accept(*c, i) : 0.0;
    }
    for (int32_t k = 0; k <= K; ++k) {
        out.est_verify_s[k] = c->verify[k].n > 0 ? c->verify[k].mean : 0.0;
    }
    out.est_head_s = c->head.mean;
    out.est_catch_up_s = c->catch_up.mean;
    out.est_rebuild_s = c->rebuild.mean;
    out.est_draft_s = c->decode.mean;
    out.est_other_s = c->other.mean;
    out.est_rate = c->rate;
    if (c->adaptive) {
        choose_mixes(*c, out.draft_mix);
    }
    for (int32_t b = 0; b < NB; ++b) {
        out.calib_conf_lo[b] = k_bucket_lo[b];
        out.calib_accept[b] = c->acc[0][b];
        out.calib_weight[b] = c->cell[0][b].n;
    }
}

} // namespace mtpl
