// step35: StepFun Step-3.5 (llama.cpp's src/models/step35.cpp).  Full-attention and sliding-window
// layers with head counts of their own, q/k norms, a head-wise attention gate, RoPE over half the
// head on full-attention layers and all of it on window layers, a sigmoid-routed MoE with a shared
// expert; NextN blocks (full decoder blocks with their own head) that draft as a chain.
#include <cmath>

#include "arch/arch.h"
#include "arch/registry.h"
#include "gguf_read.h"

namespace mtpl {
namespace {

bool finite_floats(const gguf_context * g, const std::string & key) {
    const int64_t id = gguf_find_key(g, key.c_str());
    if (id < 0) return true;
    if (gguf_get_kv_type(g, id) == GGUF_TYPE_FLOAT32) return std::isfinite(gguf_get_val_f32(g, id));
    if (gguf_get_kv_type(g, id) != GGUF_TYPE_ARRAY || gguf_get_arr_type(g, id) != GGUF_TYPE_FLOAT32) return false;
    const auto * v = static_cast<const float *>(gguf_get_arr_data(g, id));
    for (size_t i = 0; i < gguf_get_arr_n(g, id); ++i) {
        if (!std::isfinite(v[i])) return false;
    }
    return true;
}

std::string check_hparams(const gguf_context * g, uint32_t n_block, uint32_t /*n_nextn*/) {
    const std::string a = "step35.";
    const auto need = [&](const char * key, uint32_t & v) { return get_uint(g, a + key, v); };
    for (const char * key : {"embedding_length", "expert_count", "expert_used_count", "attention.key_length",
                             "attention.value_length", "rope.dimension_count", "feed_forward_length",
                             "expert_shared_feed_forward_length", "context_length", "expert_gating_func"}) {
        if (!uint_or_absent(g, a + key)) {
            return a + key + " must be a non-negative integer scalar";
        }
    }
    uint32_t n_embd = 0, n_ctx = 0;
    std::vector<uint32_t> heads;
    head_dims hd;
    if (std::string bad = read_attention(g, a, n_block, n_embd, heads, hd); !bad.empty()) {
        return bad;
    }
    // window layers rotate rope.dimension_count dims, full-attention layers half of them: both even
    if (hd.rot == 0 || hd.rot > hd.k || hd.rot % 4 != 0) return "rope.dimension_count must be a multiple of 4 in [4, key_length]";
    if (std::string bad = check_swa_layers(g, a, n_block); !bad.empty()) {
        return bad;
    }
    if (std::string bad = check_experts(g, a, n_block); !bad.empty()) {
        return bad;
    }
    if (need("context_length", n_ctx) && n_ctx == 0) return "context_length is 0";
    uint32_t gating = 0;
    if (need("expert_gating_func", gating) && gating > 2) return "expert_gating_func must be 0, 1 (softmax) or 2 (sigmoid)";
    for (const char * key : {"expert_weights_scale", "swiglu_clamp_exp", "swiglu_clamp_shexp", "rope.freq_base_swa"}) {
        if (!finite_floats(g, a + key)) return a + key + " must be finite floats";
    }
    for (uint32_t b = 0; b < n_block; ++b) {  // a MoE block always adds its shared expert
        if (std::string bad = check_block_ffn(g, b, true, false); !bad.empty()) {
            return bad;
        }
    }
    return "";
}

// embed_tokens, shared_head_head and shared_head_norm are optional (the trunk's stand in)
const char * const k_nextn_tensors[] = {"nextn.eh_proj.weight", "nextn.enorm.weight", "nextn.hnorm.weight",
                                        "attn_norm.weight", "attn_output.weight", "ffn_norm.weight", nullptr};

std::string attention(const gguf_context * g) {
    uint32_t n_block = 0, n_embd = 0, n_swa = 0, k_len = 0;
    get_uint(g, "step35.block_count", n_block);
    get_uint(g, "step35.embedding_length", n_embd);
    get_uint(g, "step35.attention.sliding_window", n_swa);
    std::vector<uint32_t> heads;
    per_layer(g, "step35.attention.head_count", n_block, heads);
    if (!get_uint(g, "step35.attention.key_length", k_len)) k_len = n_embd / heads[0];
    return "GQA with sliding-window layers (window " + std::to_string(n_swa) + "): " + std::to_string(heads[0]) +
           " heads of " + std::to_string(k_len) + ", q/k norms";
}

} // namespace

const arch_def arch_step35 = {
    "step35", "Step-3.5", "gpt2", check_hparams, k_nextn_tensors, k_max_heads, false, attention,
};

} // namespace mtpl
