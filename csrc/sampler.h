// Sampling distributions with llama.cpp's semantics and order, and token choice.
#pragma once

#include <cstdint>
#include <random>
#include <unordered_map>
#include <vector>

extern "C" {
#include "mtpllama.h"
}

namespace mtpl {

using rng_type = std::mt19937_64;

// A sampling distribution: candidate ids and their probabilities (sum 1).
struct dist {
    std::vector<int32_t> ids;
    std::vector<float> probs;
    float prob_of(int32_t id) const;
    int32_t top() const;
    float top_prob() const;
};

// A draft distribution: the head's distribution after the sampling transforms (base), mixed with a
// point mass on base's arg-max: q(x) = mix [x = top] + (1 - mix) base(x).
struct draft_dist {
    dist base;
    float mix = 0.0f;
    int32_t top = -1;
    float prob_of(int32_t id) const { return (id == top ? mix : 0.0f) + (1.0f - mix) * base.prob_of(id); }
};

// Reused buffers, so that building a distribution allocates nothing in steady state.
struct sampler_scratch {
    std::vector<float> logits;
    std::unordered_map<int32_t, int32_t> counts;
    dist p;
};

bool is_greedy(const mtpl_gen_params & g);
bool penalties_active(const mtpl_gen_params & g);
// greedy without penalties: the arg-max of the raw logits is the choice
inline bool plain_greedy(const mtpl_gen_params & g) { return is_greedy(g) && !penalties_active(g); }
// the lowest id among the largest logits, as llama.cpp's greedy sampler
int32_t argmax(const float * logits, int32_t n_vocab);
// Token counts in the penalty window over context followed by extra[0, n_extra).
void penalty_counts(const mtpl_gen_params & g, const int32_t * context, size_t n_context, const int32_t * extra,
                    int32_t n_extra, std::unordered_map<int32_t, int32_t> & counts);
// logits -> distribution after penalties (counts), top-k, top-p, min-p and temperature.
void build_dist(const float * logits, int32_t n_vocab, const mtpl_gen_params & g,
                const std::unordered_map<int32_t, int32_t> & counts, std::vector<float> & scratch, dist & out);
double uniform01(rng_type & rng);
int32_t sample(const dist & d, rng_type & rng);
// a sample of norm(max(0, p - q))
int32_t sample_residual(const dist & p, const draft_dist & q, rng_type & rng);
// Gumbel-max sample of d with noise determined by (seed, pos, token id) alone
int32_t sample_keyed(const dist & d, uint64_t seed, int64_t pos);
// The token that follows context[0, n_context) given its trunk logits: greedy, or sampled (from rng,
// or with noise keyed by position for MTPL_VERIFY_COUPLED).
int32_t choose_token(const float * logits, int32_t n_vocab, const mtpl_gen_params & g, const int32_t * context,
                     size_t n_context, sampler_scratch & scratch, rng_type & rng);

} // namespace mtpl
