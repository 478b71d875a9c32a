// The proposer: the MTP context, its KV cache kept in step with the trunk's, and drafting.
#pragma once

#include <atomic>
#include <cstdint>
#include <vector>

#include "controller.h"
#include "llama.h"
#include "sampler.h"
#include "trace.h"

namespace mtpl {

// Positions.  The trunk has evaluated tokens[0, n_trunk); tokens[n_trunk] is the pending token.
// An MTP block pairs token t_p with the trunk's state h_{p-1}: fed (t_p, h_{p-1}) at position p
// it outputs logits for position p + 1.  A head's cache holds entries for positions below its
// n_past (gaps aside, below); the backlog keeps h_{p-1} for positions p in [bl_start, bl_start +
// its rows), all at or above the lowest head's n_past; h_last is h_{n_trunk-1} when h_valid.
// n_past == n_trunk + 1 means the head entry (pending token, h_last) is already in that cache.
//
// Gaps.  A trunk pass may leave its states out (a session that has stopped drafting skips reading
// them: over RPC each read is a round trip), and a windowed backlog drops its older rows.  Those
// positions never enter the MTP caches, which go on after the gap at the next free MTP position
// (llama.cpp wants a sequence's positions consecutive): from there MTP positions run behind trunk
// positions by a larger shift, and the head sees its older entries as nearer than they were.
// That changes only what it drafts.
//
// Several heads (a file with n NextN blocks, trained as a chain) draft as llama.cpp chains them:
// draft i comes from head i, fed the pending token and the drafts before it, each paired with the
// state of the head before (head 0's with the trunk's).  Each head has a context of its own (its
// own cache positions), and catches up on the backlog only when a step drafts that deep, in the
// same call: one MTP call per draft, as with one head.  Past the last head, the last one recurses.
struct head_lane {
    llama_context * ctx = nullptr;
    llama_batch_ext * batch = nullptr;
    int32_t seq = 0;            // this proposer's sequence in ctx
    bool shared = false;        // ctx and batch are a group's (freed with it)
    int32_t n_past = 0;
    int32_t mtp_next = 0;       // the MTP position the next cache entry takes
    struct segment {
        int32_t from;           // trunk position of the segment's first entry
        int32_t shift;          // MTP position = trunk position - shift within it
    };
    std::vector<segment> segments;  // the cache's runs of entries between gaps, in order
    std::vector<int32_t> entry_pos;  // trunk position and token of each cache entry, by MTP position
    std::vector<int32_t> entry_tok;  // (bookkeeping checked by tests: mtpl_test_mtp_entries)
    bool warm = false;          // it has evaluated a batch (a context's first one costs far more)
};

// Rows of states a head keeps while drafting does not pay (proposer::window): a probe drafts from
// recent context.
constexpr int32_t k_idle_window = 16;

struct proposer {
    std::vector<head_lane> heads;  // heads[i] drafts the i-th token of a step (the last one beyond)
    int32_t n_state = 0;           // floats in a trunk state (mtpl_model_info.n_embd_state)
    int32_t n_vocab = 0;
    int32_t n_batch = 0;
    int32_t bl_start = 0;       // trunk position of the backlog's first row
    std::vector<float> backlog;
    std::vector<float> h_last;
    bool h_valid = false;       // h_last holds h_{n_trunk-1}
    std::vector<float> chain;   // the states each call of this step fed its last row (several heads)
    bool kept_up = false;       // the last step called the MTP head (its backlog is one step's rows)
    int32_t window = 0;         // > 0: the backlog keeps its last window rows, older ones leave a gap
                                // instead of being caught up (drafting does not pay: k_idle_window)
    std::vector<draft_dist> q;  // the distributions this step's drafts were drawn from (sampled decoding)
    sampler_scratch scratch;
    trace * tr = nullptr;
};

// What drafting cost the caller needs to know.
struct draft_outcome {
    int32_t n_calls = 0;        // MTP graph evaluations
    double t_head = 0.0;        // seconds of the first one (the backlog and the head entry)
    double t_draft = 0.0;       // seconds of the others
    int32_t n_upkeep = 0;       // calls that only caught a head up (several heads: draft.cpp), among n_calls
    double t_upkeep = 0.0;      // and their seconds
    bool steady = false;        // the MTP cache was in step before this step (see controller.h)
    int32_t n_behind = 0;       // backlog positions the first evaluation caught up before the head entry
};

// Create an MTP context per NextN block of model (cp: the trunk's context parameters).
bool proposer_init(proposer & p, llama_model * model, llama_context_params cp, int32_t n_state, int32_t n_vocab,
                   trace * tr);
// The same on a group's MTP context (one NextN block): sequence seq of ctx, evaluated in batch.
void proposer_init_shared(proposer & p, llama_context * ctx, llama_batch_ext * batch, int32_t seq, int32_t n_batch,
                          int32_t n_state, int32_t n_vocab, trace * tr);
// An MTP context for a group of n_seq sessions (one KV stream each; cp: a session's parameters).
llama_context * shared_mtp_context(llama_model * model, llama_context_params cp, int32_t n_seq, int32_t n_batch);
void proposer_free(proposer & p);
void proposer_reset(proposer & p);
// The trunk's last pass evaluated rows [row0, row0 + n_rows) from position pos0: their states join the
// backlog (where the MTP cache lacks the position) and the last becomes h_last.  with_states false:
// the pass left its states out, and those positions are skipped.
void proposer_observe(proposer & p, llama_context * trunk, int32_t row0, int32_t pos0, int32_t n_rows, bool with_states);
// Drop MTP cache entries from position pos on.
void proposer_forget(proposer & p, int32_t pos);
// The trunk's context was cut to n_keep tokens and its last row re-evaluated (state h_last; nullptr:
// that pass left its states out).
void proposer_truncate(proposer & p, int32_t n_keep, const float * h_last);
// Draft up to k tokens after tokens (whose last, at position n_trunk, is the pending one): each
// draft is drawn from the head's distribution (as the verify mode wants, mixed toward its arg-max
// as mix[i] says), fed back with the head's own output state.  Drafting ends at a draft whose
// head probability is below draft_p_min, or where the controller ends it.  No drafts without h_last.
int32_t proposer_draft(proposer & p, const std::vector<int32_t> & tokens, int32_t n_trunk, int32_t k,
                       const float * mix, const mtpl_gen_params & g, controller * ctl, rng_type & rng,
                       std::atomic<bool> & cancel, std::vector<int32_t> & drafts, draft_outcome & out);

// Several proposers on one shared MTP context drafting at once: one MTP call per draft depth for all
// of them (their head entries and backlogs in the first).  Each job is what proposer_draft takes.
struct draft_job {
    proposer * p;
    const std::vector<int32_t> * tokens;
    int32_t n_trunk;
    int32_t n_ctx;              // the session's context (filler rows stay inside it)
    int32_t k;
    const float * mix;
    const mtpl_gen_params * g;
    controller * ctl;
    rng_type * rng;
    std::atomic<bool> * cancel;
    std::vector<int32_t> * drafts;
    draft_outcome * out;
    int32_t status = 0;         // MTPL_OK, or why this job's drafting failed
};
// exact: raise the batch-invariant row bound for calls with more rows (every row as a lone row).
void proposer_draft_many(std::vector<draft_job> & jobs, llama_context * ctx, llama_batch_ext * batch, bool exact);

// softmax(logits)[top] for the arg-max token top
float top_prob(const float * logits, int32_t n_vocab, int32_t top);

} // namespace mtpl
