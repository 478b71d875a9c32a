// The rules the gated delta-net hybrids share (see gdn.h).  Each is something llama.cpp's loader or
// graph asserts on, divides by or loops over (docs/recurrent.md section 1).
#include "arch/gdn.h"

#include <cmath>
#include <vector>

#include "gguf_read.h"

namespace mtpl {
namespace {

// the trunk's layer kinds as the loader derives them: recurrent_layers when present, else every
// full_attention_interval-th layer attends; "" when fine, else what is wrong
std::string layer_kinds(const gguf_context * g, const std::string & a, uint32_t n_block, uint32_t n_nextn,
                        std::vector<bool> & recurrent) {
    const uint32_t n_layer = n_block - n_nextn;
    recurrent.assign(n_block, false);
    const int64_t id = gguf_find_key(g, (a + "attention.recurrent_layers").c_str());
    if (id >= 0) {
        if (gguf_get_kv_type(g, id) != GGUF_TYPE_ARRAY || gguf_get_arr_type(g, id) != GGUF_TYPE_BOOL ||
            gguf_get_arr_n(g, id) != n_block) {
            return a + "attention.recurrent_layers must be a bool array with one entry per block";
        }
        const auto * v = static_cast<const int8_t *>(gguf_get_arr_data(g, id));
        for (uint32_t i = 0; i < n_block; ++i) {
            recurrent[i] = v[i] != 0;
            if (recurrent[i] && i >= n_layer) {  // the NextN graph is one full-attention block
                return a + "attention.recurrent_layers marks NextN block " + std::to_string(i) + " recurrent";
            }
        }
    } else {
        uint32_t interval = 4;
        if (!uint_or_absent(g, a + "full_attention_interval")) {
            return a + "full_attention_interval must be a non-negative integer scalar";
        }
        get_uint(g, a + "full_attention_interval", interval);
        if (interval == 0 || interval > n_block + 1) {  // the loader takes layer indices modulo it
            return a + "full_attention_interval must be in [1, block_count]";
        }
        for (uint32_t i = 0; i < n_layer; ++i) {
            recurrent[i] = (i + 1) % interval != 0;
        }
    }
    uint32_t n_recr = 0;
    for (uint32_t i = 0; i < n_layer; ++i) {
        n_recr += recurrent[i] ? 1 : 0;
    }
    if (n_recr == 0 || n_recr == n_layer) {
        return "the trunk must mix gated delta-net and full-attention layers (" + std::to_string(n_recr) + " of " +
               std::to_string(n_layer) + " are recurrent)";
    }
    return "";
}

} // namespace

std::string check_gdn_hparams(const gguf_context * g, const gdn_rules & rules, uint32_t n_block, uint32_t n_nextn) {
    const std::string a = std::string(rules.arch) + ".";
    const bool moe = rules.moe;
    const auto need = [&](const char * key, uint32_t & v) { return get_uint(g, a + key, v); };
    for (const char * key : {"embedding_length", "attention.head_count", "attention.head_count_kv", "attention.key_length",
                             "attention.value_length", "rope.dimension_count", "feed_forward_length", "context_length",
                             "expert_count", "expert_used_count", "expert_feed_forward_length",
                             "expert_shared_feed_forward_length", "ssm.conv_kernel", "ssm.inner_size", "ssm.state_size",
                             "ssm.time_step_rank", "ssm.group_count"}) {
        if (!uint_or_absent(g, a + key)) {  // per-layer arrays are legal upstream, but no converter writes them here
            return a + key + " must be a non-negative integer scalar";
        }
    }
    uint32_t n_embd = 0, n_head = 0, n_head_kv = 0, k_len = 0, v_len = 0, n_ff = 0, n_ctx = 0;
    if (!need("embedding_length", n_embd) || n_embd == 0 || n_embd > (1u << 17)) return "embedding_length missing or out of range";
    if (!need("attention.head_count", n_head) || n_head == 0 || n_head > 1024) return "attention.head_count missing or out of range";
    if (!need("attention.head_count_kv", n_head_kv)) n_head_kv = n_head;
    if (n_head_kv == 0 || n_head % n_head_kv != 0) return "attention.head_count_kv must divide attention.head_count";
    if (!need("attention.key_length", k_len)) {
        if (n_embd % n_head != 0) return "embedding_length is not a multiple of attention.head_count";
        k_len = n_embd / n_head;
    }
    if (!need("attention.value_length", v_len)) v_len = k_len;
    if (k_len == 0 || k_len > 4096 || k_len != v_len) return "attention key/value lengths must be equal and in [1, 4096]";
    uint32_t n_rot = k_len;
    need("rope.dimension_count", n_rot);
    if (n_rot == 0 || n_rot > k_len || n_rot % 2 != 0) return "rope.dimension_count must be even and in [2, key_length]";
    if (rules.mrope) {  // interleaved M-RoPE: four sections, the first three not all empty, at most n_rot / 2 pairs in all
        const int64_t id = gguf_find_key(g, (a + "rope.dimension_sections").c_str());
        if (id < 0 || gguf_get_kv_type(g, id) != GGUF_TYPE_ARRAY || gguf_get_arr_n(g, id) != 4 ||
            (gguf_get_arr_type(g, id) != GGUF_TYPE_INT32 && gguf_get_arr_type(g, id) != GGUF_TYPE_UINT32)) {
            return a + "rope.dimension_sections must be an array of 4 integers";
        }
        const auto * s = static_cast<const int32_t *>(gguf_get_arr_data(g, id));
        int64_t sum = 0;
        for (int i = 0; i < 4; ++i) {
            if (s[i] < 0) return a + "rope.dimension_sections must not be negative";
            sum += s[i];
        }
        if (s[0] + (int64_t) s[1] + s[2] == 0 || 2 * sum > n_rot) {
            return a + "rope.dimension_sections must cover between 1 and rope.dimension_count / 2 pairs";
        }
    }
    if (!need("feed_forward_length", n_ff) && !moe) return "feed_forward_length missing";
    if (n_ff > (1u << 22) || (!moe && n_ff == 0)) return "feed_forward_length out of range";
    if (moe) {
        uint32_t n_expert = 0, n_used = 0, n_ff_exp = 0, n_ff_sh = 0;
        if (!need("expert_count", n_expert) || n_expert == 0 || n_expert > 512) return "expert_count missing or out of [1, 512]";
        if (!need("expert_used_count", n_used) || n_used == 0 || n_used > n_expert) return "expert_used_count must be in [1, expert_count]";
        if (!need("expert_feed_forward_length", n_ff_exp)) n_ff_exp = n_ff / n_used;
        if (n_ff_exp == 0 || n_ff_exp > (1u << 20)) return "expert_feed_forward_length missing or out of range";
        if (!need("expert_shared_feed_forward_length", n_ff_sh)) n_ff_sh = n_ff;
        if (n_ff_sh > (1u << 22)) return "expert_shared_feed_forward_length out of range";
    }
    if (need("context_length", n_ctx) && n_ctx == 0) return "context_length is 0";

    // the gated delta net: value heads of the key head size, grouped over the key heads
    uint32_t d_conv = 0, d_inner = 0, d_state = 0, n_v_heads = 0, n_k_heads = 0;
    if (!need("ssm.conv_kernel", d_conv) || d_conv < 2 || d_conv > 64) return "ssm.conv_kernel missing or out of [2, 64]";
    if (!need("ssm.state_size", d_state) || d_state == 0 || d_state > 1024) return "ssm.state_size missing or out of [1, 1024]";
    if (!need("ssm.group_count", n_k_heads) || n_k_heads == 0 || n_k_heads > 1024) return "ssm.group_count missing or out of [1, 1024]";
    if (!need("ssm.time_step_rank", n_v_heads) || n_v_heads == 0 || n_v_heads % n_k_heads != 0) {
        return "ssm.time_step_rank (value heads) must be a positive multiple of ssm.group_count (key heads)";
    }
    if (!need("ssm.inner_size", d_inner) || (uint64_t) d_inner != (uint64_t) d_state * n_v_heads) {
        return "ssm.inner_size must be ssm.state_size * ssm.time_step_rank (value heads of the key head size)";
    }
    std::vector<bool> recurrent;
    if (std::string bad = layer_kinds(g, a, n_block, n_nextn, recurrent); !bad.empty()) {
        return bad;
    }
    // the projections a delta-net layer's graph multiplies by but the loader leaves optional
    if (gguf_find_tensor(g, "blk.0.attn_norm.weight") >= 0) {  // not an MTP-only file
        for (uint32_t i = 0; i < n_block - n_nextn; ++i) {
            const std::string p = "blk." + std::to_string(i) + ".";
            if (recurrent[i] && !f32_or_absent(g, p + "ssm_conv1d.weight")) {
                return p + "ssm_conv1d.weight must be f32 (ggml's convolution reads it so)";
            }
            if (!recurrent[i] || (rules.legacy_ssm_in && gguf_find_tensor(g, (p + "ssm_in.weight").c_str()) >= 0)) {
                continue;
            }
            for (const char * t : {"attn_qkv.weight", "attn_gate.weight"}) {
                if (gguf_find_tensor(g, (p + t).c_str()) < 0) {
                    return "delta-net layer " + std::to_string(i) + " lacks " + p + t;
                }
            }
        }
    }
    return "";
}

std::string gdn_attention(const gguf_context * g, const char * arch) {
    const std::string a = std::string(arch) + ".";
    uint32_t n_block = 0, n_nextn = 0, n_head = 0, n_head_kv = 0, k_len = 0, d_state = 0, n_v = 0, n_k = 0;
    get_uint(g, a + "block_count", n_block);
    get_uint(g, a + "nextn_predict_layers", n_nextn);
    get_uint(g, a + "attention.head_count", n_head);
    get_uint(g, a + "attention.head_count_kv", n_head_kv);
    get_uint(g, a + "attention.key_length", k_len);
    get_uint(g, a + "ssm.state_size", d_state);
    get_uint(g, a + "ssm.time_step_rank", n_v);
    get_uint(g, a + "ssm.group_count", n_k);
    std::vector<bool> recurrent;
    layer_kinds(g, a, n_block, n_nextn, recurrent);
    uint32_t n_recr = 0;
    for (uint32_t i = 0; i + n_nextn < n_block; ++i) {
        n_recr += recurrent[i] ? 1 : 0;
    }
    return "hybrid: " + std::to_string(n_recr) + " gated delta-net layers (" + std::to_string(n_v) + " value heads, " +
           std::to_string(n_k) + " key heads, state " + std::to_string(d_state) + "x" + std::to_string(d_state) +
           ") and " + std::to_string(n_block - n_nextn - n_recr) + " gated attention layers (" + std::to_string(n_head) +
           " heads, " + std::to_string(n_head_kv) + " KV heads, head dim " + std::to_string(k_len) + ")";
}

} // namespace mtpl
