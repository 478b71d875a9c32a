// hy_v3: Tencent Hy3 (llama.cpp's src/models/hy-v3.cpp).  GQA with q/k norms and full-width RoPE,
// a sigmoid-routed MoE with a shared expert after leading dense blocks, and one or more NextN
// blocks after the trunk, each a full decoder block; several are chained (draft/proposer).
#include "arch/arch.h"
#include "arch/registry.h"
#include "gguf_read.h"

namespace mtpl {
namespace {

std::string check_hparams(const gguf_context * g, uint32_t n_block, uint32_t n_nextn) {
    const std::string a = "hy_v3.";
    const auto need = [&](const char * key, uint32_t & v) { return get_uint(g, a + key, v); };
    for (const char * key : {"embedding_length", "attention.head_count", "attention.head_count_kv", "expert_count",
                             "expert_used_count", "attention.key_length", "attention.value_length",
                             "rope.dimension_count", "expert_feed_forward_length", "expert_shared_feed_forward_length",
                             "feed_forward_length", "context_length", "expert_gating_func"}) {
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
    // both graphs assert head dim K == V == the rotated width
    if (hd.k % 2 != 0 || hd.v != hd.k || hd.rot != hd.k) {
        return "attention key_length, value_length and rope.dimension_count must be equal, even and at most 4096";
    }
    if (std::string bad = check_experts(g, a, n_block); !bad.empty()) {
        return bad;
    }
    uint32_t n_ff_sh = 0;
    if (need("expert_shared_feed_forward_length", n_ff_sh) && n_ff_sh > (1u << 22)) return "expert_shared_feed_forward_length out of range";
    uint32_t n_ff = 0;
    if (need("feed_forward_length", n_ff) && n_ff > (1u << 22)) return "feed_forward_length out of range";
    if (need("context_length", n_ctx) && n_ctx == 0) return "context_length is 0";
    uint32_t gating = 0;
    if (need("expert_gating_func", gating) && gating > 2) return "expert_gating_func must be 0, 1 (softmax) or 2 (sigmoid)";
    (void) n_nextn;
    for (uint32_t b = 0; b < n_block; ++b) {
        if (std::string bad = check_block_ffn(g, b, true, false); !bad.empty()) {
            return bad;
        }
    }
    return "";
}

// embed_tokens and shared_head_head are optional (Hy3 uses the trunk's); shared_head_norm holds
// the block's final norm, and the trunk's output_norm stands in when it is absent
const char * const k_nextn_tensors[] = {"nextn.eh_proj.weight", "nextn.enorm.weight", "nextn.hnorm.weight",
                                        "attn_norm.weight", "attn_q_norm.weight", "attn_k_norm.weight",
                                        "ffn_norm.weight", nullptr};

std::string attention(const gguf_context * g) {
    uint32_t n_head = 0, n_head_kv = 0, k_len = 0;
    get_uint(g, "hy_v3.attention.head_count", n_head);
    if (!get_uint(g, "hy_v3.attention.head_count_kv", n_head_kv)) n_head_kv = n_head;
    if (!get_uint(g, "hy_v3.attention.key_length", k_len)) {
        uint32_t n_embd = 0;
        get_uint(g, "hy_v3.embedding_length", n_embd);
        k_len = n_embd / n_head;
    }
    return "GQA: " + std::to_string(n_head) + " heads, " + std::to_string(n_head_kv) + " KV heads, head dim " +
           std::to_string(k_len) + " (q/k norms)";
}

} // namespace

const arch_def arch_hy_v3 = {
    "hy_v3", "Hy3", "gpt2", check_hparams, k_nextn_tensors, k_max_heads, false, attention,
};

} // namespace mtpl
