// deepseek32: DeepSeek-V3.2 (llama.cpp's src/models/deepseek32.cpp).  deepseek2's MLA blocks (absorbed,
// K-only cache), MoE with shared experts and one NextN block, plus DeepSeek Sparse Attention: every
// trunk layer has its own lightning indexer (NEOX rope, unlike glm-dsa's) choosing the top_k cached cells
// each row attends to.  The NextN block attends densely (graph_mtp has no indexer) but the loader
// requires its indexer tensors as in every block.  docs/dsa.md lists the rules; the MLA ones are shared
// (arch/mla.cpp).
#include "arch/arch.h"
#include "arch/mla.h"
#include "arch/registry.h"

namespace mtpl {
namespace {

std::string check_hparams(const gguf_context * g, uint32_t n_block, uint32_t n_nextn) {
    // the gating function is a required key, passed to build_moe_ffn as is (0 aborts there)
    static const mla_rules rules = {"deepseek32", /*lite=*/false, /*temperature=*/false, /*gating_required=*/true};
    std::string bad = check_mla_hparams(g, n_block, n_nextn, rules,
                                        {"attention.indexer.head_count", "attention.indexer.key_length",
                                         "attention.indexer.top_k"});
    if (bad.empty()) {
        bad = check_dsa_indexer(g, "deepseek32");
    }
    // the trunk layers' indexer tensors are required by the loader (a clean load error when missing).
    // A NextN block present (its eh_proj: the loader's probe) without its indexer fails to load with
    // MTP on or off (load_mtp off skips present tensors only), so the file is refused here
    for (uint32_t il = n_block - n_nextn; bad.empty() && il < n_block; ++il) {
        const std::string p = "blk." + std::to_string(il) + ".";
        if (gguf_find_tensor(g, (p + "nextn.eh_proj.weight").c_str()) < 0) {
            continue;
        }
        for (const char * const * t = k_dsa_indexer_tensors; *t; ++t) {
            if (gguf_find_tensor(g, (p + *t).c_str()) < 0) {
                bad = "NextN block " + std::to_string(il) + " lacks " + p + *t +
                      ": llama.cpp's deepseek32 loader requires the DSA indexer in every block, the NextN block's too";
                break;
            }
        }
    }
    return bad;
}

// deepseek2's NextN block (k_mla_nextn_tensors) plus the indexer, which the loader requires in every
// block (deepseek32.cpp:110-114): without it a file with a NextN block reads as trunk-only, which
// loads (load_mtp off skips the block) instead of failing.
const char * const k_nextn_tensors[] = {"nextn.eh_proj.weight", "nextn.enorm.weight", "nextn.hnorm.weight",
                                        "attn_norm.weight", "attn_q_a.weight", "attn_q_a_norm.weight",
                                        "attn_q_b.weight", "attn_kv_a_mqa.weight", "attn_kv_a_norm.weight",
                                        "attn_k_b.weight", "attn_v_b.weight", "attn_output.weight",
                                        "ffn_norm.weight", "ffn_gate_inp.weight", "ffn_down_exps.weight",
                                        "ffn_gate_shexp.weight", "ffn_up_shexp.weight", "ffn_down_shexp.weight",
                                        "indexer.k_norm.weight", "indexer.k_norm.bias", "indexer.proj.weight",
                                        "indexer.attn_k.weight", "indexer.attn_q_b.weight", nullptr};

std::string attention(const gguf_context * g) { return mla_attention(g, "deepseek32") + ", DSA indexer"; }

} // namespace

const arch_def arch_deepseek32 = {
    "deepseek32", "DeepSeek-V3.2", "gpt2", check_hparams, k_nextn_tensors, 1, false, attention,
};

} // namespace mtpl
