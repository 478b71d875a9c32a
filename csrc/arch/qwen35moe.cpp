// qwen35moe: Qwen3.5/3.6 MoE (35B-A3B and larger; llama.cpp's src/models/qwen35moe.cpp).  A hybrid
// trunk (gated delta-net layers with a recurrent state, every fourth layer gated full attention),
// routed experts with a gated shared expert, and one NextN block, the last one, a full-attention
// MoE block.  The shared rules are in arch/gdn.cpp.
#include "arch/arch.h"
#include "arch/gdn.h"
#include "arch/registry.h"

namespace mtpl {
namespace {

std::string check_hparams(const gguf_context * g, uint32_t n_block, uint32_t n_nextn) {
    static const gdn_rules rules = {"qwen35moe", /*moe=*/true, /*mrope=*/true, /*legacy_ssm_in=*/false};
    return check_gdn_hparams(g, rules, n_block, n_nextn);
}

std::string attention(const gguf_context * g) { return gdn_attention(g, "qwen35moe"); }

// what graph_mtp asserts on (qwen35moe.cpp), and the attention norm; nextn.embed_tokens,
// shared_head_head and shared_head_norm are optional (tied to token_embd, output, output_norm)
const char * const k_nextn_tensors[] = {"nextn.eh_proj.weight", "nextn.enorm.weight", "nextn.hnorm.weight",
                                        "ffn_gate_inp.weight", "attn_norm.weight", nullptr};

} // namespace

const arch_def arch_qwen35moe = {
    "qwen35moe", "Qwen3.5/3.6 MoE", "gpt2", check_hparams, k_nextn_tensors, 1, true, attention,
};

} // namespace mtpl
