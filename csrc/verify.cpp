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
// then has exactly the distribution of plain sampling from p.
#include "engine.h"

#include <algorithm>
#include <cmath>
#include <cstring>

namespace mtpl {

int32_t argmax(const float * logits, int32_t n_vocab) {
    int32_t best = 0;
    float best_v = logits[0];
    for (int32_t i = 1; i < n_vocab; ++i) {
        if (logits[i] > best_v) {  // strict: the lowest id wins ties, as in llama.cpp's greedy sampler
            best_v = logits[i];
            best = i;
        }
    }
    return best;
}

namespace {

// four floats as one value: GCC and Clang compile arithmetic on it to SIMD instructions
typedef float f4 __attribute__((vector_size(16)));
typedef int32_t i4 __attribute__((vector_size(16)));

// exp(x) lane by lane for x <= 0 (below -87, exp(-87)), to 3e-7 relative: x = n ln 2 + r with
// |r| <= ln 2 / 2, exp(r) by its Taylor series to r^6, 2^n put straight into the exponent bits
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

} // namespace

bool top_prob_below(const float * logits, int32_t n_vocab, int32_t top, float p_min) {
    // p(top) = 1 / sum_i exp(logit_i - logit_top) < p_min  <=>  the sum exceeds 1 / p_min, which an
    // unsure head's logits often show within the first blocks: on GLM's 151,552-token vocabulary a
    // full pass in double-precision std::exp took ~0.5 ms per draft here, this one ~0.13 ms, a
    // stop after the first blocks a few microseconds
    constexpr int32_t block = 256;
    const float m = logits[top];
    const double limit = 1.0 / (double) p_min;
    double sum = 0.0;
    for (int32_t start = 0; start < n_vocab; start += block) {
        sum += sum_exp_below(logits + start, std::min(block, n_vocab - start), m);
        if (sum > limit) {
            return true;
        }
    }
    return false;
}

int32_t accept_greedy(const int32_t * drafts, const int32_t * target, int32_t n_drafts) {
    int32_t n = 0;
    while (n < n_drafts && drafts[n] == target[n]) {
        ++n;
    }
    return n;
}

bool is_greedy(const mtpl_gen_params & g) {
    return g.temperature <= 0.0f;
}

int32_t choose_token(mtpl_session * s, const float * logits, size_t n_ctx_tokens) {
    const mtpl_gen_params & g = s->gen;
    if (is_greedy(g) && !penalties_active(g)) {
        return argmax(logits, s->n_vocab);
    }
    penalty_counts(g, s->tokens.data(), n_ctx_tokens, nullptr, 0, s->counts);
    dist p;
    build_dist(logits, s->n_vocab, g, s->counts, s->logit_scratch, p);
    if (is_greedy(g)) return p.top();
    // the chosen token goes to position n_ctx_tokens
    return g.verify == MTPL_VERIFY_COUPLED ? sample_keyed(p, g.seed, (int64_t) n_ctx_tokens) : sample(p, s->rng);
}

int32_t verify_step(mtpl_session * s, int32_t n_drafts, int32_t * next) {
    const mtpl_gen_params & g = s->gen;
    // tokens = [... context ..., pending, drafts...]: row i sees context up to pending + drafts[0, i)
    const size_t n_before = s->tokens.size() - (size_t) n_drafts;
    if (is_greedy(g) && !penalties_active(g)) {
        s->targets.resize((size_t) n_drafts + 1);
        for (int32_t i = 0; i <= n_drafts; ++i) {
            s->targets[(size_t) i] = argmax(llama_get_logits_ith(s->trunk, i), s->n_vocab);
        }
        const int32_t n_acc = accept_greedy(s->drafts.data(), s->targets.data(), n_drafts);
        *next = s->targets[(size_t) n_acc];
        return n_acc;
    }
    dist p;
    for (int32_t i = 0; i <= n_drafts; ++i) {
        const float * logits = llama_get_logits_ith(s->trunk, i);
        if (i == n_drafts) {  // every draft accepted: the bonus token comes from p
            *next = choose_token(s, logits, n_before + (size_t) i);
            return n_drafts;
        }
        const int32_t x = s->drafts[(size_t) i];
        if (g.verify == MTPL_VERIFY_ACCEPT_ALL) {
            continue;
        }
        penalty_counts(g, s->tokens.data(), n_before + (size_t) i, nullptr, 0, s->counts);
        build_dist(logits, s->n_vocab, g, s->counts, s->logit_scratch, p);
        if (is_greedy(g)) {  // greedy with penalties: exact match against the penalised arg-max
            const int32_t y = p.top();
            if (y != x) { *next = y; return i; }
            continue;
        }
        if (g.verify == MTPL_VERIFY_EXACT || g.verify == MTPL_VERIFY_COUPLED) {
            const int32_t y = g.verify == MTPL_VERIFY_EXACT ? sample(p, s->rng)
                                                             : sample_keyed(p, g.seed, (int64_t) (n_before + (size_t) i));
            if (y != x) { *next = y; return i; }
            continue;
        }
        const dist & q = s->qdists[(size_t) i];
        const double px = p.prob_of(x), qx = q.prob_of(x);
        if (!(qx > 0.0) || uniform01(s->rng) >= px / qx) {
            *next = sample_residual(p, q, s->rng);
            return i;
        }
    }
    return n_drafts;  // not reached
}

} // namespace mtpl
