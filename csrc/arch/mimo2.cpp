// mimo2: Xiaomi MiMo-V2-Flash / V2.5 (llama.cpp's src/models/mimo2.cpp).  GQA whose KV head count
// differs between sliding-window and full layers, K and V head dims of their own, partial RoPE,
// attention sinks, a value scale, a sigmoid-routed MoE; three NextN blocks (sliding-window
// attention, fused QKV, dense FFN) that draft as a chain (draft/proposer).
#include <cmath>

#include "arch/arch.h"
#include "arch/registry.h"
#include "gguf_read.h"

namespace mtpl {
namespace {

std::string check_hparams(const gguf_context * g, uint32_t n_block, uint32_t n_nextn) {
    const std::string a = "mimo2.";
    const auto need = [&](const char * key, uint32_t & v) { return get_uint(g, a + key, v); };
    for (const char * key : {"embedding_length", "expert_count", "expert_used_count", "attention.key_length",
                             "attention.value_length", "rope.dimension_count", "feed_forward_length",
                             "context_length", "attention.sliding_window"}) {
        if (!uint_or_absent(g, a + key)) {
            return a + key + " must be a non-negative integer scalar";
        }
    }
    uint32_t n_embd = 0, n_ctx = 0, n_ff = 0;
    std::vector<uint32_t> heads;
    head_dims hd;
    if (std::string bad = read_attention(g, a, n_block, n_embd, heads, hd); !bad.empty()) {
        return bad;
    }
    if (hd.rot == 0 || hd.rot > hd.k || hd.rot % 2 != 0) return "rope.dimension_count must be even and in [2, key_length]";
    if (std::string bad = check_swa_layers(g, a, n_block); !bad.empty()) {
        return bad;
    }
    if (std::string bad = check_experts(g, a, n_block); !bad.empty()) {
        return bad;
    }
    if (!need("feed_forward_length", n_ff) || n_ff == 0 || n_ff > (1u << 22)) return "feed_forward_length missing or out of range";
    if (need("context_length", n_ctx) && n_ctx == 0) return "context_length is 0";
    if (const int64_t id = gguf_find_key(g, (a + "attention.value_scale").c_str()); id >= 0) {
        if (gguf_get_kv_type(g, id) != GGUF_TYPE_FLOAT32 || !std::isfinite(gguf_get_val_f32(g, id))) {
            return "attention.value_scale must be a finite float";
        }
    }
    for (uint32_t b = 0; b < n_block; ++b) {  // the NextN blocks' graph asserts a dense FFN
        if (std::string bad = check_block_ffn(g, b, false, b + n_nextn >= n_block); !bad.empty()) {
            return bad;
        }
    }
    return "";
}

// the NextN graph asserts a fused QKV and a dense FFN; embed_tokens, shared_head_head and the head
// norm (shared_head_norm or layer_output_norm, else the trunk's output_norm) are optional
const char * const k_nextn_tensors[] = {"nextn.eh_proj.weight", "nextn.enorm.weight", "nextn.hnorm.weight",
                                        "attn_norm.weight", "attn_qkv.weight", "attn_output.weight",
                                        "ffn_norm.weight", "ffn_gate.weight", "ffn_up.weight", "ffn_down.weight",
                                        nullptr};

std::string attention(const gguf_context * g) {
    uint32_t n_block = 0, n_nextn = 0, n_embd = 0, n_swa = 0, k_len = 0, v_len = 0;
    get_uint(g, "mimo2.block_count", n_block);
    get_uint(g, "mimo2.nextn_predict_layers", n_nextn);
    get_uint(g, "mimo2.embedding_length", n_embd);
    get_uint(g, "mimo2.attention.sliding_window", n_swa);
    std::vector<uint32_t> heads;
    per_layer(g, "mimo2.attention.head_count", n_block, heads);
    if (!get_uint(g, "mimo2.attention.key_length", k_len)) k_len = n_embd / heads[0];
    if (!get_uint(g, "mimo2.attention.value_length", v_len)) v_len = k_len;
    return "GQA with sliding-window layers (window " + std::to_string(n_swa) + "): " + std::to_string(heads[0]) +
           " heads, K/V head dims " + std::to_string(k_len) + "/" + std::to_string(v_len);
}

} // namespace

const arch_def arch_mimo2 = {
    "mimo2", "MiMo-V2-Flash/V2.5", "gpt2", check_hparams, k_nextn_tensors, k_max_heads, false, attention,
};

} // namespace mtpl
