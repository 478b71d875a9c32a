// Verification: which drafted tokens the trunk keeps, as a pure function of its logit rows.
#pragma once

#include "sampler.h"

namespace mtpl {

struct verify_result {
    int32_t n_accepted;   // drafts kept (a prefix)
    int32_t next;         // the recovered token at the first rejected position, or the bonus token
};

// whether v is a value of enum mtpl_verify
bool known_verify_mode(int32_t v);

// How a verify mode wants drafts drawn: the parameters of the head's distribution (the trunk's
// transforms, at the draft temperature), whether it may be mixed toward its arg-max, and a draw
// from q for position pos.
mtpl_gen_params draft_params(const mtpl_gen_params & g);
bool draft_mix_allowed(const mtpl_gen_params & g);
int32_t draw_draft(const draft_dist & q, const mtpl_gen_params & g, int64_t pos, rng_type & rng);

// sum_x min(p(x), q_m(x)) for q_m = mixes[j] [x = top] + (1 - mixes[j]) base(x), j < n: rejection
// sampling's acceptance chance with each mixture (dense: n_vocab zeros, left zeroed)
void mix_overlaps(const dist & p, const dist & base, int32_t top, const float * mixes, int32_t n,
                  std::vector<float> & dense, double * out);

// tokens[0, n_before) is the context through the pending token and tokens[n_before, n_before + n_drafts)
// the drafts; rows[i] holds the trunk's logits after tokens[0, n_before + i) (n_drafts + 1 rows); q[i] the
// distribution drafts[i] was drawn from (read by rejection sampling only).  reached_p, if not null,
// receives in its first entries the trunk distribution of each draft row verification reached
// (rejection sampling: rows 0 .. min(n_accepted, n_drafts - 1)); the rest is left as it was.
verify_result verify(const float * const * rows, int32_t n_vocab, const int32_t * tokens, size_t n_before,
                     int32_t n_drafts, const draft_dist * q, const mtpl_gen_params & g, sampler_scratch & scratch,
                     rng_type & rng, std::vector<dist> * reached_p = nullptr);

} // namespace mtpl
