// The debug event log (mtpl_session_debug): every row evaluated in either context and every
// cache rollback, so that a reference implementation can replay the caches (tests only).
#pragma once

#include <cstdint>
#include <vector>

extern "C" {
#include "mtpllama.h"
}

namespace mtpl {

struct trace {
    bool on = false;
    int32_t call = 0;          // graph evaluations so far (rows of one batch share the index)
    int32_t n_state = 0;
    int32_t n_vocab = 0;
    std::vector<mtpl_debug_event> events;
    std::vector<float> floats;

    void start(bool enable);
    // a graph evaluation finished; its rows follow
    void next_call() { call += on ? 1 : 0; }
    // h_in, logits, h_out: n_state, n_vocab and n_state floats, or null
    void row(int32_t kind, int32_t pos, int32_t token, const float * h_in, const float * logits, const float * h_out);
    void forget(int32_t kind, int32_t pos);
    void reset();
};

} // namespace mtpl
