// Engine-wide helpers: the thread-local last error, upstream's last logged error, clocks.
#pragma once

#include <chrono>
#include <cstdint>
#include <string>

extern "C" {
#include "mtpllama.h"
}

namespace mtpl {

// Record msg as this thread's last error and return status (api.cpp).
int32_t fail(int32_t status, const std::string & msg);
void clear_error();
// The last ERROR line llama.cpp/ggml logged on this thread (used to explain failures).
std::string upstream_error();
void clear_upstream_error();
// Install our log hook and initialise the llama.cpp backend once per process.
void ensure_backend();
// Rows up to which every backend computes a batch's rows as lone rows (0: off); api.cpp.
void set_batch_invariant(int max_rows);
int batch_invariant_rows();
// While it lives, batches of up to rows rows are computed as lone rows too (when on is true and
// the mode is on at all): a group's shared passes in its exact mode.
struct invariant_rows_scope {
    int bound;
    bool raised;
    invariant_rows_scope(bool on, int rows) : bound(batch_invariant_rows()), raised(on && bound > 0 && rows > bound) {
        if (raised) {
            set_batch_invariant(rows);
        }
    }
    ~invariant_rows_scope() {
        if (raised) {
            set_batch_invariant(bound);
        }
    }
};

using clock_type = std::chrono::steady_clock;

inline double seconds_since(clock_type::time_point t0) {
    return std::chrono::duration<double>(clock_type::now() - t0).count();
}

} // namespace mtpl
