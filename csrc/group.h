// A group: sessions that share one trunk context, one KV stream each, and verify their drafts in
// one trunk pass per step (continuous batching: each step takes the sessions the caller names).
#pragma once

#include <atomic>
#include <cstdint>
#include <mutex>
#include <vector>

#include "session.h"

struct mtpl_group {
    mtpl_model * model = nullptr;
    llama_context * trunk = nullptr;
    llama_batch_ext * batch = nullptr;
    llama_context * mtp = nullptr;      // the sessions' MTP context (a file with one NextN block; else each its own)
    llama_batch_ext * mtp_batch = nullptr;
    mtpl::trunk_shared shared;
    std::vector<mtpl_session *> sessions;  // sessions[i] is sequence i
    std::mutex mu;                      // one evaluation in the shared context at a time
    bool exact = true;
    bool cap = true;                    // the group caps the sessions' drafts (choose_cap)
    int32_t n_batch = 0;                // the trunk context's batch: every session's k + 1 rows
    std::atomic<bool> never{false};     // a group pass is not cancelled by one session
    mtpl_group_stats stats{};
    double n_mean = 0.0;                // sessions per step, a mean aged by x0.9 per step
    // a pass's seconds against its rows, t = a + b * rows, fitted over recent passes: a session's
    // share of a pass is a / (sessions) + b * (its rows), and the filler rows its length caused
    double fit_w = 0.0, fit_r = 0.0, fit_t = 0.0, fit_rr = 0.0, fit_rt = 0.0;
    // the draft cap's bandit (group.cpp choose_cap): per bucket of sessions stepping together, the
    // decayed tokens and seconds of the steps taken under each cap
    static constexpr int32_t k_buckets = 6;
    struct cap_bucket {
        int64_t steps = 0;
        int64_t next_probe = 0;     // the step of the next try of the best cap's neighbours
        int32_t interval = 0;       // steps between such tries (doubles while they lose)
        int32_t probed = -1;        // the cap the last try took
        double tok[MTPL_MAX_DRAFT + 1] = {};
        double sec[MTPL_MAX_DRAFT + 1] = {};
        bool tried(int32_t c) const { return sec[c] > 0.0; }
        double rate(int32_t c) const { return tok[c] / sec[c]; }
        // the tried cap of 0..k_most with the highest rate (0 first: ties keep the shorter cap)
        int32_t best(int32_t k_most) const {
            int32_t b = 0;
            for (int32_t c = 1; c <= k_most; ++c) {
                if (tried(c) && rate(c) > rate(b)) {
                    b = c;
                }
            }
            return b;
        }
    } caps[k_buckets];
};

namespace mtpl {

int32_t group_create(mtpl_model * model, const mtpl_group_params & p, mtpl_group ** out);
void group_destroy(mtpl_group * g);
// One step of sessions ss[0, n) (distinct, of g): each drafts, then one trunk pass verifies them all.
// Session i writes its tokens to out + i * cap and its result to res[i]; status[i] is its status.
// The MTP backlog window (draft.h proposer::window) of n sessions stepping together: > 0 where the
// draft cap's bandit found that drafting does not pay for so many, else 0.
int32_t group_head_window(const mtpl_group * g, int32_t n);
// ... for a prompt fed to session fed of g: as many sessions as usually step together, or as are
// generating now with it, whichever is more
int32_t group_prompt_window(const mtpl_group * g, const mtpl_session * fed);
// mtpl_session_adopt_prefix: s (of g) takes the longest prefix of tokens another session's cache
// holds, where that is longer than its own by enough to pay for the copy; *n_kept 0: nothing copied.
int32_t group_adopt_prefix(mtpl_group * g, mtpl_session * s, const int32_t * tokens, int32_t n_tokens,
                           int32_t * n_kept);
// Tests: the cap bandit of n sessions as if cap c had run a second at rate[c] for c < n_caps.
void group_seed_caps(mtpl_group * g, int32_t n, const double * rate, int32_t n_caps);
int32_t group_step(mtpl_group * g, int32_t n, mtpl_session * const * ss, const int32_t * n_max, int32_t * out,
                   int32_t cap, mtpl_step_result * res, int32_t * status);

} // namespace mtpl
