// glm4moe: GLM-4.5, 4.5-Air, 4.6 and 4.7 (llama.cpp's src/models/glm4-moe.cpp).  One NextN block,
// the last one, a full MoE decoder block between eh_proj and the shared output head.
#include "arch/arch.h"
#include "arch/registry.h"
#include "gguf_read.h"

namespace mtpl {
namespace {

std::string check_hparams(const gguf_context * g, uint32_t n_block, uint32_t /*n_nextn*/) {
    const std::string a = "glm4moe.";
    const auto need = [&](const char * key, uint32_t & v) { return get_uint(g, a + key, v); };
    for (const char * key : {"embedding_length", "attention.head_count", "attention.head_count_kv", "expert_count",
                             "expert_used_count", "expert_shared_count", "leading_dense_block_count",
                             "attention.key_length", "attention.value_length", "rope.dimension_count",
                             "expert_feed_forward_length", "feed_forward_length", "context_length",
                             "expert_gating_func"}) {
        if (!uint_or_absent(g, a + key)) {
            return a + key + " must be a non-negative integer scalar";
        }
    }
    uint32_t n_embd = 0, n_head = 0, n_head_kv = 0, n_expert = 0, n_used = 0, n_shared = 0, n_dense = 0, n_ctx = 0;
    if (!need("embedding_length", n_embd) || n_embd == 0 || n_embd > (1u << 17)) return "embedding_length missing or out of range";
    if (!need("attention.head_count", n_head) || n_head == 0 || n_head > 1024) return "attention.head_count missing or out of range";
    if (!need("attention.head_count_kv", n_head_kv)) n_head_kv = n_head;
    if (n_head_kv == 0 || n_head % n_head_kv != 0) return "attention.head_count_kv must divide attention.head_count";
    uint32_t k_len = 0, v_len = 0;
    if (!need("attention.key_length", k_len)) {
        if (n_embd % n_head != 0) return "embedding_length is not a multiple of attention.head_count";
        k_len = n_embd / n_head;
    }
    if (!need("attention.value_length", v_len)) v_len = k_len;
    if (k_len == 0 || k_len > 4096 || k_len != v_len) return "attention key/value lengths must be equal and in [1, 4096]";
    uint32_t n_rot = k_len;
    need("rope.dimension_count", n_rot);
    if (n_rot == 0 || n_rot > k_len || n_rot % 2 != 0) return "rope.dimension_count must be even and in [2, key_length]";
    if (!need("expert_count", n_expert) || n_expert == 0 || n_expert > 512) return "expert_count missing or out of [1, 512]";
    if (!need("expert_used_count", n_used) || n_used == 0 || n_used > n_expert) return "expert_used_count must be in [1, expert_count]";
    if (!need("expert_shared_count", n_shared) || n_shared > 64) return "expert_shared_count missing or out of range";
    if (need("leading_dense_block_count", n_dense) && n_dense > n_block) return "leading_dense_block_count exceeds block_count";
    uint32_t n_ff_exp = 0, n_ff = 0;
    if (need("expert_feed_forward_length", n_ff_exp) && (n_ff_exp == 0 || n_ff_exp > (1u << 20))) return "expert_feed_forward_length out of range";
    if (!need("feed_forward_length", n_ff) || n_ff == 0 || n_ff > (1u << 22)) return "feed_forward_length missing or out of range";
    if (need("context_length", n_ctx) && n_ctx == 0) return "context_length is 0";
    uint32_t gating = 0;
    if (need("expert_gating_func", gating) && gating > 2) return "expert_gating_func must be 0, 1 (softmax) or 2 (sigmoid)";
    return "";
}

// embed_tokens and shared_head_head are optional (GLM-4.6 ties them to token_embd and output)
const char * const k_nextn_tensors[] = {"nextn.eh_proj.weight", "nextn.enorm.weight", "nextn.hnorm.weight",
                                        "ffn_gate_inp.weight", "attn_norm.weight", nullptr};

} // namespace

static std::string attention(const gguf_context * g) {
    uint32_t n_head = 0, n_head_kv = 0, k_len = 0, n_rot = 0;
    get_uint(g, "glm4moe.attention.head_count", n_head);
    get_uint(g, "glm4moe.attention.head_count_kv", n_head_kv);
    get_uint(g, "glm4moe.attention.key_length", k_len);
    get_uint(g, "glm4moe.rope.dimension_count", n_rot);
    return "GQA: " + std::to_string(n_head) + " heads, " + std::to_string(n_head_kv) + " KV heads, head dim " +
           std::to_string(k_len) + " (rope " + std::to_string(n_rot) + ")";
}

const arch_def arch_glm4moe = {
    "glm4moe", "GLM-4.5/4.6/4.7", "gpt2", check_hparams, k_nextn_tensors, 1, false, attention,
};

} // namespace mtpl
