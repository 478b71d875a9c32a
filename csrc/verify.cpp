// Verification: how the trunk's choices decide which drafted tokens are kept.
//
// Glossary.  drafted: tokens proposed by the MTP head for the positions after the
// pending token.  accepted: the longest prefix of the drafts that the trunk would
// itself have produced.  bonus: the trunk's own token at the first position that
// was not accepted (or after the last draft when all were), so every step emits
// at least one token.
#include "engine.h"

#include <cmath>

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

float top_prob(const float * logits, int32_t n_vocab, int32_t top) {
    const float m = logits[top];
    double sum = 0.0;
    for (int32_t i = 0; i < n_vocab; ++i) {
        sum += std::exp((double) (logits[i] - m));
    }
    return (float) (1.0 / sum);
}

int32_t accept_greedy(const int32_t * drafts, const int32_t * target, int32_t n_drafts) {
    int32_t n = 0;
    while (n < n_drafts && drafts[n] == target[n]) {
        ++n;
    }
    return n;
}

} // namespace mtpl
