// The proposer: drafting with the MTP head, and keeping its cache right without extra passes.
//
// Draft decodes write MTP cache entries paired with the MTP block's own output states; the
// model was trained with trunk states there.  Upstream re-runs the MTP block over every verified
// batch to repair this.  We instead remember the trunk states of the accepted positions (the
// backlog) and evaluate them in the same MTP call as the next step's first draft: one MTP graph
// call per step fewer, the same cache.
#include "draft.h"

#include <algorithm>
#include <cmath>
#include <cstring>

#include "llama-ext.h"
#include "llama_ops.h"
#include "util.h"
#include "verify.h"

namespace mtpl {
namespace {

// four floats as one value: GCC and Clang compile arithmetic on it to SIMD instructions
typedef float f4 __attribute__((vector_size(16)));
typedef int32_t i4 __attribute__((vector_size(16)));

// exp(x) lane by lane for x <= 0 (below -87, exp(-87)): x = n ln 2 + r with |r| <= ln 2 / 2,
// exp(r) by its Taylor series to r^6, 2^n put straight into the exponent bits
f4 exp_nonpositive(f4 x) {
    x = x > -87.0f ? x : -87.0f;
    const f4 shifted = x * 1.44269504089f + 12582912.0f;  // + 1.5 * 2^23 rounds x / ln 2 to an integer n
    const f4 n = shifted - 12582912.0f;                   // ... which sits in the low mantissa bits
    const f4 r = (x - n * 0.693145751953125f) - n * 1.428606765330187e-06f;  // ln 2 in two parts
    f4 p = r * (1.0f / 720.0f) + 1.0f / 120.0f;
    p = p * r + 1.0f / 24.0f;
    p = p * r + 1.0f / 6.0f;
    p = p * r + 0.5f;
    p = p * r + 1.0f;
    p = p * r + 1.0f;
    const i4 two_n = ((i4) shifted - 0x4B400000 + 127) << 23;  // (i4) reinterprets the bits
    return p * (f4) two_n;
}

// sum of exp(x[i] - m) over n values, each x[i] <= m
double sum_exp_below(const float * x, int32_t n, float m) {
    f4 acc = {}, acc2 = {};  // two chains, so that consecutive exps overlap
    int32_t i = 0;
    for (; i + 8 <= n; i += 8) {
        f4 a, b;
        std::memcpy(&a, x + i, sizeof a);
        std::memcpy(&b, x + i + 4, sizeof b);
        acc += exp_nonpositive(a - m);
        acc2 += exp_nonpositive(b - m);
    }
    acc += acc2;
    double sum = 0.0;
    for (int32_t j = 0; j < 4; ++j) {
        sum += acc[j];
    }
    for (; i < n; ++i) {
        const f4 one = {x[i] - m, -INFINITY, -INFINITY, -INFINITY};
        sum += exp_nonpositive(one)[0];
    }
    return sum;
}

// A head that drafting has not reached for this many backlog rows catches up in a call of its own.
constexpr int32_t k_lag_rows = 256;
// A head reached with more rows to catch up than this catches up apart first: a draft's time then
// stays what the controller should weigh (the catching up is upkeep, paid once per gap).
constexpr int32_t k_joined_rows = 16;

// Drop a head's drafts (its cache entries from mtp_next on).
void drop_drafts(proposer & p, head_lane & h) {
    llama_memory_seq_rm(llama_get_memory(h.ctx), h.seq, h.mtp_next, -1);
    if (&h == &p.heads[0]) {
        p.tr->forget(MTPL_DEBUG_MTP_FORGET, h.n_past);
    }
}

// Drop head h's entries from trunk position pos on.
void forget_head(proposer & p, head_lane & h, int32_t pos) {
    const int32_t from = std::min(pos, h.n_past);
    // the segments after `from` go; entries of the one it falls in stay below it
    int32_t next = h.mtp_next;
    while (!h.segments.empty() && h.segments.back().from > from) {
        next = std::min(next, h.segments.back().from - h.segments.back().shift);
        h.segments.pop_back();
    }
    h.mtp_next = h.segments.empty() ? 0 : std::min(next, from - h.segments.back().shift);
    llama_memory_seq_rm(llama_get_memory(h.ctx), h.seq, h.mtp_next, -1);
    h.entry_pos.resize((size_t) h.mtp_next);
    h.entry_tok.resize((size_t) h.mtp_next);
    if (&h == &p.heads[0]) {
        p.tr->forget(MTPL_DEBUG_MTP_FORGET, from);
    }
    h.n_past = from;
}

// The lowest n_past of the heads: the backlog keeps rows from there on.
int32_t lowest_past(const proposer & p) {
    int32_t lo = p.heads[0].n_past;
    for (const head_lane & h : p.heads) {
        lo = std::min(lo, h.n_past);
    }
    return lo;
}

// Backlog rows below every head's n_past are no longer needed.
void trim_backlog(proposer & p) {
    const size_t row = (size_t) p.n_state;
    const int32_t n_rows = (int32_t) (p.backlog.size() / row);
    const int32_t drop = std::clamp(lowest_past(p) - p.bl_start, 0, n_rows);
    if (drop > 0) {
        p.backlog.erase(p.backlog.begin(), p.backlog.begin() + (ptrdiff_t) ((size_t) drop * row));
        p.bl_start += drop;
    }
}

// The trunk position head h's next evaluation starts at: the backlog's first row it lacks, or the
// head entry when it lacks none.
int32_t first_row(const proposer & p, const head_lane & h, int32_t n_trunk) {
    const int32_t bl_end = p.bl_start + (int32_t) (p.backlog.size() / (size_t) p.n_state);
    return p.backlog.empty() ? n_trunk : std::min(std::max(p.bl_start, h.n_past), bl_end);
}

// Evaluate on head j the rows [first_row, end): the backlog rows it lacks, then (end > n_trunk) the
// head entry (pending token, h_last) at n_trunk, then this step's drafts before draft end - n_trunk -
// 1, drafts[t - 1] at n_trunk + t paired with chain row t; in batches of at most n_batch.  The last
// row's logits and state come out at *last_idx.  Rows up to the head entry stay in the cache.
int32_t head_call(proposer & p, int32_t j, const std::vector<int32_t> & tokens, int32_t n_trunk, int32_t end,
                  const std::vector<int32_t> & drafts, std::atomic<bool> & cancel, int32_t * last_idx,
                  int32_t & n_calls) {
    head_lane & h = p.heads[(size_t) j];
    const bool traced = j == 0;  // the trace (and the references replaying it) follow the first head
    drop_drafts(p, h);
    const size_t row = (size_t) p.n_state;
    const int32_t first = first_row(p, h, n_trunk);
    const auto state = [&](int32_t pos) {
        return pos > n_trunk ? p.chain.data() + (size_t) (pos - n_trunk) * row
               : pos == n_trunk ? p.h_last.data() : p.backlog.data() + (size_t) (pos - p.bl_start) * row;
    };
    const auto token = [&](int32_t pos) { return pos > n_trunk ? drafts[(size_t) (pos - n_trunk - 1)] : tokens[pos]; };
    // after a gap (first > n_past) the entries go on at the next MTP position, with a larger shift
    const int32_t shift = first - h.mtp_next;
    const bool new_segment = h.segments.empty() || h.segments.back().shift != shift;
    if (new_segment) {
        h.segments.push_back({first, shift});
    }
    int32_t pos = first;
    while (pos < end) {
        const int32_t n = std::min(end - pos, p.n_batch);
        llama_batch_ext_clear(h.batch);
        for (int32_t i = 0; i < n; ++i) {
            batch_add(h.batch, token(pos + i), pos + i - shift, pos + i == end - 1, state(pos + i), p.n_state, h.seq);
        }
        n_calls++;
        if (int32_t st = process(h.ctx, h.batch, cancel, "MTP evaluation"); st != MTPL_OK) {
            drop_drafts(p, h);
            if (new_segment) {
                h.segments.pop_back();
            }
            return st;
        }
        if (traced) {
            p.tr->next_call();
            for (int32_t i = 0; i < n && p.tr->on; ++i) {
                const bool out = pos + i == end - 1;
                p.tr->row(MTPL_DEBUG_MTP_ROW, pos + i, token(pos + i), state(pos + i),
                          out ? llama_get_logits_ith(h.ctx, i) : nullptr,
                          out ? llama_get_embeddings_nextn_ith(h.ctx, i) : nullptr);
            }
        }
        *last_idx = n - 1;
        pos += n;
    }
    const int32_t kept = std::min(end, n_trunk + 1);
    for (int32_t q = first; q < kept; ++q) {
        h.entry_pos.push_back(q);
        h.entry_tok.push_back(tokens[q]);
    }
    h.n_past = kept;
    h.mtp_next = kept - shift;
    h.warm = true;
    trim_backlog(p);
    return MTPL_OK;
}

// Head j catches up on its backlog rows (not the head entry) in a call of its own when it lacks more
// than max_rows of them; the seconds count as upkeep.
int32_t keep_up(proposer & p, int32_t j, const std::vector<int32_t> & tokens, int32_t n_trunk, int32_t max_rows,
                std::atomic<bool> & cancel, draft_outcome & out) {
    if (n_trunk - first_row(p, p.heads[(size_t) j], n_trunk) <= max_rows) {
        return MTPL_OK;
    }
    const auto t0 = clock_type::now();
    int32_t unused = 0;
    const int32_t calls0 = out.n_calls;
    const int32_t st = head_call(p, j, tokens, n_trunk, n_trunk, {}, cancel, &unused, out.n_calls);
    out.n_upkeep += out.n_calls - calls0;
    out.t_upkeep += seconds_since(t0);
    return st;
}

// What draft i (0-based) does, from the head's logits: k_stop (not drafted: its confidence is below
// the p-min, or the controller ends the step), k_last (drafted, the last of the step) or k_more
// (drafted, and the head runs again for draft i + 1).  Drafted tokens go to drafts.
constexpr int32_t k_stop = 0, k_last = 1, k_more = 2;

int32_t decide(proposer & p, int32_t i, const float * logits, const std::vector<int32_t> & tokens, int32_t k,
               const float * mix, const mtpl_gen_params & g, bool greedy, bool want_conf, const mtpl_gen_params & qg,
               bool mixed, controller * ctl, rng_type & rng, std::vector<int32_t> & drafts) {
    int32_t tok;
    float conf;
    if (greedy) {
        tok = argmax(logits, p.n_vocab);
        conf = want_conf ? top_prob(logits, p.n_vocab, tok) : -1.0f;
    } else {
        // the head's distribution after the trunk's transforms, drafts so far in the context
        draft_dist & q = p.q[(size_t) i];
        penalty_counts(g, tokens.data(), tokens.size(), drafts.data(), i, p.scratch.counts);
        build_dist(logits, p.n_vocab, qg, p.scratch.counts, p.scratch.logits, q.base);
        q.top = q.base.top();
        q.mix = mixed ? mix[i] : 0.0f;
        // the confidence is the head's top probability, not the drawn draft's: a keep decision
        // that looked at the draw would bias the output (rejection sampling assumes x ~ q);
        // under greedy transforms (penalties) base is one token: the confidence is the softmax's
        conf = is_greedy(qg) ? top_prob(p.scratch.logits.data(), p.n_vocab, q.top) : q.base.top_prob();
        tok = -1;
    }
    if ((g.draft_p_min > 0.0f && conf < g.draft_p_min) || !controller_keep(ctl, i, conf)) {
        return k_stop;
    }
    if (tok < 0) {
        tok = draw_draft(p.q[(size_t) i], g, (int64_t) tokens.size() + i, rng);
    }
    drafts.push_back(tok);
    return i + 1 == k || !controller_extend(ctl, i) ? k_last : k_more;
}

} // namespace

float top_prob(const float * logits, int32_t n_vocab, int32_t top) {
    return (float) (1.0 / sum_exp_below(logits, n_vocab, logits[top]));
}

bool proposer_init(proposer & p, llama_model * model, llama_context_params cp, int32_t n_state, int32_t n_vocab,
                   trace * tr) {
    cp.ctx_type = LLAMA_CONTEXT_TYPE_MTP;
    // every MTP call outputs one row (the head entry, or a draft): buffers for one output row,
    // and with patches/0004 FFN buffers for one row too
    cp.n_outputs_max = 1;
    const int32_t n_heads = std::max(1, (int32_t) llama_model_n_layer_nextn(model));
    p.heads.assign((size_t) n_heads, head_lane{});
    for (int32_t j = 0; j < n_heads; ++j) {
        head_lane & h = p.heads[(size_t) j];
        h.ctx = llama_init_from_model(model, cp);
        if (!h.ctx) {
            return false;
        }
        llama_set_nextn_layer_offset(h.ctx, j);
        // the MTP context reports its output state only for rows that output logits
        llama_set_embeddings_nextn(h.ctx, true, true);
        h.batch = llama_batch_ext_init(h.ctx);
    }
    p.n_state = n_state;
    p.n_vocab = n_vocab;
    p.n_batch = (int32_t) cp.n_batch;
    p.h_last.assign((size_t) n_state, 0.0f);
    p.tr = tr;
    proposer_reset(p);
    return true;
}

void proposer_init_shared(proposer & p, llama_context * ctx, llama_batch_ext * batch, int32_t seq, int32_t n_batch,
                          int32_t n_state, int32_t n_vocab, trace * tr) {
    p.heads.assign(1, head_lane{});
    p.heads[0].ctx = ctx;
    p.heads[0].batch = batch;
    p.heads[0].seq = seq;
    p.heads[0].shared = true;
    p.n_state = n_state;
    p.n_vocab = n_vocab;
    p.n_batch = n_batch;
    p.h_last.assign((size_t) n_state, 0.0f);
    p.tr = tr;
    proposer_reset(p);
}

llama_context * shared_mtp_context(llama_model * model, llama_context_params cp, int32_t n_seq, int32_t n_batch) {
    cp.ctx_type = LLAMA_CONTEXT_TYPE_MTP;
    cp.n_outputs_max = (uint32_t) n_seq;  // a call outputs one row per sequence
    cp.n_ctx = cp.n_ctx * (uint32_t) n_seq;
    cp.n_seq_max = (uint32_t) n_seq;
    cp.kv_unified = false;
    cp.n_batch = (uint32_t) n_batch;
    cp.n_ubatch = (uint32_t) n_batch;
    llama_context * ctx = llama_init_from_model(model, cp);
    if (ctx) {
        llama_set_nextn_layer_offset(ctx, 0);
        llama_set_embeddings_nextn(ctx, true, true);
    }
    return ctx;
}

void proposer_free(proposer & p) {
    for (head_lane & h : p.heads) {
        if (h.shared) {
            continue;
        }
        if (h.batch) llama_batch_ext_free(h.batch);
        if (h.ctx) llama_free(h.ctx);
    }
    p.heads.clear();
}

void proposer_reset(proposer & p) {
    for (head_lane & h : p.heads) {
        if (h.ctx && h.shared) {
            llama_memory_seq_rm(llama_get_memory(h.ctx), h.seq, -1, -1);
        } else if (h.ctx) {
            llama_memory_clear(llama_get_memory(h.ctx), true);
        }
        h.n_past = 0;
        h.mtp_next = 0;
        h.segments.clear();
        h.entry_pos.clear();
        h.entry_tok.clear();
    }
    std::fill(p.h_last.begin(), p.h_last.end(), 0.0f);  // position 0 pairs its token with a zero state
    p.h_valid = true;
    p.bl_start = 0;
    p.backlog.clear();
    p.kept_up = false;
}

void proposer_observe(proposer & p, llama_context * trunk, int32_t row0, int32_t pos0, int32_t n_rows, bool with_states) {
    if (!with_states) {  // a gap: these positions' states are unknown, and so is the next one's input
        p.backlog.clear();
        p.h_valid = false;
        return;
    }
    const size_t row = (size_t) p.n_state;
    const int32_t lo = lowest_past(p);
    for (int32_t i = 0; i < n_rows; ++i) {
        if (pos0 + i >= lo && p.h_valid) {
            if (p.backlog.empty()) {
                p.bl_start = pos0 + i;
            }
            p.backlog.insert(p.backlog.end(), p.h_last.begin(), p.h_last.end());
        }
        std::memcpy(p.h_last.data(), llama_get_embeddings_nextn_ith(trunk, row0 + i), row * sizeof(float));
        p.h_valid = true;
    }
    const int32_t n_bl = (int32_t) (p.backlog.size() / row);
    if (p.window > 0 && n_bl > p.window) {  // the older rows become a gap (first_row starts past it)
        p.backlog.erase(p.backlog.begin(), p.backlog.begin() + (ptrdiff_t) ((size_t) (n_bl - p.window) * row));
        p.bl_start += n_bl - p.window;
    }
}

void proposer_forget(proposer & p, int32_t pos) {
    for (head_lane & h : p.heads) {
        forget_head(p, h, pos);
    }
}

void proposer_truncate(proposer & p, int32_t n_keep, const float * h_last) {
    // entries at p < n_keep pair tokens and states that stay; the backlog keeps its prefix
    for (head_lane & h : p.heads) {
        if (h.n_past > n_keep) {
            forget_head(p, h, n_keep);
        }
    }
    const int32_t n_rows = (int32_t) (p.backlog.size() / (size_t) p.n_state);
    p.backlog.resize((size_t) std::clamp(n_keep - p.bl_start, 0, n_rows) * (size_t) p.n_state);
    p.h_valid = h_last != nullptr;
    if (p.h_valid) {
        std::memcpy(p.h_last.data(), h_last, (size_t) p.n_state * sizeof(float));
    }
    p.kept_up = false;
}

int32_t proposer_draft(proposer & p, const std::vector<int32_t> & tokens, int32_t n_trunk, int32_t k,
                       const float * mix, const mtpl_gen_params & g, controller * ctl, rng_type & rng,
                       std::atomic<bool> & cancel, std::vector<int32_t> & drafts, draft_outcome & out) {
    // a greedy draft's confidence costs a pass over the vocabulary: only where someone looks at it
    // (-1: not computed)
    const bool want_conf = g.adaptive || g.draft_p_min > 0.0f;
    drafts.clear();
    out = draft_outcome{};
    out.steady = p.kept_up;
    p.kept_up = false;
    if (k <= 0) {
        return MTPL_OK;
    }
    if (!p.h_valid) {  // the last trunk pass left its states out: nothing to draft from
        return MTPL_OK;
    }
    const int32_t n_heads = (int32_t) p.heads.size();
    const size_t row = (size_t) p.n_state;
    int32_t last = 0;
    out.n_behind = n_trunk - first_row(p, p.heads[0], n_trunk);
    auto t0 = clock_type::now();
    if (int32_t st = head_call(p, 0, tokens, n_trunk, n_trunk + 1, drafts, cancel, &last, out.n_calls); st != MTPL_OK) {
        return st;
    }
    out.t_head = seconds_since(t0);
    // a head that drafting has not reached for long catches up apart, so the backlog stays short
    for (int32_t j = 1; j < n_heads; ++j) {
        if (int32_t st = keep_up(p, j, tokens, n_trunk, k_lag_rows, cancel, out); st != MTPL_OK) {
            return st;
        }
    }
    const bool greedy = plain_greedy(g);
    const mtpl_gen_params qg = draft_params(g);
    const bool mixed = draft_mix_allowed(g);
    if ((int32_t) p.q.size() < k) {
        p.q.resize((size_t) k);
    }
    p.chain.resize((size_t) (k + 1) * row);
    head_lane * from = &p.heads[0];  // the head whose output this draft comes from
    for (int32_t i = 0; i < k; ++i) {
        const int32_t next = decide(p, i, llama_get_logits_ith(from->ctx, last), tokens, k, mix, g, greedy, want_conf,
                                    qg, mixed, ctl, rng, drafts);
        if (next == k_stop) {
            break;
        }
        const int32_t tok = drafts.back();
        if (next == k_last) {
            break;
        }
        t0 = clock_type::now();
        const double upkeep0 = out.t_upkeep;
        // draft i + 1 pairs draft i with the state that predicted it
        float * h_in = p.chain.data() + (size_t) (i + 1) * row;
        std::memcpy(h_in, llama_get_embeddings_nextn_ith(from->ctx, last), row * sizeof(float));
        if (i + 1 < n_heads) {  // the next head, over the step's rows
            from = &p.heads[(size_t) (i + 1)];
            if (int32_t st = keep_up(p, i + 1, tokens, n_trunk, k_joined_rows, cancel, out); st != MTPL_OK) {
                return st;
            }
            // a head's first call sets its context up: upkeep too, or the controller would take a
            // draft from this head for a hundred times dearer than it is
            const bool cold = !from->warm;
            const auto t_call = clock_type::now();
            const int32_t calls0 = out.n_calls;
            if (int32_t st = head_call(p, i + 1, tokens, n_trunk, n_trunk + i + 2, drafts, cancel, &last, out.n_calls);
                st != MTPL_OK) {
                return st;
            }
            if (cold) {
                out.n_upkeep += out.n_calls - calls0;
                out.t_upkeep += seconds_since(t_call);
            }
        } else {  // the last head again, on its own output
            llama_batch_ext_clear(from->batch);
            batch_add(from->batch, tok, from->mtp_next + i, true, h_in, p.n_state, from->seq);
            out.n_calls++;
            if (int32_t st = process(from->ctx, from->batch, cancel, "MTP draft"); st != MTPL_OK) {
                drop_drafts(p, *from);
                return st;
            }
            if (n_heads == 1) {
                p.tr->next_call();
                p.tr->row(MTPL_DEBUG_MTP_ROW, n_trunk + 1 + i, tok, h_in, llama_get_logits_ith(from->ctx, 0),
                          llama_get_embeddings_nextn_ith(from->ctx, 0));
            }
            last = 0;
        }
        out.t_draft += seconds_since(t0) - (out.t_upkeep - upkeep0);
    }
    p.kept_up = true;
    return MTPL_OK;
}

void proposer_draft_many(std::vector<draft_job> & jobs, llama_context * ctx, llama_batch_ext * batch, bool exact) {
    struct lane {
        size_t job;
        int32_t idx = -1;       // its output row in the last call
        int32_t first = 0;      // the head call: its first row's trunk position, and the MTP shift
        int32_t shift = 0;
        bool new_segment = false;
    };
    std::atomic<bool> never{false};  // a shared call is not cancelled by one session
    std::vector<lane> live;
    for (size_t j = 0; j < jobs.size(); ++j) {
        draft_job & J = jobs[j];
        proposer & p = *J.p;
        J.drafts->clear();
        *J.out = draft_outcome{};
        J.out->steady = p.kept_up;
        J.status = MTPL_OK;
        p.kept_up = false;
        if (J.k <= 0 || !p.h_valid) {
            continue;
        }
        J.out->n_behind = J.n_trunk - first_row(p, p.heads[0], J.n_trunk);
        // a long backlog (a prompt's) catches up in a call of its own, so the shared call stays short
        if (int32_t st = keep_up(p, 0, *J.tokens, J.n_trunk, k_joined_rows, *J.cancel, *J.out); st != MTPL_OK) {
            J.status = st;
            continue;
        }
        live.push_back({j});
    }
    if (live.empty()) {
        return;
    }
    std::sort(live.begin(), live.end(), [&](const lane & a, const lane & b) {
        return jobs[a.job].p->heads[0].seq < jobs[b.job].p->heads[0].seq;
    });
    const auto run = [&](const char * what, int32_t n) {
        invariant_rows_scope scope(exact, n);
        return process(ctx, batch, never, what);
    };

    // the head call: each proposer's backlog rows and head entry, filler rows after the head entry
    // up to the longest (llama.cpp takes consecutive, equally long sequences into one graph)
    int32_t rows_max = 0;
    for (const lane & L : live) {
        const draft_job & J = jobs[L.job];
        rows_max = std::max(rows_max, J.n_trunk + 1 - first_row(*J.p, J.p->heads[0], J.n_trunk));
    }
    llama_batch_ext_clear(batch);
    int32_t n_rows = 0;
    for (lane & L : live) {
        draft_job & J = jobs[L.job];
        proposer & p = *J.p;
        head_lane & h = p.heads[0];
        drop_drafts(p, h);
        const size_t row = (size_t) p.n_state;
        L.first = first_row(p, h, J.n_trunk);
        L.shift = L.first - h.mtp_next;
        L.new_segment = h.segments.empty() || h.segments.back().shift != L.shift;
        if (L.new_segment) {
            h.segments.push_back({L.first, L.shift});
        }
        for (int32_t pos = L.first; pos <= J.n_trunk; ++pos) {
            const float * state = pos == J.n_trunk ? p.h_last.data() : p.backlog.data() + (size_t) (pos - p.bl_start) * row;
            batch_add(batch, (*J.tokens)[(size_t) pos], pos - L.shift, pos == J.n_trunk, state, p.n_state, h.seq);
        }
        n_rows += J.n_trunk + 1 - L.first;
        L.idx = n_rows - 1;
        const int32_t pad = rows_max - (J.n_trunk + 1 - L.first);
        if (J.n_trunk + 1 - L.shift + pad <= J.n_ctx) {
            for (int32_t r = 0; r < pad; ++r) {
                batch_add(batch, (*J.tokens)[(size_t) J.n_trunk], J.n_trunk + 1 + r - L.shift, false, p.h_last.data(),
                          p.n_state, h.seq);
            }
            n_rows += pad;
        }
    }
    auto t0 = clock_type::now();
    int32_t st = run("MTP evaluation", n_rows);
    double dt = seconds_since(t0);
    for (lane & L : live) {
        draft_job & J = jobs[L.job];
        proposer & p = *J.p;
        head_lane & h = p.heads[0];
        J.out->n_calls++;
        J.out->t_head = dt / (double) live.size();
        if (st != MTPL_OK) {
            drop_drafts(p, h);
            if (L.new_segment) {
                h.segments.pop_back();
            }
            J.status = st;
            continue;
        }
        if (p.tr->on) {
            p.tr->next_call();
            for (int32_t pos = L.first; pos <= J.n_trunk; ++pos) {
                const bool out = pos == J.n_trunk;
                const int32_t i = L.idx - (J.n_trunk - pos);
                p.tr->row(MTPL_DEBUG_MTP_ROW, pos, (*J.tokens)[(size_t) pos],
                          pos == J.n_trunk ? p.h_last.data() : p.backlog.data() + (size_t) (pos - p.bl_start) * p.n_state,
                          out ? llama_get_logits_ith(ctx, i) : nullptr, out ? llama_get_embeddings_nextn_ith(ctx, i) : nullptr);
            }
        }
        for (int32_t q = L.first; q <= J.n_trunk; ++q) {
            h.entry_pos.push_back(q);
            h.entry_tok.push_back((*J.tokens)[(size_t) q]);
        }
        h.n_past = J.n_trunk + 1;
        h.mtp_next = J.n_trunk + 1 - L.shift;
        h.warm = true;
        trim_backlog(p);
        llama_memory_seq_rm(llama_get_memory(ctx), h.seq, h.mtp_next, -1);  // the filler rows
    }
    if (st != MTPL_OK) {
        return;
    }

    // the drafts, one call per depth for every proposer still drafting
    for (lane & L : live) {
        draft_job & J = jobs[L.job];
        if ((int32_t) J.p->q.size() < J.k) {
            J.p->q.resize((size_t) J.k);
        }
        J.p->chain.resize((size_t) (J.k + 1) * (size_t) J.p->n_state);
    }
    for (int32_t i = 0; !live.empty(); ++i) {
        std::vector<lane> more;
        for (lane & L : live) {
            draft_job & J = jobs[L.job];
            const mtpl_gen_params & g = *J.g;
            const int32_t next = decide(*J.p, i, llama_get_logits_ith(ctx, L.idx), *J.tokens, J.k, J.mix, g,
                                        plain_greedy(g), g.adaptive || g.draft_p_min > 0.0f, draft_params(g),
                                        draft_mix_allowed(g), J.ctl, *J.rng, *J.drafts);
            J.p->kept_up = true;
            if (next == k_more) {
                more.push_back(L);
            }
        }
        if (more.empty()) {
            break;
        }
        llama_batch_ext_clear(batch);
        int32_t b = 0;
        for (lane & L : more) {
            draft_job & J = jobs[L.job];
            proposer & p = *J.p;
            head_lane & h = p.heads[0];
            float * h_in = p.chain.data() + (size_t) (i + 1) * (size_t) p.n_state;
            std::memcpy(h_in, llama_get_embeddings_nextn_ith(ctx, L.idx), (size_t) p.n_state * sizeof(float));
            batch_add(batch, J.drafts->back(), h.mtp_next + i, true, h_in, p.n_state, h.seq);
            L.idx = b++;
        }
        t0 = clock_type::now();
        st = run("MTP draft", b);
        dt = seconds_since(t0);
        for (lane & L : more) {
            draft_job & J = jobs[L.job];
            proposer & p = *J.p;
            J.out->n_calls++;
            J.out->t_draft += dt / (double) more.size();
            if (st != MTPL_OK) {
                drop_drafts(p, p.heads[0]);
                J.status = st;
                continue;
            }
            if (p.tr->on) {
                p.tr->next_call();
                p.tr->row(MTPL_DEBUG_MTP_ROW, J.n_trunk + 1 + i, J.drafts->back(),
                          p.chain.data() + (size_t) (i + 1) * (size_t) p.n_state, llama_get_logits_ith(ctx, L.idx),
                          llama_get_embeddings_nextn_ith(ctx, L.idx));
            }
        }
        if (st != MTPL_OK) {
            return;
        }
        live = std::move(more);
    }
}

} // namespace mtpl
