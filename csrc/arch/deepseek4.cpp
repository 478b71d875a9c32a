// deepseek4: DeepSeek-V4 (llama.cpp's src/models/deepseek4.cpp).  Four hyper-connection lanes carry the
// residual stream, so the state a NextN block takes is 4 x n_embd wide; attention has one shared K=V
// head, a low-rank query, a grouped low-rank output and sinks over a sliding window, and per layer a
// compressor (ratio 4 with its own lightning indexer, or 128) whose partial windows are per-sequence
// state rolled back by snapshot, as recurrent layers are; MoE with sqrt-softplus scores, the first
// layers routed by a token-id table.  One NextN block, an uncompressed MoE block.  docs/recurrent.md
// lists the rules and where they come from.
#include <cmath>
#include <cstdio>
#include <vector>

#include "arch/arch.h"
#include "arch/registry.h"
#include "gguf_read.h"

namespace mtpl {
namespace {

const std::string a = "deepseek4.";

// a float key llama.cpp requires: "" when present and finite, else what is wrong
std::string need_float(const gguf_context * g, const char * key) {
    const int64_t id = gguf_find_key(g, (a + key).c_str());
    if (id < 0 || gguf_get_kv_type(g, id) != GGUF_TYPE_FLOAT32 || !std::isfinite(gguf_get_val_f32(g, id))) {
        return a + key + " missing or not a finite float";
    }
    return "";
}

// a per-layer float key as get_key_or_arr reads it (a scalar, or at least n_block entries)
bool float_per_layer(const gguf_context * g, const char * key, uint32_t n_block) {
    const int64_t id = gguf_find_key(g, (a + key).c_str());
    if (id < 0) return false;
    if (gguf_get_kv_type(g, id) == GGUF_TYPE_FLOAT32) return true;
    return gguf_get_kv_type(g, id) == GGUF_TYPE_ARRAY && gguf_get_arr_type(g, id) == GGUF_TYPE_FLOAT32 &&
           gguf_get_arr_n(g, id) == n_block;
}

std::string check_hparams(const gguf_context * g, uint32_t n_block, uint32_t n_nextn) {
    const auto need = [&](const char * key, uint32_t & v) { return get_uint(g, a + key, v); };
    const uint32_t n_layer = n_block - n_nextn;
    for (const char * key : {"attention.key_length", "attention.value_length", "rope.dimension_count"}) {
        if (!uint_or_absent(g, a + key)) return a + key + " must be a non-negative integer scalar";
    }
    uint32_t n_embd = 0, n_head = 0, n_head_kv = 0;
    if (!need("embedding_length", n_embd) || n_embd == 0 || n_embd > (1u << 17)) return "embedding_length missing or out of range";
    if (!need("attention.head_count", n_head) || n_head == 0 || n_head > 1024) return "attention.head_count missing or out of [1, 1024]";
    // one K=V head shared by all query heads: the cache holds key_length values per position
    if (!need("attention.head_count_kv", n_head_kv) || n_head_kv != 1) return "attention.head_count_kv must be 1";
    head_dims hd;
    if (std::string bad = read_head_dims(g, a, n_embd, n_head, hd); !bad.empty()) return bad;
    if (hd.k != hd.v) return "attention.key_length and value_length must be equal";
    const uint32_t n_rot = hd.rot;
    if (n_rot % 2 != 0 || n_rot == 0 || n_rot > hd.k) return "rope.dimension_count must be even and in [2, key_length]";
    uint32_t q_lora = 0, o_groups = 0, o_lora = 0, n_swa = 0;
    if (!need("attention.q_lora_rank", q_lora) || q_lora == 0 || q_lora > 65536) return "attention.q_lora_rank missing or out of [1, 65536]";
    if (!need("attention.output_group_count", o_groups) || o_groups == 0 || n_head % o_groups != 0) {
        return "attention.output_group_count must divide attention.head_count";
    }
    if (!need("attention.output_lora_rank", o_lora) || o_lora == 0 || o_lora > 65536) return "attention.output_lora_rank missing or out of [1, 65536]";
    if (!need("attention.sliding_window", n_swa) || n_swa == 0) return "attention.sliding_window missing or 0";
    // the indexer's keys are rotated by a Hadamard matrix of 64 x 64 or more (llama-kv-cache.cpp)
    uint32_t i_head = 0, i_len = 0, i_top = 0;
    if (!need("attention.indexer.head_count", i_head) || i_head == 0 || i_head > 1024) return "attention.indexer.head_count missing or out of [1, 1024]";
    if (!need("attention.indexer.key_length", i_len) || i_len % 64 != 0 || i_len == 0 || i_len > 4096 || i_len < n_rot) {
        return "attention.indexer.key_length must be a multiple of 64, at least rope.dimension_count and at most 4096";
    }
    if (!need("attention.indexer.top_k", i_top) || i_top == 0) return "attention.indexer.top_k missing or 0";
    // compress_ratios: at least one per block, each 0, 4 or 128 (the loader throws otherwise); the NextN
    // block attends uncompressed (graph_mtp has no compressed cache and asserts it)
    const int64_t rid = gguf_find_key(g, (a + "attention.compress_ratios").c_str());
    if (rid < 0 || gguf_get_kv_type(g, rid) != GGUF_TYPE_ARRAY ||
        (gguf_get_arr_type(g, rid) != GGUF_TYPE_UINT32 && gguf_get_arr_type(g, rid) != GGUF_TYPE_INT32) ||
        gguf_get_arr_n(g, rid) < n_block || gguf_get_arr_n(g, rid) > 512) {
        return "attention.compress_ratios must be an array of at least block_count (and at most 512) integers";
    }
    const auto * ratios = static_cast<const uint32_t *>(gguf_get_arr_data(g, rid));
    for (uint32_t il = 0; il < n_block; ++il) {
        if (ratios[il] != 0 && ratios[il] != 4 && ratios[il] != 128) return "attention.compress_ratios entries must be 0, 4 or 128";
    }
    if (n_nextn > 0 && ratios[n_layer] != 0) return "attention.compress_ratios: the NextN block's entry must be 0";
    // the hyper-connections: the graph asserts 4 lanes
    uint32_t hc = 0, sinkhorn = 0, n_hash = 0;
    if (!need("hyper_connection.count", hc) || hc != 4) return "hyper_connection.count must be 4";
    // ggml_dsv4_hc_comb asserts at least one iteration
    if (!need("hyper_connection.sinkhorn_iterations", sinkhorn) || sinkhorn == 0 || sinkhorn > 1000) {
        return "hyper_connection.sinkhorn_iterations missing or out of [1, 1000]";
    }
    for (const char * key : {"hyper_connection.epsilon", "attention.compress_rope_freq_base", "expert_weights_scale"}) {
        if (std::string bad = need_float(g, key); !bad.empty()) return bad;
    }
    // token-id routed layers lead the trunk; graph_mtp asserts the NextN block is not one
    if (!need("hash_layer_count", n_hash) || n_hash > n_layer) return "hash_layer_count missing or beyond the trunk";
    if (std::string bad = check_experts(g, a, n_block); !bad.empty()) return bad;
    uint32_t n_shared = 0, gating = 0;
    if (!need("expert_shared_count", n_shared) || n_shared == 0 || n_shared > 64) return "expert_shared_count missing or out of [1, 64]";
    if (!need("expert_gating_func", gating) || gating != 4) return "expert_gating_func must be 4 (sqrt-softplus)";
    const int64_t nid = gguf_find_key(g, (a + "expert_weights_norm").c_str());
    if (nid < 0 || gguf_get_kv_type(g, nid) != GGUF_TYPE_BOOL) return "expert_weights_norm missing or not a bool";
    if (!float_per_layer(g, "swiglu_clamp_exp", n_block)) return "swiglu_clamp_exp missing (a float or one per block)";
    if (gguf_find_key(g, (a + "swiglu_clamp_shexp").c_str()) >= 0 && !float_per_layer(g, "swiglu_clamp_shexp", n_block)) {
        return "swiglu_clamp_shexp must be a float or one per block";
    }
    if (std::string bad = need_float(g, "attention.layer_norm_rms_epsilon"); !bad.empty()) return bad;
    return "";
}

// A declared NextN block without its tensors: llama.cpp's loader then counts it as a trunk layer and
// fails on its missing tensors, plain decoding too.  The token-id routing tables of the hash layers
// (I32 [expert_used_count, n_vocab]): the MoE takes their entries as expert indices, and one at or
// past expert_count aborts the process in the expert product.
std::string check_data(const gguf_context * g, const std::string & path) {
    uint32_t n_hash = 0, n_expert = 0, n_block = 0, n_nextn = 0;
    get_uint(g, a + "hash_layer_count", n_hash);
    get_uint(g, a + "expert_count", n_expert);
    get_uint(g, a + "block_count", n_block);
    if (get_uint(g, a + "nextn_predict_layers", n_nextn) && n_nextn > 0 &&
        gguf_find_tensor(g, ("blk." + std::to_string(n_block - n_nextn) + ".nextn.eh_proj.weight").c_str()) < 0) {
        return "nextn_predict_layers declares a NextN block whose tensors are missing: llama.cpp's deepseek4 loader "
               "then reads it as a trunk layer and cannot load the file; remove the key (the converter's trunk file "
               "has none)";
    }
    for (uint32_t il = 0; il < n_hash; ++il) {
        const std::string name = "blk." + std::to_string(il) + ".ffn_gate_tid2eid.weight";
        const int64_t id = gguf_find_tensor(g, name.c_str());
        if (id < 0) continue;  // an MTP-only file; a trunk without it fails in llama.cpp's loader, clearly
        if (gguf_get_tensor_type(g, id) != GGML_TYPE_I32) return name + " must be I32";
        std::vector<int32_t> ids(gguf_get_tensor_size(g, id) / sizeof(int32_t));
        FILE * f = std::fopen(path.c_str(), "rb");
        const bool read = f && std::fseek(f, (long) (gguf_get_data_offset(g) + gguf_get_tensor_offset(g, id)), SEEK_SET) == 0 &&
                          std::fread(ids.data(), sizeof(int32_t), ids.size(), f) == ids.size();
        if (f) std::fclose(f);
        if (!read) return "cannot read " + name;
        for (int32_t e : ids) {
            if (e < 0 || (uint32_t) e >= n_expert) return name + " holds an expert index outside [0, expert_count)";
        }
    }
    return "";
}

// graph_mtp asserts the hand-over norms and eh_proj; the loader requires the block's attention,
// hyper-connections and MoE; embed_tokens, shared_head_head and shared_head_norm are optional
const char * const k_nextn_tensors[] = {"nextn.eh_proj.weight", "nextn.enorm.weight", "nextn.hnorm.weight",
                                        "attn_norm.weight",     "attn_kv.weight",     "hc_attn_fn.weight",
                                        "hc_ffn_fn.weight",     "ffn_gate_inp.weight", "ffn_down_exps.weight",
                                        "ffn_down_shexp.weight", nullptr};

std::string attention(const gguf_context * g) {
    uint32_t n_embd = 0, n_head = 0, n_swa = 0, i_top = 0;
    get_uint(g, a + "embedding_length", n_embd);
    get_uint(g, a + "attention.head_count", n_head);
    head_dims hd;
    read_head_dims(g, a, n_embd, n_head, hd);
    get_uint(g, a + "attention.sliding_window", n_swa);
    get_uint(g, a + "attention.indexer.top_k", i_top);
    return "one shared K=V head of dim " + std::to_string(hd.k) + " (RoPE " + std::to_string(hd.rot) + ") for " +
           std::to_string(n_head) + " query heads, window " + std::to_string(n_swa) +
           ", layers compressed 4x (indexer top-" + std::to_string(i_top) + ") or 128x; 4 hyper-connection lanes";
}

} // namespace

const arch_def arch_deepseek4 = {
    "deepseek4", "DeepSeek-V4", "gpt2", check_hparams, k_nextn_tensors, 1, true, attention, check_data,
};

} // namespace mtpl
