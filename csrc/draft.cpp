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

// Drop the MTP cache's drafts (entries from mtp_next on).
void drop_drafts(proposer & p) {
    llama_memory_seq_rm(llama_get_memory(p.ctx), 0, p.mtp_next, -1);
    p.tr->forget(MTPL_DEBUG_MTP_FORGET, p.n_past);
}

// Evaluate the backlog and the head entry (pending token, h_last) at n_trunk, in batches of at
// most n_batch; the head entry's logits are the first draft's.  *head_idx receives its row.
int32_t catch_up_and_head(proposer & p, const std::vector<int32_t> & tokens, int32_t n_trunk,
                          std::atomic<bool> & cancel, int32_t * head_idx, int32_t & n_calls) {
    drop_drafts(p);
    const size_t row = (size_t) p.n_embd;
    const int32_t first = p.backlog.empty() ? n_trunk : p.bl_start;
    const auto state = [&](int32_t pos) {
        return pos == n_trunk ? p.h_last.data() : p.backlog.data() + (size_t) (pos - first) * row;
    };
    // after a gap (first > n_past) the entries go on at the next MTP position, with a larger shift
    const int32_t shift = first - p.mtp_next;
    const bool new_segment = p.segments.empty() || p.segments.back().shift != shift;
    if (new_segment) {
        p.segments.push_back({first, shift});
    }
    int32_t pos = first;
    while (pos <= n_trunk) {
        const int32_t n = std::min(n_trunk + 1 - pos, p.n_batch);
        llama_batch_ext_clear(p.batch);
        for (int32_t i = 0; i < n; ++i) {
            const bool head = pos + i == n_trunk;
            batch_add(p.batch, tokens[pos + i], pos + i - shift, head, state(pos + i), p.n_embd);
            if (head) {
                *head_idx = i;
            }
        }
        n_calls++;
        if (int32_t st = process(p.ctx, p.batch, cancel, "MTP evaluation"); st != MTPL_OK) {
            drop_drafts(p);
            if (new_segment) {
                p.segments.pop_back();
            }
            return st;
        }
        p.tr->next_call();
        for (int32_t i = 0; i < n && p.tr->on; ++i) {
            const bool head = pos + i == n_trunk;
            p.tr->row(MTPL_DEBUG_MTP_ROW, pos + i, tokens[pos + i], state(pos + i),
                      head ? llama_get_logits_ith(p.ctx, i) : nullptr,
                      head ? llama_get_embeddings_nextn_ith(p.ctx, i) : nullptr);
        }
        pos += n;
    }
    for (int32_t q = first; q <= n_trunk; ++q) {
        p.entry_pos.push_back(q);
        p.entry_tok.push_back(tokens[q]);
    }
    p.backlog.clear();
    p.n_past = n_trunk + 1;
    p.mtp_next = n_trunk + 1 - shift;
    return MTPL_OK;
}

} // namespace

float top_prob(const float * logits, int32_t n_vocab, int32_t top) {
    return (float) (1.0 / sum_exp_below(logits, n_vocab, logits[top]));
}

bool proposer_init(proposer & p, llama_model * model, llama_context_params cp, int32_t n_embd, int32_t n_vocab,
                   trace * tr) {
    cp.ctx_type = LLAMA_CONTEXT_TYPE_MTP;
    // every MTP call outputs one row (the head entry, or a draft): buffers for one output row,
    // and with patches/0004 FFN buffers for one row too
    cp.n_outputs_max = 1;
    p.ctx = llama_init_from_model(model, cp);
    if (!p.ctx) {
        return false;
    }
    // the MTP context reports its output state only for rows that output logits
    llama_set_embeddings_nextn(p.ctx, true, true);
    p.batch = llama_batch_ext_init(p.ctx);
    p.n_embd = n_embd;
    p.n_vocab = n_vocab;
    p.n_batch = (int32_t) cp.n_batch;
    p.h_last.assign((size_t) n_embd, 0.0f);
    p.h_scratch.assign((size_t) n_embd, 0.0f);
    p.tr = tr;
    proposer_reset(p);
    return true;
}

void proposer_free(proposer & p) {
    if (p.batch) llama_batch_ext_free(p.batch);
    if (p.ctx) llama_free(p.ctx);
    p.batch = nullptr;
    p.ctx = nullptr;
}

void proposer_reset(proposer & p) {
    llama_memory_clear(llama_get_memory(p.ctx), true);
    std::fill(p.h_last.begin(), p.h_last.end(), 0.0f);  // position 0 pairs its token with a zero state
    p.h_valid = true;
    p.n_past = 0;
    p.mtp_next = 0;
    p.segments.clear();
    p.entry_pos.clear();
    p.entry_tok.clear();
    p.backlog.clear();
    p.kept_up = false;
}

void proposer_observe(proposer & p, llama_context * trunk, int32_t pos0, int32_t n_rows, bool with_states) {
    if (!with_states) {  // a gap: these positions' states are unknown, and so is the next one's input
        p.backlog.clear();
        p.h_valid = false;
        return;
    }
    const size_t row = (size_t) p.n_embd;
    for (int32_t i = 0; i < n_rows; ++i) {
        if (pos0 + i >= p.n_past && p.h_valid) {
            if (p.backlog.empty()) {
                p.bl_start = pos0 + i;
            }
            p.backlog.insert(p.backlog.end(), p.h_last.begin(), p.h_last.end());
        }
        std::memcpy(p.h_last.data(), llama_get_embeddings_nextn_ith(trunk, i), row * sizeof(float));
        p.h_valid = true;
    }
}

void proposer_forget(proposer & p, int32_t pos) {
    const int32_t from = std::min(pos, p.n_past);
    // the segments after `from` go; entries of the one it falls in stay below it
    int32_t next = p.mtp_next;
    while (!p.segments.empty() && p.segments.back().from > from) {
        next = std::min(next, p.segments.back().from - p.segments.back().shift);
        p.segments.pop_back();
    }
    p.mtp_next = p.segments.empty() ? 0 : std::min(next, from - p.segments.back().shift);
    llama_memory_seq_rm(llama_get_memory(p.ctx), 0, p.mtp_next, -1);
    p.entry_pos.resize((size_t) p.mtp_next);
    p.entry_tok.resize((size_t) p.mtp_next);
    p.tr->forget(MTPL_DEBUG_MTP_FORGET, from);
    p.n_past = from;
}

void proposer_truncate(proposer & p, int32_t n_keep, const float * h_last) {
    // entries at p < n_keep pair tokens and states that stay; the backlog keeps its prefix
    if (p.n_past > n_keep) {
        proposer_forget(p, n_keep);
        p.backlog.clear();
    } else if (!p.backlog.empty()) {
        p.backlog.resize((size_t) std::max(0, n_keep - p.bl_start) * (size_t) p.n_embd);
    }
    p.h_valid = h_last != nullptr;
    if (p.h_valid) {
        std::memcpy(p.h_last.data(), h_last, (size_t) p.n_embd * sizeof(float));
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
    int32_t last = 0;
    out.n_behind = (int32_t) (p.backlog.size() / (size_t) p.n_embd);
    auto t0 = clock_type::now();
    if (int32_t st = catch_up_and_head(p, tokens, n_trunk, cancel, &last, out.n_calls); st != MTPL_OK) {
        return st;
    }
    out.t_head = seconds_since(t0);
    const size_t row = (size_t) p.n_embd;
    const bool greedy = plain_greedy(g);
    const mtpl_gen_params qg = draft_params(g);
    const bool mixed = draft_mix_allowed(g);
    if ((int32_t) p.q.size() < k) {
        p.q.resize((size_t) k);
    }
    for (int32_t i = 0; i < k; ++i) {
        const float * logits = llama_get_logits_ith(p.ctx, last);
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
            break;
        }
        if (tok < 0) {
            tok = draw_draft(p.q[(size_t) i], g, (int64_t) tokens.size() + i, rng);
        }
        drafts.push_back(tok);
        if (i + 1 == k || !controller_extend(ctl, i)) {
            break;
        }
        t0 = clock_type::now();
        std::memcpy(p.h_scratch.data(), llama_get_embeddings_nextn_ith(p.ctx, last), row * sizeof(float));
        llama_batch_ext_clear(p.batch);
        batch_add(p.batch, tok, p.mtp_next + i, true, p.h_scratch.data(), p.n_embd);
        out.n_calls++;
        if (int32_t st = process(p.ctx, p.batch, cancel, "MTP draft"); st != MTPL_OK) {
            drop_drafts(p);
            return st;
        }
        p.tr->next_call();
        p.tr->row(MTPL_DEBUG_MTP_ROW, n_trunk + 1 + i, tok, p.h_scratch.data(), llama_get_logits_ith(p.ctx, 0),
                  llama_get_embeddings_nextn_ith(p.ctx, 0));
        out.t_draft += seconds_since(t0);
        last = 0;
    }
    p.kept_up = true;
    return MTPL_OK;
}

} // namespace mtpl
