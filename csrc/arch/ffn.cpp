// A block's FFN as the graphs that pick it by the router find it (hy_v3, mimo2): the loader makes
// every FFN weight optional, so a missing one is a null weight at the first decode.
#include "arch/arch.h"

namespace mtpl {
namespace {

bool has(const gguf_context * g, uint32_t b, const char * t) {
    return gguf_find_tensor(g, ("blk." + std::to_string(b) + "." + t).c_str()) >= 0;
}

} // namespace

std::string check_block_ffn(const gguf_context * g, uint32_t b, bool shared_expert, bool dense_only) {
    if (!has(g, b, "attn_norm.weight")) {
        return "";  // not in this file (a trunk-only or MTP-only half)
    }
    const std::string blk = "block " + std::to_string(b);
    if (has(g, b, "ffn_gate_inp.weight") && !dense_only) {
        const bool gate_up = has(g, b, "ffn_gate_up_exps.weight") ||
                             (has(g, b, "ffn_gate_exps.weight") && has(g, b, "ffn_up_exps.weight"));
        if (!gate_up || !has(g, b, "ffn_down_exps.weight")) return blk + " has a router but not all of its experts";
        for (const char * t : {"ffn_gate_shexp.weight", "ffn_up_shexp.weight", "ffn_down_shexp.weight"}) {
            if (shared_expert && !has(g, b, t)) return blk + " lacks its shared expert (" + t + ")";
        }
        return "";
    }
    for (const char * t : {"ffn_gate.weight", "ffn_up.weight", "ffn_down.weight"}) {
        if (!has(g, b, t)) {
            return blk + (dense_only ? " (a NextN block) needs a dense FFN (" : " has neither a router nor a dense FFN (") +
                   t + ")";
        }
    }
    return "";
}

} // namespace mtpl
