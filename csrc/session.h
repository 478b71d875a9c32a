// A session, behind the C API's opaque handle: the trunk context, the proposer, the controller,
// and one generation step.
#pragma once

#include <atomic>
#include <chrono>
#include <cstdint>
#include <string>
#include <vector>

#include "controller.h"
#include "draft.h"
#include "llama.h"
#include "model.h"
#include "sampler.h"
#include "trace.h"
#include "util.h"

struct mtpl_group;

namespace mtpl {
// What the sessions that evaluate in one trunk context share: a lone session's own, or a group's.
struct trunk_shared {
    bool states = false;                // the context's passes report their states (llama_set_embeddings_nextn)
    bool masked = false;                // ... of their output rows only
    int64_t passes = 0;                 // passes evaluated: a session's rows are readable while none followed
    std::atomic<bool> * watch = nullptr;  // the cancel flag the running pass aborts on (null: none)
};
}

struct mtpl_session {
    mtpl_model * model = nullptr;
    llama_context * trunk = nullptr;    // a group's sessions share its context, one KV stream each
    llama_batch_ext * trunk_batch = nullptr;
    mtpl_group * group = nullptr;       // the group owning trunk and trunk_batch (null: this session owns them)
    int32_t seq = 0;                    // this session's sequence in trunk
    mtpl::trunk_shared own_shared;
    mtpl::trunk_shared * shared = &own_shared;
    int64_t last_pass = -1;             // the pass (shared->passes) that holds last_row
    bool mtp = false;                   // the session drafts: prop and ctl are set up
    bool states = false;                // this session's last trunk pass reported its states for the MTP head
    mtpl::proposer prop;
    mtpl::controller_ptr ctl;
    int32_t n_ctx = 0;
    int32_t n_batch = 0;
    int32_t n_vocab = 0;
    mtpl_gen_params gen{};

    // The context: tokens[0, n_past) are in the trunk KV cache; when has_pending,
    // tokens.back() is the chosen next token that the trunk has not evaluated yet.
    std::vector<int32_t> tokens;
    int32_t n_past = 0;
    bool has_pending = false;
    bool pending_emitted = false;

    mtpl::rng_type rng{0};
    mtpl::sampler_scratch scratch;
    std::vector<int32_t> drafts;        // this step's
    std::vector<const float *> rows;    // this step's trunk logit rows
    std::vector<mtpl::dist> reached_p;  // sampled decoding: trunk distributions of the rows verification reached
    std::vector<float> dense;           // n_vocab zeros (mix_overlaps)
    double overlap[MTPL_MAX_DRAFT][mtpl::k_n_mix] = {};
    std::chrono::steady_clock::time_point last_step_end{};  // for the controller's between-steps time
    bool last_step_valid = false;

    // a step between its drafting and its verification (session_step, or a group's step)
    struct step_state {
        mtpl::clock_type::time_point t0;
        mtpl::step_plan plan{0, {}, false};
        mtpl::draft_outcome drafted;
        int32_t k = 0;                  // drafts planned
        double t_draft = 0.0;
        int32_t pos0 = 0;
        int32_t n_max = 0;
        int32_t * out = nullptr;
        mtpl_step_result * res = nullptr;
    } cur;

    mtpl::trace tr;
    std::atomic<bool> busy{false};
    std::atomic<bool> cancel{false};
    mtpl_stats stats{};
    int64_t reused_base_trunk = 0;      // llama.cpp's graph-reuse counters when stats were last reset
    int64_t reused_base_mtp = 0;

    // Recurrent trunks (arch->recurrent): llama.cpp keeps a snapshot of the state after each of the
    // last rs_depth positions of a pass; dropping r <= rs_depth of them restores the r-th once, at
    // the next pass.  rs_rows: positions of the last pass whose snapshots are still unused.
    int32_t last_row = -1;              // the trunk's output row for position n_past - 1 (-1: none held; valid
                                        // while last_pass is the context's last)
    bool recurrent = false;
    int32_t rs_depth = 0;
    int32_t rs_rows = 0;
    bool trunk_stale = false;           // a failed pass left the state unknown: rebuild from tokens[0, n_past)
    std::vector<uint8_t> ckpt;          // the recurrent state after positions [0, ckpt_pos) (-1: none)
    int32_t ckpt_pos = -1;
    bool test_skip_rollback = false;    // test hook: drop rejected positions without restoring the state
    int32_t test_gap_every = 0;         // test hook: every n-th verification pass leaves its states out
    int64_t test_passes = 0;            // ... counting from when it was set
};

namespace mtpl {

int32_t session_create(mtpl_model * model, const mtpl_session_params & p, mtpl_session ** out);
void session_destroy(mtpl_session * s);
// A session on a group's trunk context (group.cpp), sequence seq, n_ctx tokens; mtp_ctx: the group's
// MTP context (one NextN block) or null (the session makes its own).
int32_t session_create_in(mtpl_model * model, mtpl_group * group, llama_context * trunk, llama_batch_ext * batch,
                          trunk_shared * shared, int32_t seq, const mtpl_session_params & p, llama_context * mtp_ctx,
                          llama_batch_ext * mtp_batch, mtpl_session ** out);
// A step in three parts, for a group's steps: begin (emit the pending token, plan, draft; false in
// *pass when the step ended without a trunk pass), the pass (the caller's: rows [pending, drafts...]
// of s->tokens from s->cur.pos0, all output; k_cap bounds the drafts), finish (verify rows from row0, keep, roll back).
int32_t step_begin(mtpl_session * s, int32_t n_max, int32_t * out, mtpl_step_result * res, bool * pass,
                   int32_t k_cap = MTPL_MAX_DRAFT, bool draft_here = true);
// draft_here false: step_begin planned s->cur.k drafts and made none; the caller drafted them into
// s->drafts and s->cur.drafted (t_draft seconds, this session's share): the step goes on
void step_drafted(mtpl_session * s, double t_draft);
void step_abandon(mtpl_session * s);  // the pass failed: drop the drafts
void step_finish(mtpl_session * s, int32_t row0, double t_verify, bool trunk_reused, bool in_group);
bool step_wants_states(const mtpl_session * s);
// bookkeeping after a trunk pass that held rows [row0, row0 + n) of this session from position pos0
void pass_done(mtpl_session * s, int32_t row0, int32_t pos0, int32_t n, bool all_logits, int32_t out_from = -1);
void pass_failed(mtpl_session * s);
// n_ctx, n_batch, n_threads resolved and checked, into a context's parameters
int32_t context_params(const mtpl_model * model, const mtpl_session_params & p, llama_context_params & cp);
void set_states(mtpl_session * s, bool on, bool masked = false);

int32_t session_reset(mtpl_session * s);
int32_t session_feed(mtpl_session * s, const int32_t * tokens, int32_t n);
int32_t session_step(mtpl_session * s, int32_t n_max, int32_t * out, mtpl_step_result * res);
int32_t session_truncate(mtpl_session * s, int32_t n_keep);
// Copy src's trunk cache entries (a session of the same group) into s's sequence and keep tokens[0,
// n_keep) as s's context (n_keep - 1 <= src->n_past; src's context starts with them).
int32_t session_adopt(mtpl_session * s, const mtpl_session * src, const int32_t * tokens, int32_t n_keep);
void session_stats(const mtpl_session * s, mtpl_stats & out);
void session_reset_stats(mtpl_session * s);
void session_memory(const mtpl_session * s, int64_t * weights, int64_t * kv, int64_t * compute);
// per buffer type of one context: "NAME\tweights\tkv\tcompute\n" lines (mtpl_session_memory_by_buffer)
std::string session_memory_by_buffer(const mtpl_session * s, bool mtp);

} // namespace mtpl
