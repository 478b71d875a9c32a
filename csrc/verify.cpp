// Verification: how the trunk's choices decide which drafted tokens are kept.
//
// Glossary.  drafted: tokens proposed by the MTP head for the positions after the
// pending token.  accepted: the drafts the trunk keeps (a prefix).  recovered:
// the token the trunk puts at the first rejected position (greedy: its arg-max;
// rejection sampling: a sample of norm(max(0, p - q))).  bonus: the trunk's token
// after the last draft when every draft was accepted.  Every step emits the
// accepted drafts plus one recovered or bonus token.
//
// Rejection sampling (Leviathan et al. 2023, Chen et al. 2023): draft x ~ q is
// accepted with probability min(1, p(x)/q(x)); p and q are the trunk's and the
// MTP head's distributions after the same penalties, top-k/p, min-p and
// temperature, with the same context (drafts before x included).  The output
// then has exactly the distribution of plain sampling from p, whatever q is.
#include "verify.h"

#include <algorithm>

namespace mtpl {

bool known_verify_mode(int32_t v) {
    switch (v) {
        case MTPL_VERIFY_REJECTION:
        case MTPL_VERIFY_EXACT:
        case MTPL_VERIFY_TEST_ACCEPT_ALL:
        case MTPL_VERIFY_COUPLED:
            return true;
        default:
            return false;
    }
}

mtpl_gen_params draft_params(const mtpl_gen_params & g) {
    mtpl_gen_params q = g;
    if (g.verify == MTPL_VERIFY_EXACT) {
        q.temperature = 0.0f;  // exact match keeps only drafts equal to the trunk's sample: draft the arg-max
    } else if (g.verify == MTPL_VERIFY_COUPLED) {
        // q at the sampling temperature: the shared noise agrees best when q matches p
    } else if (g.draft_temperature >= 0.0f && !is_greedy(g)) {
        q.temperature = g.draft_temperature;
    }
    return q;
}

bool draft_mix_allowed(const mtpl_gen_params & g) {
    // rejection sampling accepts any q; exact and coupled want drafts as their modes draw them
    return g.verify == MTPL_VERIFY_REJECTION && g.draft_temperature < 0.0f && !is_greedy(g);
}

int32_t draw_draft(const draft_dist & q, const mtpl_gen_params & g, int64_t pos, rng_type & rng) {
    if (is_greedy(draft_params(g))) {
        return q.base.top();
    }
    if (g.verify == MTPL_VERIFY_COUPLED) {
        return sample_keyed(q.base, g.seed, pos);
    }
    if (q.mix > 0.0f && uniform01(rng) < q.mix) {
        return q.top;
    }
    return sample(q.base, rng);
}

void mix_overlaps(const dist & p, const dist & base, int32_t top, const float * mixes, int32_t n,
                  std::vector<float> & dense, double * out) {
    for (size_t i = 0; i < base.ids.size(); ++i) {
        dense[(size_t) base.ids[i]] = base.probs[i];
    }
    for (int32_t j = 0; j < n; ++j) {
        out[j] = 0.0;
    }
    for (size_t i = 0; i < p.ids.size(); ++i) {
        const int32_t x = p.ids[i];
        for (int32_t j = 0; j < n; ++j) {
            const double q = (x == top ? mixes[j] : 0.0) + (1.0 - mixes[j]) * dense[(size_t) x];
            out[j] += std::min((double) p.probs[i], q);
        }
    }
    for (int32_t id : base.ids) {
        dense[(size_t) id] = 0.0f;
    }
}

verify_result verify(const float * const * rows, int32_t n_vocab, const int32_t * tokens, size_t n_before,
                     int32_t n_drafts, const draft_dist * q, const mtpl_gen_params & g, sampler_scratch & scratch,
                     rng_type & rng, std::vector<dist> * reached_p) {
    const int32_t * drafts = tokens + n_before;
    if (plain_greedy(g)) {
        for (int32_t i = 0;; ++i) {
            const int32_t y = argmax(rows[i], n_vocab);
            if (i == n_drafts || y != drafts[i]) {
                return {i, y};
            }
        }
    }
    dist & p = scratch.p;
    for (int32_t i = 0; i < n_drafts; ++i) {
        const size_t n_ctx = n_before + (size_t) i;  // row i sees the pending token and drafts[0, i)
        const int32_t x = drafts[i];
        if (g.verify == MTPL_VERIFY_TEST_ACCEPT_ALL) {
            continue;
        }
        penalty_counts(g, tokens, n_ctx, nullptr, 0, scratch.counts);
        build_dist(rows[i], n_vocab, g, scratch.counts, scratch.logits, p);
        if (is_greedy(g) || g.verify == MTPL_VERIFY_EXACT || g.verify == MTPL_VERIFY_COUPLED) {
            // greedy with penalties: the penalised arg-max; exact: a sample; coupled: the keyed sample
            const int32_t y = is_greedy(g)                      ? p.top()
                              : g.verify == MTPL_VERIFY_EXACT ? sample(p, rng)
                                                              : sample_keyed(p, g.seed, (int64_t) n_ctx);
            if (y != x) {
                return {i, y};
            }
            continue;
        }
        if (reached_p) {  // assigned into place, so that steady state allocates nothing
            if (reached_p->size() <= (size_t) i) {
                reached_p->resize((size_t) i + 1);
            }
            (*reached_p)[(size_t) i] = p;
        }
        const double px = p.prob_of(x), qx = q[i].prob_of(x);
        if (!(qx > 0.0) || uniform01(rng) >= px / qx) {
            return {i, sample_residual(p, q[i], rng)};
        }
    }
    // every draft accepted: the bonus token comes from the last row
    return {n_drafts, choose_token(rows[n_drafts], n_vocab, g, tokens, n_before + (size_t) n_drafts, scratch, rng)};
}

} // namespace mtpl
