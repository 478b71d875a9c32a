// A session: the trunk context, the MTP context on the same weights, their KV
// caches, and one generation step (draft with the MTP head, verify with the
// trunk, accept, roll back).
//
// Positions.  tokens[0, n_past) are in the trunk cache.  The pending token
// tokens[n_past] was chosen by the trunk but not evaluated yet; it goes first in
// the next verification batch.  The MTP block pairs token t_p with the trunk's
// hidden state at p-1 and predicts t_{p+2}... more precisely, fed (t_p, h_{p-1})
// at position p it outputs logits for position p+1.
//
// Keeping the MTP cache right without extra passes.  Draft decodes write MTP
// cache entries paired with the MTP block's own output states; the model was
// trained with trunk states there.  Upstream re-runs the MTP block over every
// verified batch to repair this.  We instead remember the trunk states of the
// accepted positions (backlog_h) and evaluate them in the same MTP call as the
// next step's first draft: one MTP graph call per step fewer, same cache.
#include "engine.h"

#include <algorithm>
#include <chrono>
#include <cstring>
#include <thread>

#include "llama-ext.h"

namespace mtpl {
namespace {

using clock_type = std::chrono::steady_clock;

double seconds_since(clock_type::time_point t0) {
    return std::chrono::duration<double>(clock_type::now() - t0).count();
}

bool abort_requested(void * data) {
    return static_cast<mtpl_session *>(data)->cancel.load();
}

int32_t decode_error(mtpl_session * s, int32_t rc, const char * what) {
    if (rc == 2 || s->cancel.load()) {
        s->cancel.store(false);
        return fail(MTPL_ERR_CANCELLED, std::string(what) + " was cancelled");
    }
    if (rc == 1) {
        return fail(MTPL_ERR_CONTEXT_FULL, std::string(what) + ": no room left in the KV cache");
    }
    const std::string why = upstream_error();
    return fail(MTPL_ERR_DECODE, std::string(what) + " failed (llama_process returned " + std::to_string(rc) + ")" +
                                     (why.empty() ? "" : ": " + why));
}

// Add one token to a batch; h (n_embd floats) is the MTP input state, or null.
void batch_add(llama_batch_ext * b, int32_t token, int32_t pos, bool output, const float * h, int32_t n_embd) {
    const int32_t idx = llama_batch_ext_add_token(b, 0, token);
    llama_batch_ext_set_pos(b, idx, &pos);
    llama_batch_ext_set_output_logits(b, idx, output);
    if (h) {
        llama_batch_ext_set_embd_token(b, idx, llama_embd{h, 1, (size_t) n_embd});
    }
}

// Record trunk states of rows [0, n_rows) of the last trunk pass, which started
// at position pos0: each row's predecessor state joins the MTP backlog (unless
// the MTP cache already holds that position), and the last row becomes h_last.
void commit_trunk_rows(mtpl_session * s, int32_t pos0, int32_t n_rows) {
    if (!s->mtp) {
        return;
    }
    const size_t row = (size_t) s->n_embd;
    for (int32_t i = 0; i < n_rows; ++i) {
        if (pos0 + i >= s->mtp_n_past) {
            s->backlog_h.insert(s->backlog_h.end(), s->h_last.begin(), s->h_last.end());
        }
        const float * h = llama_get_embeddings_nextn_ith(s->trunk, i);
        std::memcpy(s->h_last.data(), h, row * sizeof(float));
    }
}

// Evaluate tokens[pos0, pos0+n) in the trunk; logits for all rows if all_logits,
// else for the last row only.
int32_t eval_trunk(mtpl_session * s, int32_t pos0, int32_t n, bool all_logits) {
    llama_batch_ext_clear(s->trunk_batch);
    for (int32_t i = 0; i < n; ++i) {
        batch_add(s->trunk_batch, s->tokens[pos0 + i], pos0 + i, all_logits || i == n - 1, nullptr, 0);
    }
    s->stats.n_trunk_calls++;
    const int32_t rc = llama_process(s->trunk, LLAMA_PROCESS_TYPE_DECODE, s->trunk_batch);
    if (rc != 0) {
        llama_memory_seq_rm(llama_get_memory(s->trunk), 0, s->n_past, -1);
        debug_forget(s, MTPL_DEBUG_TRUNK_FORGET, s->n_past);
        return decode_error(s, rc, "trunk evaluation");
    }
    if (s->debug) {
        s->debug_call++;
        for (int32_t i = 0; i < n; ++i) {
            const bool out = all_logits || i == n - 1;
            debug_row(s, MTPL_DEBUG_TRUNK_ROW, pos0 + i, s->tokens[pos0 + i], nullptr,
                      out ? llama_get_logits_ith(s->trunk, i) : nullptr,
                      s->mtp ? llama_get_embeddings_nextn_ith(s->trunk, i) : nullptr);
        }
    }
    return MTPL_OK;
}

// Drop cached state from position pos on in both caches.
void forget_from(mtpl_session * s, int32_t pos) {
    llama_memory_seq_rm(llama_get_memory(s->trunk), 0, pos, -1);
    debug_forget(s, MTPL_DEBUG_TRUNK_FORGET, pos);
    if (s->mtp) {
        llama_memory_seq_rm(llama_get_memory(s->mtp), 0, std::min(pos, s->mtp_n_past), -1);
        debug_forget(s, MTPL_DEBUG_MTP_FORGET, std::min(pos, s->mtp_n_past));
    }
}

// Evaluate the MTP backlog and the head entry (pending token, h_last) at n_past,
// in batches of at most n_batch; the head entry's logits are the first draft's.
// *head_idx receives the head entry's index in the last batch.
int32_t mtp_catch_up_and_head(mtpl_session * s, int32_t * head_idx) {
    llama_memory_t mem = llama_get_memory(s->mtp);
    llama_memory_seq_rm(mem, 0, s->mtp_n_past, -1);  // drafts of the previous step
    debug_forget(s, MTPL_DEBUG_MTP_FORGET, s->mtp_n_past);
    const size_t row = (size_t) s->n_embd;
    int32_t pos = s->mtp_n_past;
    while (pos <= s->n_past) {
        const int32_t n = std::min(s->n_past + 1 - pos, s->n_batch);
        llama_batch_ext_clear(s->mtp_batch);
        for (int32_t i = 0; i < n; ++i) {
            const int32_t p = pos + i;
            const bool head = p == s->n_past;
            const float * h = head ? s->h_last.data() : s->backlog_h.data() + (size_t) (p - s->mtp_n_past) * row;
            batch_add(s->mtp_batch, s->tokens[p], p, head, h, s->n_embd);
            if (head) {
                *head_idx = i;
            }
        }
        s->stats.n_mtp_calls++;
        const int32_t rc = llama_process(s->mtp, LLAMA_PROCESS_TYPE_DECODE, s->mtp_batch);
        if (rc != 0) {
            llama_memory_seq_rm(mem, 0, s->mtp_n_past, -1);
            debug_forget(s, MTPL_DEBUG_MTP_FORGET, s->mtp_n_past);
            return decode_error(s, rc, "MTP evaluation");
        }
        if (s->debug) {
            s->debug_call++;
            for (int32_t i = 0; i < n; ++i) {
                const int32_t p = pos + i;
                const bool head = p == s->n_past;
                const float * h = head ? s->h_last.data() : s->backlog_h.data() + (size_t) (p - s->mtp_n_past) * row;
                debug_row(s, MTPL_DEBUG_MTP_ROW, p, s->tokens[p], h, head ? llama_get_logits_ith(s->mtp, i) : nullptr,
                          head ? llama_get_embeddings_nextn_ith(s->mtp, i) : nullptr);
            }
        }
        pos += n;
    }
    s->backlog_h.clear();
    s->mtp_n_past = s->n_past + 1;
    return MTPL_OK;
}

// Draft up to k tokens recursively: each draft is the MTP head's arg-max, fed
// back with the head's own output state.  Stops early below draft_p_min.
int32_t draft(mtpl_session * s, int32_t k, std::vector<int32_t> & drafts) {
    drafts.clear();
    if (k <= 0) {
        return MTPL_OK;
    }
    int32_t last = 0;
    const auto t0 = clock_type::now();
    if (int32_t st = mtp_catch_up_and_head(s, &last); st != MTPL_OK) {
        return st;
    }
    s->t_catch_up = seconds_since(t0);
    const size_t row = (size_t) s->n_embd;
    const mtpl_gen_params & g = s->gen;
    const bool plain_greedy = is_greedy(g) && !penalties_active(g);
    // q's transforms are the trunk's, at the draft temperature (exact match drafts the arg-max)
    mtpl_gen_params draft_cfg = g;
    if (g.verify == MTPL_VERIFY_EXACT) {
        draft_cfg.temperature = 0.0f;
    } else if (g.verify == MTPL_VERIFY_COUPLED) {
        // q at the sampling temperature: coupled noise agrees best when q matches p
    } else if (g.draft_temperature >= 0.0f && !is_greedy(g)) {
        draft_cfg.temperature = g.draft_temperature;
    }
    for (int32_t i = 0; i < k; ++i) {
        const float * logits = llama_get_logits_ith(s->mtp, last);
        int32_t tok;
        if (plain_greedy) {
            tok = argmax(logits, s->n_vocab);
            if (g.draft_p_min > 0.0f && top_prob_below(logits, s->n_vocab, tok, g.draft_p_min)) {
                break;
            }
        } else {
            // q: the head's distribution after the trunk's transforms, drafts so far in the context
            if ((int32_t) s->qdists.size() <= i) {
                s->qdists.resize((size_t) i + 1);
            }
            dist & q = s->qdists[(size_t) i];
            penalty_counts(g, s->tokens.data(), s->tokens.size(), drafts.data(), i, s->counts);
            build_dist(logits, s->n_vocab, draft_cfg, s->counts, s->logit_scratch, q);
            if (q.top_prob() < g.draft_p_min) {
                break;
            }
            if (is_greedy(draft_cfg)) {
                tok = q.top();
            } else if (g.verify == MTPL_VERIFY_COUPLED) {  // the trunk's noise at this position
                tok = sample_keyed(q, g.seed, (int64_t) s->tokens.size() + i);
            } else {
                tok = sample(q, s->rng);
            }
        }
        drafts.push_back(tok);
        if (i + 1 == k) {
            break;
        }
        std::memcpy(s->h_scratch.data(), llama_get_embeddings_nextn_ith(s->mtp, last), row * sizeof(float));
        llama_batch_ext_clear(s->mtp_batch);
        batch_add(s->mtp_batch, tok, s->n_past + 1 + i, true, s->h_scratch.data(), s->n_embd);
        s->stats.n_mtp_calls++;
        const int32_t rc = llama_process(s->mtp, LLAMA_PROCESS_TYPE_DECODE, s->mtp_batch);
        if (rc != 0) {
            llama_memory_seq_rm(llama_get_memory(s->mtp), 0, s->mtp_n_past, -1);
            debug_forget(s, MTPL_DEBUG_MTP_FORGET, s->mtp_n_past);
            return decode_error(s, rc, "MTP draft");
        }
        if (s->debug) {
            s->debug_call++;
            debug_row(s, MTPL_DEBUG_MTP_ROW, s->n_past + 1 + i, tok, s->h_scratch.data(), llama_get_logits_ith(s->mtp, 0),
                      llama_get_embeddings_nextn_ith(s->mtp, 0));
        }
        last = 0;
    }
    return MTPL_OK;
}

bool is_eog(const mtpl_session * s, int32_t tok) {
    return llama_vocab_is_eog(s->model->vocab, tok);
}

} // namespace

int32_t session_create(mtpl_model * model, const mtpl_session_params & p, mtpl_session ** out) {
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

    auto * s = new mtpl_session();
    s->model = model;
    s->n_ctx = n_ctx;
    s->n_batch = n_batch;
    s->n_embd = info.n_embd;
    s->n_vocab = info.n_vocab;

    llama_context_params cp = llama_context_default_params();
    cp.n_ctx = (uint32_t) n_ctx;
    cp.n_batch = (uint32_t) n_batch;
    cp.n_ubatch = (uint32_t) n_batch;
    cp.n_seq_max = 1;
    cp.n_threads = n_threads;
    cp.n_threads_batch = n_threads;
    cp.no_perf = true;
    cp.abort_callback = abort_requested;
    cp.abort_callback_data = s;

    clear_upstream_error();
    s->trunk = llama_init_from_model(model->model, cp);
    if (s->trunk && p.mtp) {
        cp.ctx_type = LLAMA_CONTEXT_TYPE_MTP;
        // every MTP call outputs one row (the head entry, or a draft): buffers for one
        // output row, and with patches/0004 FFN buffers for one row too
        cp.n_outputs_max = 1;
        s->mtp = llama_init_from_model(model->model, cp);
    }
    if (!s->trunk || (p.mtp && !s->mtp)) {
        const std::string why = upstream_error();
        model->n_sessions++;  // balanced by session_destroy
        session_destroy(s);
        return fail(MTPL_ERR_MODEL_LOAD, "could not create the llama.cpp context" + (why.empty() ? "" : ": " + why));
    }
    s->trunk_batch = llama_batch_ext_init(s->trunk);
    if (s->mtp) {
        // the trunk reports its state for every position; the MTP context only for outputs
        llama_set_embeddings_nextn(s->trunk, true, false);
        llama_set_embeddings_nextn(s->mtp, true, true);
        s->mtp_batch = llama_batch_ext_init(s->mtp);
        controller_reset(s->ctl);
        s->h_last.assign((size_t) s->n_embd, 0.0f);
        s->h_scratch.assign((size_t) s->n_embd, 0.0f);
    }
    model->n_sessions++;
    *out = s;
    return MTPL_OK;
}

void session_destroy(mtpl_session * s) {
    if (s->trunk_batch) llama_batch_ext_free(s->trunk_batch);
    if (s->mtp_batch) llama_batch_ext_free(s->mtp_batch);
    if (s->mtp) llama_free(s->mtp);
    if (s->trunk) llama_free(s->trunk);
    s->model->n_sessions--;
    delete s;
}

int32_t session_reset(mtpl_session * s) {
    llama_memory_clear(llama_get_memory(s->trunk), true);
    if (s->mtp) {
        llama_memory_clear(llama_get_memory(s->mtp), true);
        std::fill(s->h_last.begin(), s->h_last.end(), 0.0f);
    }
    s->tokens.clear();
    s->n_past = 0;
    s->has_pending = false;
    s->pending_emitted = false;
    s->mtp_n_past = 0;
    s->backlog_h.clear();
    s->mtp_kept_up = false;
    s->cancel.store(false);
    if (s->debug) {
        s->debug_events.push_back({MTPL_DEBUG_RESET, 0, -1, s->debug_call, -1, -1, -1});
    }
    return MTPL_OK;
}

int32_t session_feed(mtpl_session * s, const int32_t * tokens, int32_t n) {
    const auto t0 = clock_type::now();
    s->last_step_valid = false;
    s->mtp_kept_up = false;  // the prompt joins the MTP backlog
    if (s->cancel.exchange(false)) {
        return fail(MTPL_ERR_CANCELLED, "prompt processing was cancelled");
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
    while (s->n_past < (int32_t) s->tokens.size()) {
        const int32_t m = std::min((int32_t) s->tokens.size() - s->n_past, s->n_batch);
        if (int32_t st = eval_trunk(s, s->n_past, m, false); st != MTPL_OK) {
            // keep what was evaluated; drop the rest so the context stays consistent
            s->tokens.resize((size_t) s->n_past);
            s->stats.t_prefill_s += seconds_since(t0);
            return st;
        }
        commit_trunk_rows(s, s->n_past, m);
        s->n_past += m;
    }
    const int32_t next = choose_token(s, llama_get_logits_ith(s->trunk, -1), s->tokens.size());
    s->tokens.push_back(next);
    s->has_pending = true;
    s->pending_emitted = false;
    s->stats.n_prompt_tokens += n;
    s->stats.t_prefill_s += seconds_since(t0);
    return MTPL_OK;
}

int32_t session_step(mtpl_session * s, int32_t n_max, int32_t * out, int32_t /*cap*/, mtpl_step_result * res) {
    *res = mtpl_step_result{0, 0, 0, MTPL_STOP_NONE};
    if (!s->has_pending) {
        return fail(MTPL_ERR_INVALID_ARGUMENT, "nothing to continue from: feed a prompt first");
    }
    if (s->cancel.exchange(false)) {
        return fail(MTPL_ERR_CANCELLED, "generation was cancelled");
    }
    const auto t0 = clock_type::now();
    const int32_t pending = s->tokens.back();

    // the token chosen after a feed is emitted by the first step
    if (!s->pending_emitted) {
        s->pending_emitted = true;
        out[res->n_tokens++] = pending;
        s->stats.n_generated++;
        s->stats.n_steps++;  // the prompt's trunk pass chose this token
        if (is_eog(s, pending) || res->n_tokens >= n_max) {
            res->stop = is_eog(s, pending) ? MTPL_STOP_EOG : MTPL_STOP_LENGTH;
            s->stats.t_other_s += seconds_since(t0);
            return MTPL_OK;
        }
    }
    if (s->n_past + 1 > s->n_ctx) {
        res->stop = MTPL_STOP_CONTEXT;
        s->stats.t_other_s += seconds_since(t0);
        return MTPL_OK;
    }

    // how many to draft: bounded by settings, the token budget and the context
    int32_t k = s->mtp ? s->gen.draft_max : 0;
    if (s->mtp && s->gen.adaptive) {
        k = controller_choose(s->ctl, k);
    }
    s->stats.k_chosen[k]++;
    k = std::min(k, n_max - res->n_tokens - 1);
    k = std::min(k, s->n_ctx - s->n_past - 1);
    k = std::min(k, s->n_batch - 1);  // the verification batch holds k + 1 tokens
    k = std::max(k, 0);

    double t_draft = 0.0, t_verify = 0.0;
    s->t_catch_up = 0.0;
    auto t = clock_type::now();
    const int64_t mtp_calls_before = s->stats.n_mtp_calls;
    if (int32_t st = draft(s, k, s->drafts); st != MTPL_OK) {
        return st;
    }
    t_draft = seconds_since(t);
    const int32_t n_drafts = (int32_t) s->drafts.size();

    // verify [pending, drafts...] in one trunk pass
    t = clock_type::now();
    s->tokens.insert(s->tokens.end(), s->drafts.begin(), s->drafts.end());
    const int32_t pos0 = s->n_past;
    if (int32_t st = eval_trunk(s, pos0, n_drafts + 1, true); st != MTPL_OK) {
        s->tokens.resize((size_t) pos0 + 1);
        return st;
    }
    int32_t bonus = -1;
    int32_t n_acc = verify_step(s, n_drafts, &bonus);
    // an accepted end-of-generation token ends the step as if it were the bonus token
    for (int32_t i = 0; i < n_acc; ++i) {
        if (is_eog(s, s->drafts[i])) {
            n_acc = i;
            bonus = s->drafts[i];
            break;
        }
    }
    t_verify = seconds_since(t);

    // keep rows 0..n_acc (pending + accepted drafts); the bonus token is the new pending one
    forget_from(s, pos0 + n_acc + 1);
    commit_trunk_rows(s, pos0, n_acc + 1);
    s->n_past = pos0 + n_acc + 1;
    s->tokens.resize((size_t) s->n_past);
    s->tokens.push_back(bonus);
    s->pending_emitted = true;

    for (int32_t i = 0; i < n_acc; ++i) {
        out[res->n_tokens++] = s->drafts[i];
    }
    out[res->n_tokens++] = bonus;
    res->n_drafted = n_drafts;
    res->n_accepted = n_acc;
    if (is_eog(s, bonus)) {
        res->stop = MTPL_STOP_EOG;
    } else if (res->n_tokens >= n_max) {
        res->stop = MTPL_STOP_LENGTH;
    } else if (s->n_past + 1 > s->n_ctx) {
        res->stop = MTPL_STOP_CONTEXT;
    }

    if (s->mtp) {  // what the controller learns holds for any k chosen by anyone
        const double gap = s->last_step_valid ? std::chrono::duration<double>(t0 - s->last_step_end).count() : -1.0;
        const int32_t mtp_calls = (int32_t) (s->stats.n_mtp_calls - mtp_calls_before);
        controller_update(s->ctl, k, n_drafts, n_acc, mtp_calls, t_draft, t_verify, seconds_since(t0), gap,
                          s->t_catch_up, k == 0 || s->mtp_kept_up);
        s->mtp_kept_up = mtp_calls > 0;
        s->last_step_end = clock_type::now();
        s->last_step_valid = true;
    }
    mtpl_stats & st = s->stats;
    st.n_steps++;
    st.n_generated += n_acc + 1;
    for (int32_t i = 0; i < n_drafts && i < MTPL_MAX_DRAFT; ++i) {
        st.drafted[i]++;
        if (i < n_acc) {
            st.accepted[i]++;
        }
    }
    st.t_draft_s += t_draft;
    st.t_verify_s += t_verify;
    st.t_other_s += seconds_since(t0) - t_draft - t_verify;
    return MTPL_OK;
}

int32_t session_truncate(mtpl_session * s, int32_t n_keep) {
    // Rebuild from the kept prefix: simple and always consistent.  The next
    // token is chosen afresh, exactly as after a feed of that prefix.
    std::vector<int32_t> keep(s->tokens.begin(), s->tokens.begin() + n_keep);
    session_reset(s);
    if (keep.empty()) {
        return MTPL_OK;
    }
    const mtpl_stats saved = s->stats;
    const int32_t st = session_feed(s, keep.data(), (int32_t) keep.size());
    s->stats = saved;
    return st;
}

} // namespace mtpl

namespace mtpl {

void session_memory(const mtpl_session * s, int64_t * weights, int64_t * kv, int64_t * compute) {
    *weights = *kv = *compute = 0;
    // the weights are shared by both contexts: count them once, from the trunk's view
    for (const auto & [buft, mb] : llama_get_memory_breakdown(s->trunk)) {
        *weights += (int64_t) mb.model;
        *kv += (int64_t) mb.context;
        *compute += (int64_t) mb.compute;
    }
    if (s->mtp) {
        for (const auto & [buft, mb] : llama_get_memory_breakdown(s->mtp)) {
            *kv += (int64_t) mb.context;
            *compute += (int64_t) mb.compute;
        }
    }
}

} // namespace mtpl

namespace mtpl {
namespace {

int64_t debug_copy(mtpl_session * s, const float * src, int32_t n) {
    if (!src) {
        return -1;
    }
    const int64_t off = (int64_t) s->debug_floats.size();
    s->debug_floats.insert(s->debug_floats.end(), src, src + n);
    return off;
}

} // namespace

void debug_row(mtpl_session * s, int32_t kind, int32_t pos, int32_t token, const float * h_in, const float * logits,
               const float * h_out) {
    if (!s->debug) {
        return;
    }
    mtpl_debug_event e{kind, pos, token, s->debug_call, -1, -1, -1};
    e.h_in = debug_copy(s, h_in, s->n_embd);
    e.logits = debug_copy(s, logits, s->n_vocab);
    e.h_out = debug_copy(s, h_out, s->n_embd);
    s->debug_events.push_back(e);
}

void debug_forget(mtpl_session * s, int32_t kind, int32_t pos) {
    if (s->debug) {
        s->debug_events.push_back({kind, pos, -1, s->debug_call, -1, -1, -1});
    }
}

} // namespace mtpl
