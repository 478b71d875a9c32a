// The adaptive controller: how many tokens the next step drafts, behind an opaque handle.
// Lifecycle: new, then per step plan -> (the step runs) -> update; report exposes its estimates.
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

// what the next step does
struct step_plan {
    int32_t k;                  // drafts asked for, 0..k_max (0: a plain step that leaves the MTP head alone)
};
step_plan controller_plan(controller * c, int32_t k_max);

// what a step did and took
struct step_record {
    int32_t k;                  // drafts asked for
    int32_t n_drafted;          // drafts made (draft_p_min may stop drafting early)
    int32_t n_accepted;
    int32_t n_mtp_calls;        // MTP graph evaluations
    double t_draft;             // seconds in the MTP head
    double t_verify;            // seconds in the trunk pass
    double t_step;              // seconds of the whole step
    double t_gap;               // seconds the caller spent since the previous step (< 0: unknown)
    double t_catch_up;          // seconds of the step's first MTP evaluation
    bool steady;                // the MTP cache was in step before it (no catch-up over plain steps)
};
void controller_update(controller * c, const step_record & r);

// the controller's estimates, into the est_* fields of out (draft lengths up to draft_max)
void controller_report(const controller * c, int32_t draft_max, mtpl_stats & out);

} // namespace mtpl
