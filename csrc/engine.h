// Internal declarations shared by the engine's translation units (never exported).
#pragma once

#include <atomic>
#include <chrono>
#include <cstdint>
#include <random>
#include <string>
#include <unordered_map>
#include <vector>

#include "llama.h"

extern "C" {
#include "mtpllama.h"
}

namespace mtpl {

// --- errors (api.cpp) -----------------------------------------------------------
// Record msg as this thread's last error and return status.
int32_t fail(int32_t status, const std::string & msg);
void clear_error();
// The last ERROR line llama.cpp/ggml logged on this thread (used to explain failures).
std::string upstream_error();
void clear_upstream_error();
// Install our log hook and initialise the llama.cpp backend once per process.
void ensure_backend();

// --- GGUF facts read before llama.cpp sees the file (model.cpp) -----------------
struct file_facts {
    std::string arch;
    std::string name;
    uint32_t block_count = 0;
    uint32_t nextn = 0;                 // <arch>.nextn_predict_layers
    int32_t n_tensors = 0;
    int32_t n_tensors_nextn = 0;
    int64_t nextn_bytes = 0;
    bool has_mtp = false;               // a complete single NextN block is present
    std::string mtp_problem;            // why has_mtp is false (for the error message)
};
int32_t read_file_facts(const std::string & path, file_facts & out);

// --- sampling (sampler.cpp) -----------------------------------------------------
using rng_type = std::mt19937_64;

// A sampling distribution: candidate ids and their probabilities (sum 1).
struct dist {
    std::vector<int32_t> ids;
    std::vector<float> probs;
    float prob_of(int32_t id) const;
    int32_t top() const;
    float top_prob() const;
};

bool penalties_active(const mtpl_gen_params & g);
// Token counts in the penalty window over context followed by extra[0, n_extra).
void penalty_counts(const mtpl_gen_params & g, const int32_t * context, size_t n_context, const int32_t * extra,
                    int32_t n_extra, std::unordered_map<int32_t, int32_t> & counts);
// logits -> distribution after penalties, top-k, top-p, min-p and temperature.
void build_dist(const float * logits, int32_t n_vocab, const mtpl_gen_params & g,
                const std::unordered_map<int32_t, int32_t> & counts, std::vector<float> & scratch, dist & out);
double uniform01(rng_type & rng);
int32_t sample(const dist & d, rng_type & rng);
// a sample of norm(max(0, p - q))
int32_t sample_residual(const dist & p, const dist & q, rng_type & rng);
// Gumbel-max sample of d with noise determined by (seed, pos, token id) alone
int32_t sample_keyed(const dist & d, uint64_t seed, int64_t pos);

// --- the adaptive draft-length controller (controller.cpp) ----------------------
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
void controller_reset(controller & c);
// the controller against a simulated model (mtpl_controller_simulate)
void controller_simulate(const mtpl_controller_sim & sim, int32_t * out_k, double & tokens, double & seconds);
int32_t controller_choose(controller & c, int32_t k_max);
// the controller's estimates: P(draft i is made | drafts before it were), and the expected
// seconds of a step asked for k drafts with the caller's time between steps (0: nothing timed yet)
double controller_p_made(const controller & c, int32_t i);
double controller_step_seconds(const controller & c, int32_t k);
// t_gap < 0: unknown (the first step after a feed).  t_catch_up: seconds of the step's first
// MTP evaluation.  steady: the step's MTP work was what drafting every step costs (the MTP
// cache was in step with the previous step), so its time is a sample of T(k); after plain
// steps or a prompt, that first evaluation also caught the MTP cache up over every position
// it missed, a one-off cost that is taken out before the step's time counts as T(k).
void controller_update(controller & c, int32_t k, int32_t n_drafted, int32_t n_accepted, int32_t n_mtp_calls,
                       double t_draft, double t_verify, double t_step, double t_gap, double t_catch_up,
                       bool steady);

// --- verification helpers (verify.cpp) ----------------------------------------
int32_t argmax(const float * logits, int32_t n_vocab);
// whether the arg-max token `top` has probability below p_min (> 0) under softmax(logits)
bool top_prob_below(const float * logits, int32_t n_vocab, int32_t top, float p_min);
// Greedy acceptance: number of drafts d[i] equal to the target's choice g[i].
int32_t accept_greedy(const int32_t * drafts, const int32_t * target, int32_t n_drafts);
bool is_greedy(const mtpl_gen_params & g);

} // namespace mtpl

struct mtpl_model {
    llama_model * model = nullptr;
    const llama_vocab * vocab = nullptr;
    mtpl_model_info info{};
    std::vector<std::string> override_patterns;
    std::vector<llama_model_tensor_buft_override> overrides;
    std::atomic<int32_t> n_sessions{0};
};

struct mtpl_session {
    mtpl_model * model = nullptr;
    llama_context * trunk = nullptr;
    llama_context * mtp = nullptr;      // null for a plain-decoding session
    llama_batch_ext * trunk_batch = nullptr;
    llama_batch_ext * mtp_batch = nullptr;
    int32_t n_ctx = 0;
    int32_t n_batch = 0;
    int32_t n_embd = 0;
    int32_t n_vocab = 0;
    mtpl_gen_params gen{0, 0.0f};

    // The context: tokens[0, n_past) are in the trunk KV cache; when has_pending,
    // tokens.back() is the chosen next token that the trunk has not evaluated yet.
    std::vector<int32_t> tokens;
    int32_t n_past = 0;
    bool has_pending = false;
    bool pending_emitted = false;
    std::vector<float> h_last;          // trunk hidden state at n_past-1 (MTP input)

    // The MTP KV cache holds positions [0, mtp_n_past) paired with trunk states.
    // When mtp_n_past <= n_past, backlog_h holds, for each position p in
    // [mtp_n_past, n_past), the trunk state at p-1 that the MTP block pairs with
    // tokens[p]; they are evaluated with the next draft.  mtp_n_past == n_past+1
    // means the head entry (pending token, h_last) is already in the MTP cache.
    int32_t mtp_n_past = 0;
    std::vector<float> backlog_h;
    bool mtp_kept_up = false;  // the last step called the MTP head (its backlog is one step's rows)
    double t_catch_up = 0.0;   // seconds of this step's first MTP evaluation (backlog + head entry)

    mtpl::rng_type rng{0};
    mtpl::controller ctl;
    std::chrono::steady_clock::time_point last_step_end{};  // for the controller's between-steps time
    bool last_step_valid = false;
    std::vector<mtpl::dist> qdists;           // draft distributions of the current step (sampled decoding)
    std::vector<float> logit_scratch;
    std::unordered_map<int32_t, int32_t> counts;
    std::vector<int32_t> drafts;        // scratch
    std::vector<int32_t> targets;       // scratch
    std::vector<float> h_scratch;       // scratch

    bool debug = false;                 // record mtpl_debug_event rows (tests)
    int32_t debug_call = 0;
    std::vector<mtpl_debug_event> debug_events;
    std::vector<float> debug_floats;

    std::atomic<bool> busy{false};
    std::atomic<bool> cancel{false};
    mtpl_stats stats{};
    int64_t reused_base_trunk = 0;      // llama.cpp's graph-reuse counters when stats were last reset
    int64_t reused_base_mtp = 0;
};

namespace mtpl {
// verify.cpp: decide drafts against the trunk's rows of the last verification
// pass; returns the number accepted and sets *next (the recovered/bonus token)
int32_t verify_step(mtpl_session * s, int32_t n_drafts, int32_t * next);
// the token chosen from trunk row `row` with context tokens[0, n_ctx_tokens) (greedy or sampled)
int32_t choose_token(mtpl_session * s, const float * logits, size_t n_ctx_tokens);
// session.cpp
int32_t session_create(mtpl_model * model, const mtpl_session_params & p, mtpl_session ** out);
void session_destroy(mtpl_session * s);
int32_t session_reset(mtpl_session * s);
int32_t session_feed(mtpl_session * s, const int32_t * tokens, int32_t n);
int32_t session_step(mtpl_session * s, int32_t n_max, int32_t * out, int32_t cap, mtpl_step_result * res);
int32_t session_truncate(mtpl_session * s, int32_t n_keep);
void debug_row(mtpl_session * s, int32_t kind, int32_t pos, int32_t token, const float * h_in, const float * logits,
               const float * h_out);
void debug_forget(mtpl_session * s, int32_t kind, int32_t pos);
void session_memory(const mtpl_session * s, int64_t * weights, int64_t * kv, int64_t * compute);
// model.cpp
int32_t model_load(const mtpl_model_params & p, mtpl_model ** out);
void model_destroy(mtpl_model * m);
} // namespace mtpl
