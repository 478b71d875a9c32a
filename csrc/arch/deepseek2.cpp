// deepseek2: GLM-4.7-Flash (llama.cpp's src/models/deepseek2.cpp).  MLA attention in its absorbed
// form (a K-only cache of the latent and the shared rope key), MoE with shared experts, and one
// NextN block, the last one, drafting through graph_mtp.  Section 1 of docs/mla.md lists what the
// loader and the graphs assert on; every rule is one of those, checked before llama.cpp sees the
// file.  The rules glm-dsa and deepseek32 share are in arch/mla.cpp; deepseek2 adds the "lite"
// layer counts, the attention temperature keys and its gating fallback.
#include "arch/arch.h"
#include "arch/mla.h"
#include "arch/registry.h"

namespace mtpl {
namespace {

std::string check_hparams(const gguf_context * g, uint32_t n_block, uint32_t n_nextn) {
    static const mla_rules rules = {"deepseek2", /*lite=*/true, /*temperature=*/true, /*gating_required=*/false};
    return check_mla_hparams(g, n_block, n_nextn, rules, {"vocab_size", "attention.temperature_length"});
}

std::string attention(const gguf_context * g) { return mla_attention(g, "deepseek2"); }

} // namespace

// What graph_mtp asserts (deepseek2.cpp:181-213), so that a block lacking one reads as "trunk-only"
// instead of aborting: k_mla_nextn_tensors.  The expert matrices are left out: gate/up may come fused
// (ffn_gate_up_exps) and the loader requires them either way.  Optional: nextn.embed_tokens (tied to
// token_embd), nextn.shared_head_head (to output) and nextn.shared_head_norm (to output_norm),
// exp_probs_b.bias.
const arch_def arch_deepseek2 = {
    "deepseek2", "GLM-4.7-Flash", "gpt2", check_hparams, k_mla_nextn_tensors, 1, false, attention,
};

} // namespace mtpl
