// bailingmoe3: Ling/Ring 3 (llama.cpp's src/models/bailingmoe3.cpp).  A hybrid trunk of KDA layers
// (Kimi delta attention: a gated delta net with a gate per channel and a recurrent state per
// sequence; head_count_kv 0) and MLA attention layers with a sigmoid gate per head (head_count_kv
// 1), a dense lead, then routed experts with a shared one; one NextN block, the last one, an MLA
// MoE block (patches/0018).  Rollback restores llama.cpp's state snapshots (docs/recurrent.md).
#include <cmath>
#include <vector>

#include "arch/arch.h"
#include "arch/registry.h"
#include "gguf_read.h"

namespace mtpl {
namespace {

bool f32_key(const gguf_context * g, const std::string & key, float & out) {
    const int64_t id = gguf_find_key(g, key.c_str());
    if (id < 0 || gguf_get_kv_type(g, id) != GGUF_TYPE_FLOAT32) return false;
    out = gguf_get_val_f32(g, id);
    return std::isfinite(out);
}

std::string check_hparams(const gguf_context * g, uint32_t n_block, uint32_t n_nextn) {
    const std::string a = "bailingmoe3.";
    const auto need = [&](const char * key, uint32_t & v) { return get_uint(g, a + key, v); };
    for (const char * key : {"embedding_length", "attention.head_count", "feed_forward_length", "context_length",
                             "expert_count", "expert_used_count", "expert_gating_func", "expert_feed_forward_length",
                             "expert_shared_feed_forward_length", "expert_shared_count", "leading_dense_block_count",
                             "ssm.conv_kernel", "kda.head_dim", "attention.key_length", "attention.value_length",
                             "attention.key_length_mla", "attention.value_length_mla", "attention.kv_lora_rank",
                             "attention.q_lora_rank", "rope.dimension_count"}) {
        if (!uint_or_absent(g, a + key)) {
            return a + key + " must be a non-negative integer scalar";
        }
    }
    const uint32_t n_layer = n_block - n_nextn;
    uint32_t n_embd = 0, n_head = 0, n_ff = 0, n_ctx = 0;
    if (!need("embedding_length", n_embd) || n_embd == 0 || n_embd > (1u << 17)) return "embedding_length missing or out of range";
    if (!need("attention.head_count", n_head) || n_head == 0 || n_head > 1024) return "attention.head_count missing or out of range";
    if (need("context_length", n_ctx) && n_ctx == 0) return "context_length is 0";
    if (need("feed_forward_length", n_ff) && n_ff > (1u << 22)) return "feed_forward_length out of range";
    float eps = 0.0f, lower = 0.0f;
    if (!f32_key(g, a + "attention.layer_norm_rms_epsilon", eps)) return "attention.layer_norm_rms_epsilon missing or not finite";
    if (!f32_key(g, a + "kda.gate_lower_bound", lower) || lower >= 0.0f) {
        return "kda.gate_lower_bound must be a negative float (llama.cpp asserts it)";
    }
    {   // llama.cpp asserts a safe gate (the default when absent)
        const int64_t id = gguf_find_key(g, (a + "kda.safe_gate").c_str());
        if (id >= 0 && (gguf_get_kv_type(g, id) != GGUF_TYPE_BOOL || !gguf_get_val_bool(g, id))) {
            return "kda.safe_gate must be true (llama.cpp asserts it)";
        }
    }
    if (gguf_find_key(g, (a + "expert_weights_scale").c_str()) >= 0 && !f32_key(g, a + "expert_weights_scale", eps)) {
        return "expert_weights_scale not finite";
    }

    // layer kinds: KDA where head_count_kv is 0, MLA (MQA over the latent) where it is 1
    std::vector<uint32_t> kv(n_block, 0);
    {
        const int64_t id = gguf_find_key(g, (a + "attention.head_count_kv").c_str());
        if (id < 0) return "attention.head_count_kv missing (0 marks a KDA layer, 1 an MLA layer)";
        if (gguf_get_kv_type(g, id) == GGUF_TYPE_ARRAY) {
            const gguf_type t = gguf_get_arr_type(g, id);
            if (gguf_get_arr_n(g, id) != n_block || (t != GGUF_TYPE_UINT32 && t != GGUF_TYPE_INT32)) {
                return "attention.head_count_kv must be an integer or one per block";
            }
            const auto * v = static_cast<const int32_t *>(gguf_get_arr_data(g, id));
            for (uint32_t i = 0; i < n_block; ++i) kv[i] = (uint32_t) v[i];
        } else {
            uint32_t v = 0;
            if (!get_uint(g, a + "attention.head_count_kv", v)) return "attention.head_count_kv must be an integer or one per block";
            kv.assign(n_block, v);
        }
    }
    uint32_t n_kda = 0;
    for (uint32_t i = 0; i < n_block; ++i) {
        if (kv[i] > 1 || (i >= n_layer && kv[i] != 1)) {
            return "attention.head_count_kv of block " + std::to_string(i) + " must be 0 (KDA) or 1 (MLA; the NextN block)";
        }
        if (i < n_layer && kv[i] == 0) {
            ++n_kda;
            for (const char * t : {"ssm_conv1d_q.weight", "ssm_conv1d_k.weight", "ssm_conv1d_v.weight"}) {
                const std::string name = "blk." + std::to_string(i) + "." + t;
                if (!f32_or_absent(g, name)) return name + " must be f32 (ggml's convolution reads it so)";
            }
        }
    }
    if (n_kda == 0 || n_kda == n_layer) {
        return "the trunk must mix KDA and MLA layers (" + std::to_string(n_kda) + " of " + std::to_string(n_layer) + " are KDA)";
    }

    // MLA: the cache row [latent | rope key], a nope part in every query head
    uint32_t kv_lora = 0, q_lora = 0, k_mla = 0, v_mla = 0, n_rot = 0, k_len = 0, v_len = 0;
    if (!need("attention.kv_lora_rank", kv_lora) || kv_lora == 0 || kv_lora > (1u << 16)) return "attention.kv_lora_rank missing or out of range";
    if (need("attention.q_lora_rank", q_lora) && q_lora > (1u << 16)) return "attention.q_lora_rank out of range";
    if (!need("attention.key_length_mla", k_mla) || !need("attention.value_length_mla", v_mla) || k_mla == 0 ||
        v_mla == 0 || k_mla > 4096 || v_mla > 4096) {
        return "attention.key_length_mla and value_length_mla must be in [1, 4096]";
    }
    if (!need("rope.dimension_count", n_rot) || n_rot == 0 || n_rot % 2 != 0 || n_rot >= k_mla) {
        return "rope.dimension_count must be even and below attention.key_length_mla";
    }
    if (!need("attention.key_length", k_len) || k_len != kv_lora + n_rot) {
        return "attention.key_length must be kv_lora_rank + rope.dimension_count (the cache row)";
    }
    if (need("attention.value_length", v_len) && v_len != kv_lora) return "attention.value_length must equal kv_lora_rank";
    {
        const int64_t id = gguf_find_key(g, (a + "rope.dimension_sections").c_str());
        if (id >= 0) {
            if (gguf_get_kv_type(g, id) != GGUF_TYPE_ARRAY || gguf_get_arr_n(g, id) != 4 ||
                (gguf_get_arr_type(g, id) != GGUF_TYPE_INT32 && gguf_get_arr_type(g, id) != GGUF_TYPE_UINT32)) {
                return a + "rope.dimension_sections must be an array of 4 integers";
            }
            const auto * s = static_cast<const int32_t *>(gguf_get_arr_data(g, id));
            int64_t sum = 0;
            for (int i = 0; i < 4; ++i) {
                if (s[i] < 0) return a + "rope.dimension_sections must not be negative";
                sum += s[i];
            }
            if (sum > 0 && (s[0] + (int64_t) s[1] + s[2] == 0 || 2 * sum > n_rot)) {
                return a + "rope.dimension_sections must cover between 1 and rope.dimension_count / 2 pairs";
            }
        }
    }

    // KDA: n_head heads of kda.head_dim
    uint32_t d_conv = 0, head_dim = 0;
    if (!need("ssm.conv_kernel", d_conv) || d_conv < 2 || d_conv > 64) return "ssm.conv_kernel missing or out of [2, 64]";
    if (!need("kda.head_dim", head_dim) || head_dim == 0 || head_dim > 1024) return "kda.head_dim missing or out of [1, 1024]";

    // experts
    uint32_t n_expert = 0, n_used = 0, gating = 0, n_ff_exp = 0, n_shared = 0, n_dense = 0;
    if (!need("expert_count", n_expert) || n_expert == 0 || n_expert > 1024) return "expert_count missing or out of [1, 1024]";
    if (!need("expert_used_count", n_used) || n_used == 0 || n_used > n_expert) return "expert_used_count must be in [1, expert_count]";
    if (!need("expert_gating_func", gating) || gating < 1 || gating > 2) return "expert_gating_func must be 1 (softmax) or 2 (sigmoid)";
    if (!need("expert_feed_forward_length", n_ff_exp) || n_ff_exp == 0 || n_ff_exp > (1u << 20)) {
        return "expert_feed_forward_length missing or out of range";
    }
    if (!need("expert_shared_count", n_shared) || n_shared > 64) return "expert_shared_count missing or out of range";
    if (!need("leading_dense_block_count", n_dense) || n_dense > n_layer) return "leading_dense_block_count missing or beyond the trunk";
    if (n_dense > 0 && n_ff == 0) return "feed_forward_length missing (the dense lead's width)";
    return "";
}

std::string attention(const gguf_context * g) {
    uint32_t n_block = 0, n_nextn = 0, n_head = 0, head_dim = 0, kv_lora = 0;
    const std::string a = "bailingmoe3.";
    get_uint(g, a + "block_count", n_block);
    get_uint(g, a + "nextn_predict_layers", n_nextn);
    get_uint(g, a + "attention.head_count", n_head);
    get_uint(g, a + "kda.head_dim", head_dim);
    get_uint(g, a + "attention.kv_lora_rank", kv_lora);
    uint32_t n_kda = 0;
    const int64_t id = gguf_find_key(g, (a + "attention.head_count_kv").c_str());
    if (id >= 0 && gguf_get_kv_type(g, id) == GGUF_TYPE_ARRAY) {
        const auto * v = static_cast<const int32_t *>(gguf_get_arr_data(g, id));
        for (uint32_t i = 0; i + n_nextn < n_block && i < gguf_get_arr_n(g, id); ++i) n_kda += v[i] == 0;
    }
    return "hybrid: " + std::to_string(n_kda) + " KDA layers (" + std::to_string(n_head) + " heads of " +
           std::to_string(head_dim) + ") and " + std::to_string(n_block - n_nextn - n_kda) + " MLA layers (kv_lora_rank " +
           std::to_string(kv_lora) + ")";
}

// what graph_mtp asserts on (bailingmoe3.cpp) and the router; its head norm is layer_output_norm
const char * const k_nextn_tensors[] = {"nextn.eh_proj.weight", "nextn.enorm.weight", "nextn.hnorm.weight",
                                        "layer_output_norm.weight", "ffn_gate_inp.weight", "attn_norm.weight",
                                        nullptr};

} // namespace

const arch_def arch_bailingmoe3 = {
    "bailingmoe3", "Ling/Ring 3", "gpt2", check_hparams, k_nextn_tensors, 1, true, attention,
};

} // namespace mtpl
