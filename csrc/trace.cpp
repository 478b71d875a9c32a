// The debug event log: one branch per row when off.
#include "trace.h"

namespace mtpl {
namespace {

int64_t copy_floats(std::vector<float> & arena, const float * src, int32_t n) {
    if (!src) {
        return -1;
    }
    const int64_t off = (int64_t) arena.size();
    arena.insert(arena.end(), src, src + n);
    return off;
}

} // namespace

void trace::start(bool enable) {
    on = enable;
    call = 0;
    events.clear();
    floats.clear();
}

void trace::row(int32_t kind, int32_t pos, int32_t token, const float * h_in, const float * logits,
                const float * h_out) {
    if (!on) {
        return;
    }
    mtpl_debug_event e{kind, pos, token, call, -1, -1, -1};
    e.h_in = copy_floats(floats, h_in, n_state);
    e.logits = copy_floats(floats, logits, n_vocab);
    e.h_out = copy_floats(floats, h_out, n_state);
    events.push_back(e);
}

void trace::forget(int32_t kind, int32_t pos) {
    if (on) {
        events.push_back({kind, pos, -1, call, -1, -1, -1});
    }
}

void trace::reset() {
    if (on) {
        events.push_back({MTPL_DEBUG_RESET, 0, -1, call, -1, -1, -1});
    }
}

} // namespace mtpl
