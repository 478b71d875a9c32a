// cohere2moe: Cohere's MoE Command models (llama.cpp's src/models/cohere2moe.cpp).  Parallel
// attention and FFN blocks under LayerNorm (or RMSNorm), sliding-window layers with RoPE and
// full-attention layers without (the leading dense ones keep it), a scaled output, routed experts
// with an averaged shared expert; one NextN block, a full-attention MoE block.
#include <cmath>

#include "arch/arch.h"
#include "arch/registry.h"
#include "gguf_read.h"

namespace mtpl {
namespace {

// The window layers as llama.cpp's load_swa_pattern(4, dense_first) sets them: an array as given,
// else every layer but each n-th (n: the scalar pattern, 4 by default, 0 all); "" when some layer
// is one (the cache asserts it), else what is wrong.
std::string check_window_layers(const gguf_context * g, const std::string & a, uint32_t n_block, uint32_t n_layer) {
    const std::string key = a + "attention.sliding_window_pattern";
    const int64_t id = gguf_find_key(g, key.c_str());
    if (id >= 0 && gguf_get_kv_type(g, id) == GGUF_TYPE_ARRAY) {
        return check_swa_layers(g, a, n_block);
    }
    uint32_t n_pattern = 4, n_swa = 0;
    if (id >= 0 && !get_uint(g, key, n_pattern)) return "attention.sliding_window_pattern must be an integer or an array";
    if (!uint_or_absent(g, a + "attention.sliding_window") || !get_uint(g, a + "attention.sliding_window", n_swa) ||
        n_swa == 0) {
        return "attention.sliding_window missing or 0";
    }
    for (uint32_t il = 0; il < n_layer; ++il) {
        if (n_pattern == 0 || il % n_pattern != 0) {
            return "";
        }
    }
    return "attention.sliding_window_pattern leaves no trunk layer sliding-window";
}

std::string check_hparams(const gguf_context * g, uint32_t n_block, uint32_t n_nextn) {
    const std::string a = "cohere2moe.";
    const auto need = [&](const char * key, uint32_t & v) { return get_uint(g, a + key, v); };
    for (const char * key : {"embedding_length", "attention.head_count", "attention.head_count_kv", "expert_count",
                             "expert_used_count", "attention.key_length", "attention.value_length",
                             "rope.dimension_count", "feed_forward_length", "context_length",
                             "leading_dense_block_count", "expert_shared_count", "expert_gating_func"}) {
        if (!uint_or_absent(g, a + key)) {
            return a + key + " must be a non-negative integer scalar";
        }
    }
    const uint32_t n_layer = n_block - n_nextn;
    uint32_t n_embd = 0, n_dense = 0, n_ctx = 0;
    std::vector<uint32_t> heads;
    head_dims hd;
    if (std::string bad = read_attention(g, a, n_block, n_embd, heads, hd); !bad.empty()) {
        return bad;
    }
    // both graphs assert head dim K == V == the rotated width
    if (hd.k % 2 != 0 || hd.v != hd.k || hd.rot != hd.k) {
        return "attention key_length, value_length and rope.dimension_count must be equal, even and at most 4096";
    }
    if (std::string bad = check_window_layers(g, a, n_block, n_layer); !bad.empty()) {
        return bad;
    }
    if (std::string bad = check_experts(g, a, n_block); !bad.empty()) {
        return bad;
    }
    if (!need("leading_dense_block_count", n_dense) || n_dense > n_layer) return "leading_dense_block_count missing or beyond the trunk";
    if (need("context_length", n_ctx) && n_ctx == 0) return "context_length is 0";
    uint32_t gating = 0;
    if (need("expert_gating_func", gating) && gating > 2) return "expert_gating_func must be 0, 1 (softmax) or 2 (sigmoid)";
    // the norms' epsilon (RMSNorm when given, else LayerNorm) and the output scale are required
    bool eps = false;
    for (const char * key : {"attention.layer_norm_rms_epsilon", "attention.layer_norm_epsilon"}) {
        const int64_t id = gguf_find_key(g, (a + key).c_str());
        if (id < 0) continue;
        if (gguf_get_kv_type(g, id) != GGUF_TYPE_FLOAT32 || !std::isfinite(gguf_get_val_f32(g, id))) {
            return a + key + " must be a finite float";
        }
        eps = true;
    }
    if (!eps) return "a norm epsilon (attention.layer_norm_rms_epsilon or attention.layer_norm_epsilon) is required";
    for (const char * key : {"logit_scale", "expert_weights_scale", "rope.freq_base_swa"}) {
        const int64_t id = gguf_find_key(g, (a + key).c_str());
        if (id < 0) {
            if (std::string(key) == "logit_scale") return a + key + " is required";
            continue;
        }
        if (gguf_get_kv_type(g, id) != GGUF_TYPE_FLOAT32 || !std::isfinite(gguf_get_val_f32(g, id))) {
            return a + key + " must be a finite float";
        }
    }
    return "";
}

// the NextN graph asserts a router; embed_tokens, shared_head_head and shared_head_norm are optional
const char * const k_nextn_tensors[] = {"nextn.eh_proj.weight", "nextn.enorm.weight", "nextn.hnorm.weight",
                                        "attn_norm.weight", "attn_output.weight", "ffn_gate_inp.weight",
                                        "ffn_down_exps.weight", nullptr};

std::string attention(const gguf_context * g) {
    uint32_t n_head = 0, n_head_kv = 0, n_swa = 0, k_len = 0;
    get_uint(g, "cohere2moe.attention.head_count", n_head);
    if (!get_uint(g, "cohere2moe.attention.head_count_kv", n_head_kv)) n_head_kv = n_head;
    get_uint(g, "cohere2moe.attention.sliding_window", n_swa);
    if (!get_uint(g, "cohere2moe.attention.key_length", k_len)) {
        uint32_t n_embd = 0;
        get_uint(g, "cohere2moe.embedding_length", n_embd);
        k_len = n_embd / n_head;
    }
    return "GQA with sliding-window layers (window " + std::to_string(n_swa) + "): " + std::to_string(n_head) +
           " heads, " + std::to_string(n_head_kv) + " KV heads, head dim " + std::to_string(k_len);
}

} // namespace

const arch_def arch_cohere2moe = {
    "cohere2moe", "Cohere Command MoE", "gpt2", check_hparams, k_nextn_tensors, 1, false, attention,
};

} // namespace mtpl
