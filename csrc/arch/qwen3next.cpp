// qwen3next: Qwen3-Next (80B-A3B; llama.cpp's src/models/qwen3next.cpp).  The gated delta-net
// hybrid qwen35moe grew from: plain NeoX rope instead of interleaved M-RoPE, beta and alpha in one
// projection (ssm_ba), value heads grouped by key head, and optionally the older fused ssm_in; one
// NextN block, the last one, a full-attention MoE block.  The shared rules are in arch/gdn.cpp;
// its rollback needs patches/0017.
#include "arch/arch.h"
#include "arch/gdn.h"
#include "arch/registry.h"

namespace mtpl {
namespace {

std::string check_hparams(const gguf_context * g, uint32_t n_block, uint32_t n_nextn) {
    static const gdn_rules rules = {"qwen3next", /*moe=*/true, /*mrope=*/false, /*legacy_ssm_in=*/true};
    return check_gdn_hparams(g, rules, n_block, n_nextn);
}

std::string attention(const gguf_context * g) { return gdn_attention(g, "qwen3next"); }

// what graph_mtp asserts on (qwen3next.cpp), and the attention norm; nextn.embed_tokens,
// shared_head_head and shared_head_norm are optional (tied to token_embd, output, output_norm)
const char * const k_nextn_tensors[] = {"nextn.eh_proj.weight", "nextn.enorm.weight", "nextn.hnorm.weight",
                                        "ffn_gate_inp.weight", "attn_norm.weight", nullptr};

} // namespace

const arch_def arch_qwen3next = {
    "qwen3next", "Qwen3-Next", "gpt2", check_hparams, k_nextn_tensors, 1, true, attention,
};

} // namespace mtpl
