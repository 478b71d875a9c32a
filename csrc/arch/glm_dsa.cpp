// glm-dsa: GLM-5 / 5.1 / 5.2 (llama.cpp's src/models/glm-dsa.cpp).  deepseek2's MLA blocks (absorbed,
// K-only cache), MoE with shared experts and one NextN block, plus DeepSeek Sparse Attention in the
// trunk: a lightning indexer scores the cached cells and each row attends to its top_k only.  GLM-5.2
// has "full" indexer layers and "shared" ones that reuse the previous full layer's choice.  The NextN
// block attends densely (graph_mtp has no indexer) and has no indexer tensors.  docs/dsa.md lists the
// rules and where they come from; the MLA ones are shared (arch/mla.cpp).
#include "arch/arch.h"
#include "arch/mla.h"
#include "arch/registry.h"
#include "gguf_read.h"

#include <vector>

namespace mtpl {
namespace {

// GLM-5.2's pattern (glm-dsa.cpp:6-27), used without attention.indexer.types when the training context
// is 1048576 or more: layers 0 and 1 full, then every fourth from 2 up to 74; the rest shared
bool glm52_default_full(uint32_t il) {
    return il < 2 || (il < 78 && (il - 2) % 4 == 0);
}

// Which trunk layers have a full indexer, as load_arch_hparams resolves it (glm-dsa.cpp:59-66): "" and
// full[0..n_layer) filled, or what is wrong with attention.indexer.types.
std::string indexer_types(const gguf_context * g, uint32_t n_layer, std::vector<bool> & full) {
    const std::string key = "glm-dsa.attention.indexer.types";
    uint32_t n_ctx_train = 0;
    get_uint(g, "glm-dsa.context_length", n_ctx_train);
    full.assign(n_layer, false);
    for (uint32_t il = 0; il < n_layer; ++il) {
        full[il] = n_ctx_train < 1048576 || glm52_default_full(il);  // GLM-5, 5.1: all full
    }
    const int64_t id = gguf_find_key(g, key.c_str());
    if (id < 0) {
        return "";
    }
    if (gguf_get_kv_type(g, id) != GGUF_TYPE_ARRAY) {
        // get_key_or_arr reads a scalar as a uint32 (strictly typed) repeated over the layers
        if (gguf_get_kv_type(g, id) != GGUF_TYPE_UINT32) return key + " must be an array of bools (or one uint32)";
        const bool v = gguf_get_val_u32(g, id) != 0;
        full.assign(n_layer, v);
        return "";
    }
    const gguf_type t = gguf_get_arr_type(g, id);
    if (t != GGUF_TYPE_BOOL && t != GGUF_TYPE_UINT32 && t != GGUF_TYPE_INT32) return key + " must be an array of bools (or of 32-bit integers)";
    // one entry per trunk layer (n_layer(), the NextN block excluded), or the loader throws
    if (gguf_get_arr_n(g, id) != n_layer) return key + " must have one entry per trunk layer (" + std::to_string(n_layer) + ")";
    const void * data = gguf_get_arr_data(g, id);
    for (uint32_t il = 0; il < n_layer; ++il) {
        full[il] = t == GGUF_TYPE_BOOL ? ((const int8_t *) data)[il] != 0 : ((const uint32_t *) data)[il] != 0;
    }
    return "";
}

std::string check_hparams(const gguf_context * g, uint32_t n_block, uint32_t n_nextn) {
    static const mla_rules rules = {"glm-dsa", /*lite=*/false, /*temperature=*/false, /*gating_required=*/false};
    std::string bad = check_mla_hparams(g, n_block, n_nextn, rules,
                                        {"attention.indexer.head_count", "attention.indexer.key_length",
                                         "attention.indexer.top_k"});
    if (bad.empty()) {
        bad = check_dsa_indexer(g, "glm-dsa");
    }
    if (!bad.empty()) {
        return bad;
    }
    const uint32_t n_layer = n_block - n_nextn;
    std::vector<bool> full;
    bad = indexer_types(g, n_layer, full);
    if (!bad.empty()) {
        return bad;
    }
    // a shared layer reuses the top-k of the last full one before it: layer 0 must be full, or the
    // trunk graph asserts (glm-dsa.cpp:364)
    if (n_layer > 0 && !full[0]) return "attention.indexer.types makes trunk layer 0 shared; the first indexer layer must be full";
    // the indexer tensors are optional to the loader (NOT_REQUIRED) but a full layer's graph uses them
    // unchecked: without one it dereferences null.  An MTP-only file builds no trunk graph.
    if (gguf_find_tensor(g, "blk.0.attn_norm.weight") >= 0) {
        for (uint32_t il = 0; il < n_layer; ++il) {
            if (!full[il]) {
                continue;
            }
            for (const char * const * t = k_dsa_indexer_tensors; *t; ++t) {
                const std::string name = "blk." + std::to_string(il) + "." + *t;
                if (gguf_find_tensor(g, name.c_str()) < 0) {
                    return "trunk layer " + std::to_string(il) + " has a full indexer but no " + name;
                }
            }
        }
    }
    return "";
}

std::string attention(const gguf_context * g) { return mla_attention(g, "glm-dsa") + ", DSA indexer"; }

} // namespace

// The NextN block is deepseek2's (the loader requires the same tensors, graph_mtp asserts eh_proj,
// enorm, hnorm and ffn_gate_inp); it holds no indexer (optional, and unused by graph_mtp).
const arch_def arch_glm_dsa = {
    "glm-dsa", "GLM-5/5.1/5.2", "gpt2", check_hparams, k_mla_nextn_tensors, 1, false, attention,
};

} // namespace mtpl
