// The adaptive controller: how deep each step drafts, draft by draft, and which draft distribution
// sampled decoding uses, behind an opaque handle.  controller.cpp explains the policy.
//
// Per step: plan (draft at all? with which draft distribution?), then while drafting keep (verify
// draft i, whose head confidence is now known?) and extend (run the MTP head once more for draft
// i + 1?), then update with what the step did and took.  report exposes the estimates.
#pragma once

#include <cstdint>
#include <memory>

extern "C" {
#include "mtpllama.h"
}

namespace mtpl {

struct controller;

controller * controller_new();
void controller_free(controller * c);
struct controller_deleter {
    void operator()(controller * c) const { controller_free(c); }
};
using controller_ptr = std::unique_ptr<controller, controller_deleter>;

// forget everything measured
void controller_reset(controller * c);
// a new text begins (the session was reset): acceptance counts carry over at a lower weight, costs
// in full, and probing starts again at its shortest spacing
void controller_new_text(controller * c);

// The mixtures of a draft distribution the controller chooses from: q = mix * [x = the head's
// arg-max] + (1 - mix) * the head's distribution after the sampling transforms.
constexpr int32_t k_n_mix = MTPL_N_MIX;
constexpr float k_mix_grid[k_n_mix] = {0.0f, 0.5f, 0.8f, 0.95f, 1.0f};

struct step_plan {
    int32_t k_max;              // drafts at most (0: a plain step that leaves the MTP head alone)
    float mix[MTPL_MAX_DRAFT];  // sampled decoding: the mixture of draft i's distribution (see k_mix_grid)
    bool states;                // this step's trunk pass reports its states (the next step may draft)
};
// adaptive: choose; otherwise draft k_max every step (the estimates are kept either way).
// have_states: the last trunk pass reported its states (without them this step cannot draft).
step_plan controller_plan(controller * c, int32_t k_max, bool adaptive, bool have_states);
// Draft i (0-based) has head confidence conf (the head's probability of the drafted token; < 0: not
// computed, as a fixed plan's greedy drafts): verify it?  false ends the step's drafting.  Always
// true when the plan was not adaptive.
bool controller_keep(controller * c, int32_t i, float conf);
// Draft i is kept: run the MTP head for draft i + 1?
bool controller_extend(controller * c, int32_t i);

// what a step did and took
struct step_record {
    int32_t n_drafted;          // drafts verified
    int32_t n_accepted;
    int32_t n_mtp_calls;        // MTP graph evaluations (the head call included)
    double t_head;              // seconds of the first MTP evaluation (backlog and head entry)
    double t_draft;             // seconds of the other MTP evaluations
    double t_verify;            // seconds of the trunk pass
    double t_step;              // seconds of the whole step
    double t_gap;               // seconds the caller spent since the previous step (< 0: unknown)
    bool steady;                // the MTP cache was in step before it (the head call caught up one step only)
    int32_t n_behind;           // positions the head call caught up before the head entry
    // sampled decoding: for each reached draft row i (all drafts before it accepted, i < n_overlap),
    // sum_x min(p_i(x), q_mix(x)) for each mixture of k_mix_grid: its acceptance chance under that mix
    const double (*overlap)[k_n_mix];
    int32_t n_overlap;
    bool trunk_reused = true;   // the trunk pass reused the compute graph of the pass before (same row count)
};
void controller_update(controller * c, const step_record & r);

// Drafting has stopped paying: an adaptive controller whose recent steps (nearly) all chose to run
// plain.  The head then keeps a window of recent states, not the whole context (draft.h).
bool controller_idle(const controller * c);

// the controller's estimates, into the est_* fields of out (draft lengths up to draft_max)
void controller_report(const controller * c, int32_t draft_max, mtpl_stats & out);

} // namespace mtpl
