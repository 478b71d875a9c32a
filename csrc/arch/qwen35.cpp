// qwen35: Qwen3.5/3.6 dense (27B and smaller; llama.cpp's src/models/qwen35.cpp).  qwen35moe's hybrid
// trunk with dense SwiGLU feed-forward layers, and one NextN block, the last one, a full-attention
// dense block.  The shared rules are in arch/gdn.cpp.
#include "arch/arch.h"
#include "arch/gdn.h"
#include "arch/registry.h"

namespace mtpl {
namespace {

std::string check_hparams(const gguf_context * g, uint32_t n_block, uint32_t n_nextn) {
    static const gdn_rules rules = {"qwen35", /*moe=*/false, /*mrope=*/true, /*legacy_ssm_in=*/false};
    return check_gdn_hparams(g, rules, n_block, n_nextn);
}

std::string attention(const gguf_context * g) { return gdn_attention(g, "qwen35"); }

// what graph_mtp multiplies by (qwen35.cpp); nextn.embed_tokens, shared_head_head and
// shared_head_norm are optional (tied to token_embd, output, output_norm)
const char * const k_nextn_tensors[] = {"nextn.eh_proj.weight", "nextn.enorm.weight", "nextn.hnorm.weight",
                                        "ffn_up.weight", "attn_norm.weight", nullptr};

} // namespace

const arch_def arch_qwen35 = {
    "qwen35", "Qwen3.5/3.6 dense", "gpt2", check_hparams, k_nextn_tensors, 1, true, attention,
};

} // namespace mtpl
