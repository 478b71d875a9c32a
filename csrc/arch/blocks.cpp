// Rules several architectures' blocks share (declared in arch/arch.h).
#include "arch/arch.h"
#include "gguf_read.h"

namespace mtpl {
namespace {

bool has(const gguf_context * g, uint32_t b, const char * t) {
    return gguf_find_tensor(g, ("blk." + std::to_string(b) + "." + t).c_str()) >= 0;
}

} // namespace

// The graphs that pick a block's FFN by its router (hy_v3, mimo2, step35) build it from whatever the
// loader found (it makes every FFN weight optional): a missing one is a null weight at the first decode.
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

std::string read_head_dims(const gguf_context * g, const std::string & a, uint32_t n_embd, uint32_t n_head,
                           head_dims & out) {
    if (!get_uint(g, a + "attention.key_length", out.k)) {
        if (n_head == 0 || n_embd % n_head != 0) return "embedding_length is not a multiple of attention.head_count";
        out.k = n_embd / n_head;
    }
    if (!get_uint(g, a + "attention.value_length", out.v)) out.v = out.k;
    if (!get_uint(g, a + "rope.dimension_count", out.rot)) out.rot = out.k;
    if (out.k == 0 || out.k > 4096 || out.v == 0 || out.v > 4096) return "attention key and value lengths must be in [1, 4096]";
    return "";
}

std::string check_experts(const gguf_context * g, const std::string & a, uint32_t n_block) {
    uint32_t n_expert = 0, n_used = 0;
    if (!get_uint(g, a + "expert_count", n_expert) || n_expert == 0 || n_expert > 512) return "expert_count missing or out of [1, 512]";
    if (!get_uint(g, a + "expert_used_count", n_used) || n_used == 0 || n_used > n_expert) {
        return "expert_used_count must be in [1, expert_count]";
    }
    std::vector<uint32_t> ff_exp;
    if (!per_layer(g, a + "expert_feed_forward_length", n_block, ff_exp)) {
        return "expert_feed_forward_length missing (an integer or one per block)";
    }
    for (uint32_t f : ff_exp) {
        if (f == 0 || f > (1u << 20)) return "expert_feed_forward_length out of [1, 2^20]";
    }
    return "";
}

std::string check_swa_layers(const gguf_context * g, const std::string & a, uint32_t n_block) {
    uint32_t n_swa = 0;
    if (!uint_or_absent(g, a + "attention.sliding_window") || !get_uint(g, a + "attention.sliding_window", n_swa) ||
        n_swa == 0) {
        return "attention.sliding_window missing or 0";
    }
    const int64_t id = gguf_find_key(g, (a + "attention.sliding_window_pattern").c_str());
    if (id < 0 || gguf_get_kv_type(g, id) != GGUF_TYPE_ARRAY) return "attention.sliding_window_pattern missing (one entry per block)";
    const gguf_type t = gguf_get_arr_type(g, id);
    const size_t n = gguf_get_arr_n(g, id);
    if ((t != GGUF_TYPE_BOOL && t != GGUF_TYPE_INT32 && t != GGUF_TYPE_UINT32) || n > 512) {
        return "attention.sliding_window_pattern must be an array of at most 512 booleans or integers";
    }
    bool any = false;
    for (size_t i = 0; i < n && i < n_block; ++i) {
        any = any || (t == GGUF_TYPE_BOOL ? static_cast<const int8_t *>(gguf_get_arr_data(g, id))[i] != 0
                                          : static_cast<const int32_t *>(gguf_get_arr_data(g, id))[i] != 0);
    }
    return any ? "" : "attention.sliding_window_pattern marks no block as sliding-window";
}

std::string check_layer_heads(const gguf_context * g, const std::string & a, uint32_t n_block,
                              std::vector<uint32_t> & heads) {
    std::vector<uint32_t> kv_heads;
    if (!per_layer(g, a + "attention.head_count", n_block, heads)) return "attention.head_count must be an integer or one per block";
    if (gguf_find_key(g, (a + "attention.head_count_kv").c_str()) < 0) {
        kv_heads = heads;
    } else if (!per_layer(g, a + "attention.head_count_kv", n_block, kv_heads)) {
        return "attention.head_count_kv must be an integer or one per block";
    }
    for (uint32_t b = 0; b < n_block; ++b) {
        if (heads[b] == 0 || heads[b] > 1024) return "attention.head_count out of [1, 1024] at block " + std::to_string(b);
        if (kv_heads[b] == 0 || heads[b] % kv_heads[b] != 0) {
            return "attention.head_count_kv must divide attention.head_count (block " + std::to_string(b) + ")";
        }
    }
    return "";
}

std::string read_attention(const gguf_context * g, const std::string & a, uint32_t n_block, uint32_t & n_embd,
                           std::vector<uint32_t> & heads, head_dims & hd) {
    if (!get_uint(g, a + "embedding_length", n_embd) || n_embd == 0 || n_embd > (1u << 17)) {
        return "embedding_length missing or out of range";
    }
    if (std::string bad = check_layer_heads(g, a, n_block, heads); !bad.empty()) {
        return bad;
    }
    return read_head_dims(g, a, n_embd, heads[0], hd);
}

} // namespace mtpl
