// Sampling distributions, with llama.cpp's semantics and order:
// penalties -> top-k -> top-p -> min-p -> temperature -> sample.
// top-p and min-p look at the softmax of the penalised logits before the
// temperature is applied, as in upstream's default sampler chain.
//
// The same function turns trunk logits into p and MTP logits into q, so the
// rejection sampler compares distributions after identical transforms.
#include "sampler.h"

#include <algorithm>
#include <cmath>
#include <unordered_map>

namespace mtpl {
namespace {

// Penalties of upstream's llama_sampler_penalties: repeat (divide positive
// logits, multiply negative ones), frequency (per occurrence), presence (once).
void apply_penalties(std::vector<float> & logits, const std::unordered_map<int32_t, int32_t> & counts,
                     const mtpl_gen_params & g) {
    for (const auto & [tok, n] : counts) {
        if (n <= 0) continue;
        float & l = logits[tok];
        l = l > 0.0f ? l / g.repeat_penalty : l * g.repeat_penalty;
        l -= (float) n * g.frequency_penalty + g.presence_penalty;
    }
}

// Candidate ids sorted by logit (descending) until they cover top_p of the
// softmax mass; grows the sorted prefix geometrically instead of sorting all.
void top_p_prefix(const std::vector<float> & logits, std::vector<int32_t> & ids, float top_p) {
    const size_t n = ids.size();
    float m = -INFINITY;
    for (int32_t id : ids) m = std::max(m, logits[id]);
    double z = 0.0;
    for (int32_t id : ids) z += std::exp((double) (logits[id] - m));
    auto by_logit = [&](int32_t a, int32_t b) { return logits[a] > logits[b] || (logits[a] == logits[b] && a < b); };
    for (size_t k = std::min<size_t>(n, 64);; k = std::min(n, k * 4)) {
        std::partial_sort(ids.begin(), ids.begin() + (long) k, ids.end(), by_logit);
        double cum = 0.0;
        for (size_t i = 0; i < k; ++i) {
            cum += std::exp((double) (logits[ids[i]] - m)) / z;
            if (cum >= top_p) {
                ids.resize(i + 1);
                return;
            }
        }
        if (k == n) return;
    }
}

} // namespace

void penalty_counts(const mtpl_gen_params & g, const int32_t * context, size_t n_context, const int32_t * extra,
                    int32_t n_extra, std::unordered_map<int32_t, int32_t> & counts) {
    counts.clear();
    if (!penalties_active(g)) return;
    const int64_t total = (int64_t) n_context + n_extra;
    const int64_t window = g.penalty_last_n < 0 ? total : std::min<int64_t>(g.penalty_last_n, total);
    for (int64_t i = total - window; i < total; ++i) {
        const int32_t t = i < (int64_t) n_context ? context[i] : extra[i - (int64_t) n_context];
        counts[t]++;
    }
}

bool is_greedy(const mtpl_gen_params & g) {
    return g.temperature <= 0.0f;
}

int32_t argmax(const float * logits, int32_t n_vocab) {
    int32_t best = 0;
    float best_v = logits[0];
    for (int32_t i = 1; i < n_vocab; ++i) {
        if (logits[i] > best_v) {  // strict: the lowest id wins ties
            best_v = logits[i];
            best = i;
        }
    }
    return best;
}

bool penalties_active(const mtpl_gen_params & g) {
    return g.penalty_last_n != 0 && (g.repeat_penalty != 1.0f || g.frequency_penalty != 0.0f || g.presence_penalty != 0.0f);
}

void build_dist(const float * raw, int32_t n_vocab, const mtpl_gen_params & g,
                const std::unordered_map<int32_t, int32_t> & counts, std::vector<float> & scratch, dist & out) {
    scratch.assign(raw, raw + n_vocab);
    apply_penalties(scratch, counts, g);
    out.ids.clear();
    out.probs.clear();
    if (g.temperature <= 0.0f) {
        out.ids.push_back(argmax(scratch.data(), n_vocab));
        out.probs.push_back(1.0f);
        return;
    }
    std::vector<int32_t> & ids = out.ids;
    ids.resize((size_t) n_vocab);
    for (int32_t i = 0; i < n_vocab; ++i) ids[(size_t) i] = i;
    auto by_logit = [&](int32_t a, int32_t b) { return scratch[a] > scratch[b] || (scratch[a] == scratch[b] && a < b); };
    if (g.top_k > 0 && g.top_k < n_vocab) {
        std::nth_element(ids.begin(), ids.begin() + g.top_k, ids.end(), by_logit);
        ids.resize((size_t) g.top_k);
    }
    if (g.top_p < 1.0f) {
        top_p_prefix(scratch, ids, g.top_p);
    }
    if (g.min_p > 0.0f) {
        float m = -INFINITY;
        for (int32_t id : ids) m = std::max(m, scratch[id]);
        const float floor = m + std::log(g.min_p);  // p_i >= min_p * p_max  <=>  l_i >= l_max + log(min_p)
        ids.erase(std::remove_if(ids.begin(), ids.end(), [&](int32_t id) { return scratch[id] < floor; }), ids.end());
    }
    float m = -INFINITY;
    for (int32_t id : ids) m = std::max(m, scratch[id]);
    double z = 0.0;
    out.probs.resize(ids.size());
    for (size_t i = 0; i < ids.size(); ++i) {
        const double e = std::exp((double) (scratch[ids[i]] - m) / g.temperature);
        out.probs[i] = (float) e;
        z += e;
    }
    for (float & p : out.probs) p = (float) (p / z);
}

float dist::prob_of(int32_t id) const {
    for (size_t i = 0; i < ids.size(); ++i) {
        if (ids[i] == id) return probs[i];
    }
    return 0.0f;
}

int32_t dist::top() const {
    size_t best = 0;
    for (size_t i = 1; i < probs.size(); ++i) {
        if (probs[i] > probs[best] || (probs[i] == probs[best] && ids[i] < ids[best])) best = i;
    }
    return ids[best];
}

float dist::top_prob() const {
    float best = 0.0f;
    for (float p : probs) best = std::max(best, p);
    return best;
}

double uniform01(rng_type & rng) {
    return (double) (rng() >> 11) * (1.0 / 9007199254740992.0);  // 53 random bits
}

int32_t sample(const dist & d, rng_type & rng) {
    const double u = uniform01(rng);
    double cum = 0.0;
    for (size_t i = 0; i < d.ids.size(); ++i) {
        cum += d.probs[i];
        if (u < cum) return d.ids[i];
    }
    return d.ids.back();  // rounding: the mass sums to 1 - epsilon
}

int32_t sample_residual(const dist & p, const draft_dist & q, rng_type & rng) {
    // norm(max(0, p - q)): only p's support can carry residual mass
    double z = 0.0;
    std::vector<double> r(p.ids.size());
    for (size_t i = 0; i < p.ids.size(); ++i) {
        r[i] = std::max(0.0, (double) p.probs[i] - (double) q.prob_of(p.ids[i]));
        z += r[i];
    }
    if (z <= 0.0) {
        return sample(p, rng);  // p == q: the residual is empty only with probability 0
    }
    const double u = uniform01(rng) * z;
    double cum = 0.0;
    for (size_t i = 0; i < p.ids.size(); ++i) {
        cum += r[i];
        if (u < cum) return p.ids[i];
    }
    for (size_t i = p.ids.size(); i-- > 0;) {
        if (r[i] > 0.0) return p.ids[i];
    }
    return p.ids.back();
}

namespace {

uint64_t splitmix64(uint64_t x) {
    x += 0x9e3779b97f4a7c15ULL;
    x = (x ^ (x >> 30)) * 0xbf58476d1ce4e5b9ULL;
    x = (x ^ (x >> 27)) * 0x94d049bb133111ebULL;
    return x ^ (x >> 31);
}

} // namespace

int32_t sample_keyed(const dist & d, uint64_t seed, int64_t pos) {
    // argmax_i log p_i + G_i with G_i ~ Gumbel(0, 1) is a sample of p
    const uint64_t key = splitmix64(seed ^ splitmix64((uint64_t) pos));
    int32_t best = d.ids[0];
    double best_v = -INFINITY;
    for (size_t i = 0; i < d.ids.size(); ++i) {
        if (d.probs[i] <= 0.0f) continue;
        const double u = ((double) (splitmix64(key ^ (uint64_t) d.ids[i]) >> 11) + 0.5) * (1.0 / 9007199254740992.0);
        const double v = std::log((double) d.probs[i]) - std::log(-std::log(u));
        if (v > best_v) {
            best_v = v;
            best = d.ids[i];
        }
    }
    return best;
}

int32_t choose_token(const float * logits, int32_t n_vocab, const mtpl_gen_params & g, const int32_t * context,
                     size_t n_context, sampler_scratch & scratch, rng_type & rng) {
    if (plain_greedy(g)) {
        return argmax(logits, n_vocab);
    }
    penalty_counts(g, context, n_context, nullptr, 0, scratch.counts);
    build_dist(logits, n_vocab, g, scratch.counts, scratch.logits, scratch.p);
    if (is_greedy(g)) {
        return scratch.p.top();
    }
    // the chosen token goes to position n_context
    return g.verify == MTPL_VERIFY_COUPLED ? sample_keyed(scratch.p, g.seed, (int64_t) n_context)
                                           : sample(scratch.p, rng);
}

} // namespace mtpl
