// A session: the trunk context on the model's weights with its KV cache, the proposer (the MTP
// context) and the controller, and one generation step: ask the controller how many tokens to
// draft, draft them, verify them in one trunk pass, keep the accepted prefix, roll back the rest.
#include "session.h"

#include <algorithm>
#include <cstring>
#include <map>
#include <thread>

#include "llama-ext.h"
#include "llama-kv-cache-dsv4.h"
#include "llama-memory-hybrid.h"
#include "llama-memory-recurrent.h"
#include "group.h"
#include "llama_ops.h"
#include "util.h"
#include "verify.h"

namespace mtpl {
namespace {

// Recurrent trunks: state snapshots kept per pass, the deepest rollback (and so draft length) a
// step can take.  Each costs the recurrent layers' state once (Session.memory()["kv"] counts it).
constexpr int32_t k_rs_depth = 8;
// Recurrent trunks: a prompt's state is saved this many tokens before its end, where a conversation's
// next turn usually departs from the cached text (a reply's reasoning block dropped, its end re-rendered).
constexpr int32_t k_ckpt_back = 64;

bool abort_requested(void * data) {
    const auto * sh = static_cast<const trunk_shared *>(data);
    return sh->watch && sh->watch->load();
}

bool is_eog(const mtpl_session * s, int32_t tok) {
    return llama_vocab_is_eog(s->model->vocab, tok);
}


} // namespace

void pass_failed(mtpl_session * s) {
    // a recurrent state may have been overwritten part-way, and no snapshot predates the pass
    if (!llama_memory_seq_rm(llama_get_memory(s->trunk), s->seq, s->n_past, -1) || s->recurrent) {
        s->trunk_stale = true;
    }
    s->tr.forget(MTPL_DEBUG_TRUNK_FORGET, s->n_past);
    s->last_row = -1;
}

void pass_done(mtpl_session * s, int32_t row0, int32_t pos0, int32_t n, bool all_logits, int32_t out_from) {
    s->stats.n_trunk_calls++;
    s->rs_rows = n;
    s->last_row = row0 + n - 1;
    s->last_pass = s->shared->passes;
    s->tr.next_call();
    for (int32_t i = 0; i < n && s->tr.on; ++i) {
        const bool out = all_logits || i == n - 1 || (out_from >= 0 && i >= out_from);
        s->tr.row(MTPL_DEBUG_TRUNK_ROW, pos0 + i, s->tokens[pos0 + i], nullptr,
                  out ? llama_get_logits_ith(s->trunk, row0 + i) : nullptr,
                  s->states && (out || !s->shared->masked) ? llama_get_embeddings_nextn_ith(s->trunk, row0 + i) : nullptr);
    }
}

namespace {

// Evaluate tokens[pos0, pos0 + n) in the trunk; logits for all rows if all_logits, else for the
// last row only.  On failure the trunk forgets what the call may have left.
int32_t eval_trunk(mtpl_session * s, int32_t pos0, int32_t n, bool all_logits, int32_t out_from = -1) {
    llama_batch_ext_clear(s->trunk_batch);
    for (int32_t i = 0; i < n; ++i) {
        const bool out = all_logits || i == n - 1 || (out_from >= 0 && i >= out_from);
        batch_add(s->trunk_batch, s->tokens[pos0 + i], pos0 + i, out, nullptr, 0, s->seq);
    }
    s->shared->passes++;
    if (int32_t st = process(s->trunk, s->trunk_batch, s->cancel, "trunk evaluation"); st != MTPL_OK) {
        s->stats.n_trunk_calls++;
        pass_failed(s);
        return st;
    }
    pass_done(s, 0, pos0, n, all_logits, out_from);
    return MTPL_OK;
}

// Drop trunk cache entries from position pos on; a recurrent state restores its snapshot at pos - 1
// (at the next pass).  False when the state could not be restored.
bool trunk_forget(mtpl_session * s, int32_t pos) {
    llama_memory_t mem = llama_get_memory(s->trunk);
    const bool rolls_back = llama_memory_seq_pos_max(mem, s->seq) >= pos;
    const bool ok = llama_memory_seq_rm(mem, s->seq, pos, -1);
    s->tr.forget(MTPL_DEBUG_TRUNK_FORGET, pos);
    if (!s->recurrent || !rolls_back) {
        return ok;
    }
    if (!ok) {
        s->trunk_stale = true;
        return false;
    }
    s->rs_rows = 0;  // one restore is pending; llama.cpp cannot stack a second before the next pass
    if (s->test_skip_rollback) {  // keep the state of every evaluated position: what omitting the restore does
        if (auto * hybrid = dynamic_cast<llama_memory_hybrid *>(mem)) {
            hybrid->get_mem_recr()->set_rs_idx(s->seq, 0);
        } else if (auto * dsv4 = dynamic_cast<llama_kv_cache_dsv4 *>(mem)) {  // its compressors' windows
            int32_t n_seq_id = 1;
            llama_seq_id seq = s->seq, * seqs = &seq;
            llama_ubatch ub{};
            ub.n_tokens = 1;
            ub.n_seq_id = &n_seq_id;
            ub.seq_id = &seqs;
            dsv4->reset_rs_idx_for_ubatches({ub});
        }
    }
    return true;
}

// Recurrent trunks: save the recurrent state of the positions evaluated so far (no restore pending:
// called right after a prompt pass).
void save_checkpoint(mtpl_session * s) {
    const size_t size = llama_state_seq_get_size_ext(s->trunk, s->seq, LLAMA_STATE_SEQ_FLAGS_PARTIAL_ONLY);
    s->ckpt.resize(size);
    const bool ok = size > 0 && llama_state_seq_get_data_ext(s->trunk, s->ckpt.data(), size, s->seq,
                                                             LLAMA_STATE_SEQ_FLAGS_PARTIAL_ONLY) == size;
    s->ckpt_pos = ok ? s->n_past : -1;
}

// Recurrent trunks: go back to the checkpoint (positions [0, ckpt_pos) evaluated).  False when none
// can serve, or it could not be read back.
bool restore_checkpoint(mtpl_session * s) {
    if (s->ckpt_pos < 1 || s->ckpt_pos > s->n_past) {
        return false;
    }
    if (llama_state_seq_set_data_ext(s->trunk, s->ckpt.data(), s->ckpt.size(), s->seq, LLAMA_STATE_SEQ_FLAGS_PARTIAL_ONLY) !=
            s->ckpt.size() ||
        !llama_memory_seq_rm(llama_get_memory(s->trunk), s->seq, s->ckpt_pos, -1)) {  // the attention layers' entries
        s->ckpt_pos = -1;
        s->trunk_stale = true;  // the read may have cleared the state part-way
        return false;
    }
    s->tr.forget(MTPL_DEBUG_TRUNK_FORGET, s->ckpt_pos);
    s->n_past = s->ckpt_pos;
    s->rs_rows = 0;
    s->last_row = -1;
    return true;
}

// Empty this session's part of the trunk cache (a group's context holds other sessions' too).
void clear_trunk(mtpl_session * s) {
    if (s->group) {
        llama_memory_seq_rm(llama_get_memory(s->trunk), s->seq, -1, -1);
    } else {
        llama_memory_clear(llama_get_memory(s->trunk), true);
    }
}

// Recurrent trunks after a failed pass: evaluate tokens[0, n_past) again from an empty cache, the
// pending token kept.
int32_t rebuild_trunk(mtpl_session * s) {
    const int32_t n_keep = s->n_past;
    clear_trunk(s);
    s->tr.forget(MTPL_DEBUG_TRUNK_FORGET, 0);
    if (s->mtp) {
        proposer_reset(s->prop);
        s->prop.kept_up = false;
    }
    s->trunk_stale = false;
    s->n_past = 0;
    s->stats.n_reevaluated += n_keep;
    set_states(s, true);
    while (s->n_past < n_keep) {
        const int32_t m = std::min(n_keep - s->n_past, s->n_batch);
        if (int32_t st = eval_trunk(s, s->n_past, m, false); st != MTPL_OK) {
            s->n_past = n_keep;  // start over at the next call
            s->trunk_stale = true;
            return st;
        }
        if (s->mtp) {
            proposer_observe(s->prop, s->trunk, 0, s->n_past, m, s->states);
        }
        s->n_past += m;
    }
    s->last_step_valid = false;
    return MTPL_OK;
}

// Drop cached state from position pos on in both caches.
void forget_from(mtpl_session * s, int32_t pos) {
    trunk_forget(s, pos);
    if (s->mtp) {
        proposer_forget(s->prop, pos);
    }
}

int32_t choose_next(mtpl_session * s, const float * logits, size_t n_context) {
    return choose_token(logits, s->n_vocab, s->gen, s->tokens.data(), n_context, s->scratch, s->rng);
}

} // namespace

void set_states(mtpl_session * s, bool on, bool masked) {
    if (!s->mtp) {
        return;
    }
    s->states = on;
    masked = on && masked;
    if (on != s->shared->states || masked != s->shared->masked) {
        llama_set_embeddings_nextn(s->trunk, on, masked);
        s->shared->states = on;
        s->shared->masked = masked;
    }
}

int32_t context_params(const mtpl_model * model, const mtpl_session_params & p, llama_context_params & cp) {
    const mtpl_model_info & info = model->info;
    if (p.mtp && !info.mtp_loaded) {
        return fail(MTPL_ERR_NO_MTP_HEAD, info.file_has_mtp
                                              ? "this model was loaded with mtp=False; load it with mtp=True to draft"
                                              : "this model file has no NextN (MTP) block");
    }
    if (p.n_ctx < 0 || p.n_batch < 0 || p.n_threads < 0) {
        return fail(MTPL_ERR_INVALID_ARGUMENT, "n_ctx, n_batch and n_threads must be >= 0");
    }
    const int32_t n_ctx = p.n_ctx > 0 ? p.n_ctx : std::min(4096, info.n_ctx_train > 0 ? info.n_ctx_train : 4096);
    if (info.n_ctx_train > 0 && n_ctx > info.n_ctx_train) {
        return fail(MTPL_ERR_INVALID_ARGUMENT, "n_ctx " + std::to_string(n_ctx) + " exceeds the model's training context " +
                                                   std::to_string(info.n_ctx_train));
    }
    if (n_ctx < 8) {
        return fail(MTPL_ERR_INVALID_ARGUMENT, "n_ctx must be at least 8");
    }
    const int32_t n_batch = std::min(n_ctx, p.n_batch > 0 ? p.n_batch : 512);
    if (n_batch < 8) {
        return fail(MTPL_ERR_INVALID_ARGUMENT, "n_batch must be at least 8");
    }
    const int32_t n_threads = p.n_threads > 0 ? p.n_threads : (int32_t) std::max(1u, std::thread::hardware_concurrency());
    cp = llama_context_default_params();
    cp.n_ctx = (uint32_t) n_ctx;
    cp.n_batch = (uint32_t) n_batch;
    cp.n_ubatch = (uint32_t) n_batch;
    cp.n_seq_max = 1;
    cp.n_threads = n_threads;
    cp.n_threads_batch = n_threads;
    cp.no_perf = true;
    cp.abort_callback = abort_requested;
    return MTPL_OK;
}

namespace {

// The session's own part: the MTP contexts, the controller, the trace (its trunk context is set).
int32_t session_init(mtpl_session * s, const mtpl_session_params & p, const llama_context_params & cp,
                     llama_context * mtp_ctx = nullptr, llama_batch_ext * mtp_batch = nullptr) {
    mtpl_model * model = s->model;
    const mtpl_model_info & info = model->info;
    s->n_ctx = (int32_t) cp.n_ctx;
    s->n_batch = (int32_t) cp.n_batch;
    s->n_vocab = info.n_vocab;
    s->tr.n_state = info.n_embd_state;
    s->tr.n_vocab = info.n_vocab;
    s->mtp = p.mtp != 0;
    llama_context_params cp_mtp = cp;
    cp_mtp.abort_callback_data = &s->own_shared;  // MTP calls abort on this session's cancel
    s->own_shared.watch = &s->cancel;
    if (s->mtp && mtp_ctx) {
        proposer_init_shared(s->prop, mtp_ctx, mtp_batch, s->seq, (int32_t) cp.n_batch, info.n_embd_state, info.n_vocab,
                             &s->tr);
    } else if (s->mtp && !proposer_init(s->prop, model->head ? model->head : model->model, cp_mtp, info.n_embd_state,
                                        info.n_vocab, &s->tr)) {
        const std::string why = upstream_error();
        return fail(MTPL_ERR_MODEL_LOAD, "could not create the llama.cpp context" + (why.empty() ? "" : ": " + why));
    }
    if (s->mtp) {
        // the trunk reports its state for every position: the MTP block pairs each with a token
        set_states(s, true);
        s->ctl.reset(controller_new());
        s->dense.assign((size_t) info.n_vocab, 0.0f);
    }
    return MTPL_OK;
}

} // namespace

int32_t session_create(mtpl_model * model, const mtpl_session_params & p, mtpl_session ** out) {
    llama_context_params cp;
    if (int32_t st = context_params(model, p, cp); st != MTPL_OK) {
        return st;
    }
    auto * s = new mtpl_session();
    s->model = model;
    model->n_sessions++;  // balanced by session_destroy
    clear_upstream_error();
    llama_context_params cp_trunk = cp;
    cp_trunk.abort_callback_data = &s->own_shared;
    s->recurrent = model->arch->recurrent;
    if (s->recurrent) {  // plain sessions too: both compute the same graphs, and truncation restores snapshots
        s->rs_depth = std::min<int32_t>(k_rs_depth, (int32_t) cp.n_batch - 1);  // a verification pass fits one batch
        cp_trunk.n_rs_seq = (uint32_t) s->rs_depth;
    }
    s->trunk = llama_init_from_model(model->model, cp_trunk);
    if (s->trunk && s->recurrent && (int32_t) llama_n_rs_seq(s->trunk) != s->rs_depth) {
        // llama.cpp clamps n_rs_seq to 0 for architectures it keeps no snapshots for
        session_destroy(s);
        return fail(MTPL_ERR_INTERNAL, "llama.cpp keeps no recurrent-state snapshots for " +
                                           std::string(model->arch->name) + ": rejected drafts could not be rolled back");
    }
    if (!s->trunk) {
        const std::string why = upstream_error();
        session_destroy(s);
        return fail(MTPL_ERR_MODEL_LOAD, "could not create the llama.cpp context" + (why.empty() ? "" : ": " + why));
    }
    s->trunk_batch = llama_batch_ext_init(s->trunk);
    if (int32_t st = session_init(s, p, cp); st != MTPL_OK) {
        session_destroy(s);
        return st;
    }
    *out = s;
    return MTPL_OK;
}

int32_t session_create_in(mtpl_model * model, mtpl_group * group, llama_context * trunk, llama_batch_ext * batch,
                          trunk_shared * shared, int32_t seq, const mtpl_session_params & p, llama_context * mtp_ctx,
                          llama_batch_ext * mtp_batch, mtpl_session ** out) {
    llama_context_params cp;
    if (int32_t st = context_params(model, p, cp); st != MTPL_OK) {
        return st;
    }
    auto * s = new mtpl_session();
    s->model = model;
    model->n_sessions++;
    s->group = group;
    s->trunk = trunk;
    s->trunk_batch = batch;
    s->shared = shared;
    s->seq = seq;
    if (int32_t st = session_init(s, p, cp, mtp_ctx, mtp_batch); st != MTPL_OK) {
        session_destroy(s);
        return st;
    }
    *out = s;
    return MTPL_OK;
}

void session_destroy(mtpl_session * s) {
    proposer_free(s->prop);
    if (!s->group) {
        if (s->trunk_batch) llama_batch_ext_free(s->trunk_batch);
        if (s->trunk) llama_free(s->trunk);
    }
    s->model->n_sessions--;
    delete s;
}

int32_t session_reset(mtpl_session * s) {
    clear_trunk(s);
    if (s->mtp) {
        proposer_reset(s->prop);
        controller_new_text(s->ctl.get());
    }
    s->tokens.clear();
    s->n_past = 0;
    s->has_pending = false;
    s->pending_emitted = false;
    s->trunk_stale = false;
    s->rs_rows = 0;
    s->last_row = -1;
    s->ckpt_pos = -1;
    s->cancel.store(false);
    s->tr.reset();
    return MTPL_OK;
}

int32_t session_feed(mtpl_session * s, const int32_t * tokens, int32_t n) {
    const auto t0 = clock_type::now();
    s->last_step_valid = false;
    s->prop.kept_up = false;  // the prompt joins the MTP backlog
    if (s->cancel.exchange(false)) {
        return fail(MTPL_ERR_CANCELLED, "prompt processing was cancelled");
    }
    if (s->trunk_stale) {
        if (int32_t st = rebuild_trunk(s); st != MTPL_OK) {
            return st;
        }
    }
    // a chosen token the caller never saw is replaced by what they feed
    if (s->has_pending && !s->pending_emitted) {
        s->tokens.pop_back();
        s->has_pending = false;
    }
    const int32_t n_new = (int32_t) s->tokens.size() - s->n_past + n;  // emitted pending token + new ones
    if (s->n_past + n_new > s->n_ctx) {
        return fail(MTPL_ERR_CONTEXT_FULL, "prompt does not fit: " + std::to_string(s->n_past + n_new) +
                                               " tokens in a context of " + std::to_string(s->n_ctx));
    }
    s->tokens.insert(s->tokens.end(), tokens, tokens + n);
    s->has_pending = false;
    // the head drafts best knowing the whole prompt; where drafting does not pay (the controller is
    // idle, or the group's cap is 0), its window of last rows is enough: every other row's state
    // would cost the last layer's work on it
    const int32_t n_total = (int32_t) s->tokens.size();
    if (s->mtp) {
        const bool idle = controller_idle(s->ctl.get());
        s->prop.window = idle ? k_idle_window : s->group ? group_prompt_window(s->group, s) : 0;
    }
    const int32_t states_from = s->prop.window > 0 ? n_total - s->prop.window : 0;
    // recurrent trunks: a pass ends k_ckpt_back tokens before the prompt's end (the next request of a
    // conversation shares the context up to about there) and the state is saved there
    const int32_t ckpt_at = s->recurrent ? std::max(s->n_past + 1, n_total - k_ckpt_back) : -1;
    while (s->n_past < n_total) {
        int32_t m = std::min(n_total - s->n_past, s->n_batch);
        if (s->n_past < ckpt_at && s->n_past + m > ckpt_at) {
            m = ckpt_at - s->n_past;
        }
        // rows before states_from: masked states, the pass's outputs from there on (and its last row)
        const int32_t out_from = std::clamp(states_from - s->n_past, 0, m - 1);
        set_states(s, true, out_from > 0);
        if (int32_t st = eval_trunk(s, s->n_past, m, false, out_from > 0 ? out_from : -1); st != MTPL_OK) {
            // keep what was evaluated; drop the rest so the context stays consistent
            s->tokens.resize((size_t) s->n_past);
            s->stats.t_prefill_s += seconds_since(t0);
            return st;
        }
        if (s->mtp) {
            if (out_from > 0) {
                proposer_observe(s->prop, s->trunk, 0, s->n_past, out_from, false);
            }
            proposer_observe(s->prop, s->trunk, out_from, s->n_past + out_from, m - out_from, true);
        }
        s->n_past += m;
        if (s->n_past == ckpt_at) {
            save_checkpoint(s);
        }
    }
    s->tokens.push_back(choose_next(s, llama_get_logits_ith(s->trunk, -1), s->tokens.size()));
    s->has_pending = true;
    s->pending_emitted = false;
    s->stats.n_prompt_tokens += n;
    s->stats.t_prefill_s += seconds_since(t0);
    return MTPL_OK;
}

int32_t step_begin(mtpl_session * s, int32_t n_max, int32_t * out, mtpl_step_result * res, bool * pass,
                   int32_t k_cap, bool draft_here) {
    *res = mtpl_step_result{0, 0, 0, MTPL_STOP_NONE};
    *pass = false;
    if (!s->has_pending) {
        return fail(MTPL_ERR_INVALID_ARGUMENT, "nothing to continue from: feed a prompt first");
    }
    if (s->cancel.exchange(false)) {
        return fail(MTPL_ERR_CANCELLED, "generation was cancelled");
    }
    if (s->trunk_stale) {
        if (int32_t st = rebuild_trunk(s); st != MTPL_OK) {
            return st;
        }
    }
    mtpl_session::step_state & c = s->cur;
    c.t0 = clock_type::now();
    c.n_max = n_max;
    c.out = out;
    c.res = res;
    const int32_t pending = s->tokens.back();

    // the token chosen after a feed is emitted by the first step
    if (!s->pending_emitted) {
        s->pending_emitted = true;
        out[res->n_tokens++] = pending;
        s->stats.n_generated++;
        s->stats.n_steps++;  // the prompt's trunk pass chose this token
        if (is_eog(s, pending) || res->n_tokens >= n_max) {
            res->stop = is_eog(s, pending) ? MTPL_STOP_EOS : MTPL_STOP_LENGTH;
            s->stats.t_other_s += seconds_since(c.t0);
            return MTPL_OK;
        }
    }
    if (s->n_past + 1 > s->n_ctx) {
        res->stop = MTPL_STOP_CONTEXT;
        s->stats.t_other_s += seconds_since(c.t0);
        return MTPL_OK;
    }

    // whether and how deep to draft: the controller's plan, bounded by the token budget and the context
    c.plan = step_plan{0, {}, false};
    if (s->mtp) {
        c.plan = controller_plan(s->ctl.get(), s->gen.draft_max, s->gen.adaptive != 0, s->prop.h_valid);
        if (!s->group) {  // a group's step sets the window of its sessions
            s->prop.window = controller_idle(s->ctl.get()) ? k_idle_window : 0;
        }
    }
    int32_t k = std::min({c.plan.k_max, n_max - res->n_tokens - 1, k_cap});
    k = std::min(k, s->n_ctx - s->n_past - 1);
    k = std::min(k, s->n_batch - 1);  // the verification batch holds k + 1 tokens
    if (s->recurrent) {
        k = std::min(k, s->rs_depth);  // a rollback restores one of rs_depth snapshots
    }
    k = std::max(k, 0);

    const auto t = clock_type::now();
    c.k = k;
    c.drafted = draft_outcome{};
    s->drafts.clear();
    *pass = true;
    if (!draft_here) {  // the group drafts for its sessions together, then step_drafted
        return MTPL_OK;
    }
    if (s->mtp) {
        const int32_t st = proposer_draft(s->prop, s->tokens, s->n_past, k, c.plan.mix, s->gen, s->ctl.get(), s->rng,
                                          s->cancel, s->drafts, c.drafted);
        if (st != MTPL_OK) {
            s->stats.n_mtp_calls += c.drafted.n_calls;
            *pass = false;
            return st;
        }
    }
    step_drafted(s, seconds_since(t));
    return MTPL_OK;
}

void step_drafted(mtpl_session * s, double t_draft) {
    mtpl_session::step_state & c = s->cur;
    s->stats.n_mtp_calls += c.drafted.n_calls;
    c.t_draft = t_draft;
    c.pos0 = s->n_past;
    s->tokens.insert(s->tokens.end(), s->drafts.begin(), s->drafts.end());
}

bool step_wants_states(const mtpl_session * s) {
    const bool test_gap = s->test_gap_every > 0 && (s->test_passes + 1) % s->test_gap_every == 0;
    return s->cur.plan.states && !test_gap;
}

void step_abandon(mtpl_session * s) {
    s->tokens.resize((size_t) s->cur.pos0 + 1);
}

void step_finish(mtpl_session * s, int32_t row0, double t_verify, bool trunk_reused, bool in_group) {
    const auto t_v = clock_type::now();
    mtpl_session::step_state & c = s->cur;
    mtpl_step_result * res = c.res;
    const int32_t n_drafts = (int32_t) s->drafts.size();
    const int32_t pos0 = c.pos0;
    s->rows.resize((size_t) n_drafts + 1);
    for (int32_t i = 0; i <= n_drafts; ++i) {
        s->rows[(size_t) i] = llama_get_logits_ith(s->trunk, row0 + i);
    }
    const bool learn_mix = s->mtp && n_drafts > 0 && draft_mix_allowed(s->gen);
    verify_result v = verify(s->rows.data(), s->n_vocab, s->tokens.data(), (size_t) pos0 + 1, n_drafts,
                             s->prop.q.data(), s->gen, s->scratch, s->rng, learn_mix ? &s->reached_p : nullptr);
    // an accepted end-of-generation token ends the step as if it were the bonus token
    for (int32_t i = 0; i < v.n_accepted; ++i) {
        if (is_eog(s, s->drafts[i])) {
            v = {i, s->drafts[i]};
            break;
        }
    }
    t_verify += seconds_since(t_v);  // choosing among the rows is verification's time too
    // what each draft distribution mixture would have accepted at the rows verification reached
    const int32_t n_overlap = learn_mix ? std::min(v.n_accepted + 1, n_drafts) : 0;
    for (int32_t i = 0; i < n_overlap; ++i) {
        const draft_dist & q = s->prop.q[(size_t) i];
        mix_overlaps(s->reached_p[(size_t) i], q.base, q.top, k_mix_grid, k_n_mix, s->dense, s->overlap[i]);
    }
    if (n_overlap > 0) {  // paired: every mixture's acceptance chance on the rows this step verified
        const draft_dist & q = s->prop.q[0];
        double drawn = -1.0;
        for (int32_t j = 0; j < k_n_mix; ++j) {
            s->stats.first_paired[j] += s->overlap[0][j];
            if (q.mix == k_mix_grid[j]) {  // the controller draws with the grid's mixtures
                drawn = s->overlap[0][j];
            }
        }
        if (drawn < 0.0) {
            mix_overlaps(s->reached_p[0], q.base, q.top, &q.mix, 1, s->dense, &drawn);
        }
        s->stats.first_paired_drawn += drawn;
        s->stats.n_first_paired++;
    }

    // keep rows 0..n_accepted (pending + accepted drafts); the next token is the new pending one
    const int32_t n_acc = v.n_accepted;
    forget_from(s, pos0 + n_acc + 1);
    if (s->mtp) {
        proposer_observe(s->prop, s->trunk, row0, pos0, n_acc + 1, s->states);
    }
    s->n_past = pos0 + n_acc + 1;
    s->last_row = row0 + n_acc;
    s->tokens.resize((size_t) s->n_past);
    s->tokens.push_back(v.next);
    s->pending_emitted = true;

    int32_t * out = c.out;
    for (int32_t i = 0; i < n_acc; ++i) {
        out[res->n_tokens++] = s->drafts[i];
    }
    out[res->n_tokens++] = v.next;
    res->n_drafted = n_drafts;
    res->n_accepted = n_acc;
    if (is_eog(s, v.next)) {
        res->stop = MTPL_STOP_EOS;
    } else if (res->n_tokens >= c.n_max) {
        res->stop = MTPL_STOP_LENGTH;
    } else if (s->n_past + 1 > s->n_ctx) {
        res->stop = MTPL_STOP_CONTEXT;
    }

    // a step in a group takes its share of the pass; the time between its steps is the others' too
    const double t_step = in_group ? c.t_draft + t_verify : seconds_since(c.t0);
    if (s->mtp) {  // what the controller learns holds for any k chosen by anyone
        const double gap = s->last_step_valid && !in_group
                               ? std::chrono::duration<double>(c.t0 - s->last_step_end).count()
                               : -1.0;
        // a head's catching up apart is upkeep, not a cost of this step's drafts (draft.cpp)
        controller_update(s->ctl.get(), {n_drafts, n_acc, c.drafted.n_calls - c.drafted.n_upkeep, c.drafted.t_head,
                                         c.drafted.t_draft, t_verify, t_step - c.drafted.t_upkeep, gap,
                                         c.drafted.steady, c.drafted.n_behind, s->overlap, n_overlap, trunk_reused});
        s->last_step_end = clock_type::now();
        s->last_step_valid = true;
    }
    mtpl_stats & st = s->stats;
    st.n_steps++;
    st.n_generated += n_acc + 1;
    st.n_stateless_passes += s->mtp && !s->states;
    st.drafts_per_step[n_drafts]++;
    for (int32_t i = 0; i < n_drafts && i < MTPL_MAX_DRAFT; ++i) {
        st.drafted[i]++;
        if (i < n_acc) {
            st.accepted[i]++;
        }
    }
    st.t_draft_s += c.t_draft;
    st.t_verify_s += t_verify;
    st.t_other_s += std::max(0.0, (in_group ? t_step : seconds_since(c.t0)) - c.t_draft - t_verify);
}

int32_t session_step(mtpl_session * s, int32_t n_max, int32_t * out, mtpl_step_result * res) {
    bool pass = false;
    if (int32_t st = step_begin(s, n_max, out, res, &pass); st != MTPL_OK || !pass) {
        return st;
    }
    // verify [pending, drafts...] in one trunk pass
    const auto t = clock_type::now();
    const int32_t reused0 = llama_perf_context(s->trunk).n_reused;
    const bool states = step_wants_states(s);
    s->test_passes += s->test_gap_every > 0;
    set_states(s, states);
    if (int32_t st = eval_trunk(s, s->cur.pos0, (int32_t) s->drafts.size() + 1, true); st != MTPL_OK) {
        step_abandon(s);
        return st;
    }
    const double t_verify = seconds_since(t);
    step_finish(s, 0, t_verify, llama_perf_context(s->trunk).n_reused > reused0, false);
    return MTPL_OK;
}

namespace {

// Keep positions [0, n_keep - 1) in the trunk cache and evaluate the last kept token again, alone:
// its logits choose the next token, its state is the MTP head's next input.
int32_t refeed_last_kept(mtpl_session * s, int32_t n_keep) {
    s->n_past = std::min(s->n_past, n_keep - 1);
    s->tokens.resize((size_t) n_keep);
    s->has_pending = false;
    if (!trunk_forget(s, s->n_past) && s->recurrent) {
        if (int32_t st = rebuild_trunk(s); st != MTPL_OK) {
            return st;
        }
    }
    s->stats.n_reevaluated += n_keep - s->n_past;
    set_states(s, true);
    while (s->n_past < n_keep) {  // one token, or from a checkpoint on
        const int32_t m = std::min(n_keep - s->n_past, s->n_batch);
        if (int32_t st = eval_trunk(s, s->n_past, m, false); st != MTPL_OK) {
            s->tokens.resize((size_t) s->n_past);
            return st;
        }
        s->n_past += m;
    }
    if (s->mtp) {
        proposer_truncate(s->prop, n_keep, llama_get_embeddings_nextn_ith(s->trunk, s->last_row));
    }
    s->tokens.push_back(choose_next(s, llama_get_logits_ith(s->trunk, -1), s->tokens.size()));
    s->has_pending = true;
    s->pending_emitted = false;
    s->last_step_valid = false;
    return MTPL_OK;
}

} // namespace

int32_t session_truncate(mtpl_session * s, int32_t n_keep) {
    if (n_keep == (int32_t) s->tokens.size()) {
        return MTPL_OK;
    }
    if (n_keep == 0) {
        return session_reset(s);
    }
    if (n_keep == s->n_past && s->last_row >= 0 && s->last_pass == s->shared->passes && !s->trunk_stale) {
        // only the pending token goes: the trunk's last pass still holds the kept end's logits and state
        s->tokens.resize((size_t) n_keep);
        if (s->mtp) {
            proposer_truncate(s->prop, n_keep, s->states ? llama_get_embeddings_nextn_ith(s->trunk, s->last_row) : nullptr);
        }
        s->tokens.push_back(choose_next(s, llama_get_logits_ith(s->trunk, s->last_row), s->tokens.size()));
        s->has_pending = true;
        s->pending_emitted = false;
        s->last_step_valid = false;
        return MTPL_OK;
    }
    if (s->ckpt_pos > n_keep - 1) {
        s->ckpt_pos = -1;  // a checkpoint past the cut no longer describes the context
    }
    // A recurrent state drops a tail by restoring one of the last pass's snapshots (the cut within
    // that pass, no restore pending), else from the checkpoint (the kept tokens after it are evaluated
    // again below; the MTP cache's entries below n_keep pair kept tokens with the states the trunk
    // computes again, so they stay), else the context is rebuilt from the kept prefix.
    const int32_t n_back = s->n_past - n_keep + 1;
    const bool by_snapshot = !s->trunk_stale && n_back <= std::min(s->rs_rows - 1, s->rs_depth);
    if (s->recurrent && !by_snapshot &&
        (s->trunk_stale || s->ckpt_pos > n_keep - 1 || !restore_checkpoint(s))) {
        std::vector<int32_t> keep(s->tokens.begin(), s->tokens.begin() + n_keep);
        session_reset(s);
        const mtpl_stats saved = s->stats;
        const int32_t st = session_feed(s, keep.data(), n_keep);
        s->stats = saved;
        s->stats.n_reevaluated += n_keep;
        return st;
    }
    return refeed_last_kept(s, n_keep);
}

int32_t session_adopt(mtpl_session * s, const mtpl_session * src, const int32_t * tokens, int32_t n_keep) {
    // src's whole sequence (its cache holds positions [0, src->n_past)) read into this one's stream;
    // the head's cache starts again after a gap (draft.h): the copy changes only what it drafts
    const size_t size = llama_state_seq_get_size(s->trunk, src->seq);
    std::vector<uint8_t> buf(size);
    if (size == 0 || llama_state_seq_get_data(s->trunk, buf.data(), size, src->seq) != size) {
        return fail(MTPL_ERR_INTERNAL, "could not read another session's cache entries");
    }
    session_reset(s);
    if (llama_state_seq_set_data(s->trunk, buf.data(), size, s->seq) != size) {
        clear_trunk(s);
        return fail(MTPL_ERR_INTERNAL, "could not copy another session's cache entries");
    }
    s->tokens.assign(tokens, tokens + n_keep);
    s->n_past = src->n_past;
    return refeed_last_kept(s, n_keep);
}

namespace {
// llama.cpp counts graph reuses per context: the heads' together
int64_t mtp_reused(const mtpl_session * s) {
    int64_t n = 0;
    for (const head_lane & h : s->prop.heads) {
        n += llama_perf_context(h.ctx).n_reused;
    }
    return n;
}
} // namespace

void session_stats(const mtpl_session * s, mtpl_stats & out) {
    out = s->stats;
    if (s->mtp) {
        controller_report(s->ctl.get(), s->gen.draft_max, out);
    }
    // llama.cpp counts graph reuses per context; report those since the last stats reset
    out.n_trunk_graphs_reused = llama_perf_context(s->trunk).n_reused - s->reused_base_trunk;
    out.n_mtp_graphs_reused = s->mtp ? mtp_reused(s) - s->reused_base_mtp : 0;
}

void session_reset_stats(mtpl_session * s) {
    s->stats = mtpl_stats{};
    s->reused_base_trunk = llama_perf_context(s->trunk).n_reused;
    s->reused_base_mtp = s->mtp ? mtp_reused(s) : 0;
}

void session_memory(const mtpl_session * s, int64_t * weights, int64_t * kv, int64_t * compute) {
    *weights = *kv = *compute = 0;
    // the weights are shared by both contexts (unless the head has its own file): count them once
    for (const auto & [buft, mb] : llama_get_memory_breakdown(s->trunk)) {
        *weights += (int64_t) mb.model;
        *kv += (int64_t) mb.context;
        *compute += (int64_t) mb.compute;
    }
    for (size_t j = 0; s->mtp && j < s->prop.heads.size(); ++j) {
        for (const auto & [buft, mb] : llama_get_memory_breakdown(s->prop.heads[j].ctx)) {
            *weights += s->model->head && j == 0 ? (int64_t) mb.model : 0;  // a head file's weights are its own
            *kv += (int64_t) mb.context;
            *compute += (int64_t) mb.compute;
        }
    }
}

std::string session_memory_by_buffer(const mtpl_session * s, bool mtp) {
    std::string out;
    if (mtp && !s->mtp) {
        return out;
    }
    // the heads' contexts (several for a file with several NextN blocks) share the weights
    std::map<ggml_backend_buffer_type_t, llama_memory_breakdown_data> sum;
    const size_t n_ctx = mtp ? s->prop.heads.size() : 1;
    for (size_t j = 0; j < n_ctx; ++j) {
        for (const auto & [buft, mb] : llama_get_memory_breakdown(mtp ? s->prop.heads[j].ctx : s->trunk)) {
            auto & t = sum[buft];
            t.model = j == 0 ? mb.model : t.model;
            t.context += mb.context;
            t.compute += mb.compute;
        }
    }
    for (const auto & [buft, mb] : sum) {
        out += std::string(ggml_backend_buft_name(buft)) + "\t" + std::to_string(mb.model) + "\t" +
               std::to_string(mb.context) + "\t" + std::to_string(mb.compute) + "\n";
    }
    return out;
}

} // namespace mtpl
