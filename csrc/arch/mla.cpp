// The rules the MLA architectures share (see mla.h).  deepseek2's were written first (arch/deepseek2.cpp,
// docs/mla.md section 1); glm-dsa and deepseek32 load and build the same MLA blocks (docs/dsa.md).
#include "arch/mla.h"

#include <cmath>

#include "gguf_read.h"

namespace mtpl {

bool float_ok(const gguf_context * g, const std::string & key, float & out) {
    const int64_t id = gguf_find_key(g, key.c_str());
    if (id < 0) {
        return true;
    }
    if (gguf_get_kv_type(g, id) != GGUF_TYPE_FLOAT32) {
        return false;
    }
    out = gguf_get_val_f32(g, id);
    return std::isfinite(out);
}

namespace {

// the vocabulary size as deepseek2's loader takes it for its layer-count rules (vocab_size, else the token list)
uint32_t vocab_size(const gguf_context * g, const std::string & a) {
    uint32_t n = 0;
    if (get_uint(g, a + "vocab_size", n)) {
        return n;
    }
    const int64_t id = gguf_find_key(g, "tokenizer.ggml.tokens");
    return id >= 0 && gguf_get_kv_type(g, id) == GGUF_TYPE_ARRAY ? (uint32_t) gguf_get_arr_n(g, id) : 0;
}

} // namespace

std::string check_mla_hparams(const gguf_context * g, uint32_t n_block, uint32_t n_nextn, const mla_rules & rules,
                              std::initializer_list<const char *> extra_uint_keys) {
    const std::string a = std::string(rules.arch) + ".";
    const auto need = [&](const char * key, uint32_t & v) { return get_uint(g, a + key, v); };
    // the shared keys first, then the architecture's own
    static const char * const k_common_uint_keys[] = {
        "embedding_length", "attention.head_count", "attention.head_count_kv", "expert_count", "expert_used_count",
        "expert_shared_count", "leading_dense_block_count", "attention.key_length", "attention.value_length",
        "attention.key_length_mla", "attention.value_length_mla", "attention.q_lora_rank", "attention.kv_lora_rank",
        "rope.dimension_count", "expert_feed_forward_length", "feed_forward_length", "context_length",
        "expert_gating_func", "expert_group_count", "expert_group_used_count"};
    for (const char * key : k_common_uint_keys) {
        if (!uint_or_absent(g, a + key)) {  // per-layer arrays are legal upstream, but no converter writes them here
            return a + key + " must be a non-negative integer scalar";
        }
    }
    for (const char * key : extra_uint_keys) {
        if (!uint_or_absent(g, a + key)) {
            return a + key + " must be a non-negative integer scalar";
        }
    }
    const uint32_t n_layer = n_block - n_nextn;  // n_layer(): the trunk, which every layer-count rule keys on

    // a "lite" count makes deepseek2's loader skip q_lora_rank, and graph_mtp then asserts n_lora_q > 0
    bool lite = false;
    if (rules.lite) {
        const uint32_t n_vocab = vocab_size(g, a);
        lite = n_layer == 26 || n_layer == 27 || (n_layer == 48 && n_vocab == 128256);
        if (lite && n_nextn > 0) return "a NextN block on a 'lite' trunk (26 or 27 layers, or 48 with 128256 tokens), whose q_lora_rank llama.cpp skips";
    }

    uint32_t n_embd = 0, n_head = 0, n_head_kv = 0, n_ctx = 0;
    if (!need("embedding_length", n_embd) || n_embd == 0 || n_embd > (1u << 17)) return "embedding_length missing or out of range";
    if (!need("attention.head_count", n_head) || n_head == 0 || n_head > 1024) return "attention.head_count missing or out of range";
    // the absorbed MLA graph is MQA over one latent head: the converter writes 1 and the K cache is sized by it
    if (!need("attention.head_count_kv", n_head_kv) || n_head_kv != 1) return "attention.head_count_kv must be 1 (MLA converts to one latent KV head)";
    if (need("context_length", n_ctx) && n_ctx == 0) return "context_length is 0";

    // MLA: both lengths set (is_mla(); the legacy kv_b path never runs graph_mtp), ranks and the rope split
    uint32_t q_lora = 0, kv_lora = 0, k_mla = 0, v_mla = 0, n_rot = 0, k_len = 0, v_len = 0;
    if (!lite && (!need("attention.q_lora_rank", q_lora) || q_lora == 0 || q_lora > (1u << 16))) return "attention.q_lora_rank missing or out of range";
    if (!need("attention.kv_lora_rank", kv_lora) || kv_lora == 0 || kv_lora > (1u << 16)) return "attention.kv_lora_rank missing or out of range";
    if (!need("attention.key_length_mla", k_mla) || !need("attention.value_length_mla", v_mla) || k_mla == 0 || v_mla == 0 ||
        k_mla > 4096 || v_mla > 4096) {
        return "attention.key_length_mla and value_length_mla must both be in [1, 4096] (a non-MLA file: reconvert it)";
    }
    // without the key n_rot defaults to key_length, leaving no nope part (the loader asserts qk_nope >= 1)
    if (!need("rope.dimension_count", n_rot) || n_rot == 0 || n_rot % 2 != 0 || n_rot >= k_mla) return "rope.dimension_count must be even, at least 2 and below attention.key_length_mla";
    // the cache row is key_length*head_count_kv wide and must hold [latent | rope key]; V is its first kv_lora columns
    if (!need("attention.key_length", k_len) || k_len != kv_lora + n_rot) return "attention.key_length must be kv_lora_rank + rope.dimension_count";
    if (!need("attention.value_length", v_len) || v_len != kv_lora) return "attention.value_length must equal attention.kv_lora_rank";

    // layers: a dense lead, then MoE; the NextN block (il = n_layer()) must be MoE, graph_mtp asserts it
    uint32_t n_dense = 0, n_ff = 0;
    need("leading_dense_block_count", n_dense);
    if (n_dense > (n_nextn > 0 ? n_layer : n_block)) return n_nextn > 0 ? "leading_dense_block_count makes the NextN block dense; llama.cpp's MTP graph needs a MoE block" : "leading_dense_block_count exceeds block_count";
    if (n_dense > 0 && (!need("feed_forward_length", n_ff) || n_ff == 0 || n_ff > (1u << 22))) return "feed_forward_length missing or out of range (the dense lead uses it)";
    const bool has_moe = n_dense < n_block;

    // experts (llama-model.cpp's common asserts, and the MoE layers' throws)
    uint32_t n_expert = 0, n_used = 0, n_shared = 0, n_ff_exp = 0, n_groups = 0, n_groups_used = 0;
    need("expert_count", n_expert);
    need("expert_used_count", n_used);
    if (n_expert > 1024) return "expert_count exceeds 1024";
    if (has_moe && n_expert == 0) return "expert_count missing or 0 (the MoE layers need experts)";
    if ((n_expert == 0) != (n_used == 0) || n_used > n_expert) return "expert_used_count must be in [1, expert_count]";
    // graph_mtp asserts all three shared-expert tensors, and without them a trunk layer would add silu(y)
    if (!need("expert_shared_count", n_shared) || (has_moe && n_shared == 0) || n_shared > 64) return "expert_shared_count missing or out of [1, 64]";
    if (!need("expert_feed_forward_length", n_ff_exp) || (has_moe && n_ff_exp == 0) || n_ff_exp > (1u << 20)) return "expert_feed_forward_length missing or out of range";
    need("expert_group_count", n_groups);
    need("expert_group_used_count", n_groups_used);
    if (n_groups > 0 && n_groups >= n_expert) return "expert_group_count must be below expert_count";
    if (n_groups > 1) {
        if (n_expert % n_groups != 0) return "expert_count must be a multiple of expert_group_count";
        // (a group is scored by its top 2 experts; below expert_count and dividing it, a group holds 2)
        if (n_groups_used == 0 || n_groups_used >= n_groups) return "expert_group_used_count must be in [1, expert_group_count - 1]";
        // more experts than the kept groups hold would pick masked (-inf) ones
        if (n_used > n_groups_used * (n_expert / n_groups)) return "expert_used_count exceeds the experts of the used groups";
    }
    // 3 and 4 are legal upstream but no supported model uses them and the references do not model them
    uint32_t gating = 0;
    const bool has_gating = need("expert_gating_func", gating);
    if (rules.gating_required) {
        // deepseek32 reads the key as required and passes it to build_moe_ffn, which aborts on 0 (none)
        if (!has_gating || gating == 0 || gating > 2) return "expert_gating_func missing or not 1 (softmax) or 2 (sigmoid)";
    } else if (has_gating && gating > 2) {
        // 0/absent: deepseek2 falls back by layer count and vocabulary (deepseek2.cpp:23-32), glm-dsa takes
        // sigmoid (glm-dsa.cpp:54-57); the references mirror both
        return "expert_gating_func must be 0, 1 (softmax) or 2 (sigmoid)";
    }

    // floats: F32 and finite, as get_key reads them; NaN/inf would only poison the outputs
    float eps = -1.0f, base = 10000.0f, factor = 0.0f, attn_factor = 1.0f, log_mul = 0.0f, w_scale = 0.0f, temp = 0.0f;
    if (!float_ok(g, a + "attention.layer_norm_rms_epsilon", eps) || eps < 0.0f) return "attention.layer_norm_rms_epsilon missing or not a finite non-negative f32";
    if (!float_ok(g, a + "rope.freq_base", base) || base <= 0.0f) return "rope.freq_base must be a finite positive f32";
    if (!float_ok(g, a + "rope.scaling.factor", factor) || factor < 0.0f) return "rope.scaling.factor must be a finite non-negative f32";
    if (!float_ok(g, a + "rope.scaling.attn_factor", attn_factor)) return "rope.scaling.attn_factor must be a finite f32";
    // (glm-dsa's loader ignores yarn_log_multiplier, which its converter may still write: checked all the same)
    if (!float_ok(g, a + "rope.scaling.yarn_log_multiplier", log_mul)) return "rope.scaling.yarn_log_multiplier must be a finite f32";
    if (!float_ok(g, a + "expert_weights_scale", w_scale)) return "expert_weights_scale must be a finite f32";
    if (rules.temperature) {
        if (!float_ok(g, a + "attention.temperature_scale", temp)) return "attention.temperature_scale must be a finite f32";
        // graph_mtp asserts f_attn_temp_scale == 0 (temperature tuning is trunk-only, for Mistral-Large)
        if (n_nextn > 0 && temp != 0.0f) return "attention.temperature_scale is set: llama.cpp's deepseek2 MTP graph does not support it";
        // a scale builds the trunk's attention-temperature input, whose set_input asserts a length
        uint32_t temp_len = 0;
        if (temp != 0.0f && (!need("attention.temperature_length", temp_len) || temp_len == 0)) return "attention.temperature_scale is set without attention.temperature_length";
    }
    // an unknown scaling type is a GGML_ASSERT in the common loader; ext_factor (asserted >= 0) is not a file key
    const std::string scaling = get_str(g, a + "rope.scaling.type");
    if (gguf_find_key(g, (a + "rope.scaling.type").c_str()) >= 0 && scaling != "none" && scaling != "linear" &&
        scaling != "yarn" && scaling != "longrope") {
        return "rope.scaling.type must be none, linear, yarn or longrope";
    }
    return "";
}

std::string check_dsa_indexer(const gguf_context * g, const char * arch) {
    const std::string a = std::string(arch) + ".";
    const auto need = [&](const char * key, uint32_t & v) { return get_uint(g, a + key, v); };
    uint32_t n_head = 0, len = 0, top_k = 0, n_rot = 0;
    // all three are required keys (a missing one is a clean loader error; ours names it first)
    if (!need("attention.indexer.head_count", n_head) || n_head == 0 || n_head > 1024) return "attention.indexer.head_count missing or out of [1, 1024]";
    // the indexer's q and k are multiplied by a Hadamard rotation of the largest power of two (>= 64)
    // dividing the key length (llama-kv-cache.cpp:1447-1465); the product asserts equal sizes, so the
    // key length must be that power of two itself
    if (!need("attention.indexer.key_length", len) || len < 64 || len > 4096 || (len & (len - 1)) != 0) return "attention.indexer.key_length must be a power of two in [64, 4096]";
    // each indexer head is [rope | nope]: the trunk graph asserts n_rot <= key_length
    need("rope.dimension_count", n_rot);  // validated by check_mla_hparams
    if (n_rot > len) return "attention.indexer.key_length must be at least rope.dimension_count";
    // top_k 0 would unmask no cell at all (attention over nothing)
    if (!need("attention.indexer.top_k", top_k) || top_k == 0) return "attention.indexer.top_k missing or 0";
    return "";
}

std::string mla_attention(const gguf_context * g, const char * arch) {
    const std::string a = std::string(arch) + ".";
    uint32_t n_head = 0, q_lora = 0, kv_lora = 0, k_mla = 0, v_mla = 0, n_rot = 0;
    get_uint(g, a + "attention.head_count", n_head);
    get_uint(g, a + "attention.q_lora_rank", q_lora);
    get_uint(g, a + "attention.kv_lora_rank", kv_lora);
    get_uint(g, a + "attention.key_length_mla", k_mla);
    get_uint(g, a + "attention.value_length_mla", v_mla);
    get_uint(g, a + "rope.dimension_count", n_rot);
    return "MLA: " + std::to_string(n_head) + " heads, q_lora_rank " + (q_lora ? std::to_string(q_lora) : "none") +
           ", kv_lora_rank " + std::to_string(kv_lora) + ", qk " + std::to_string(k_mla - n_rot) + " + rope " +
           std::to_string(n_rot) + ", v " + std::to_string(v_mla);
}

const char * const k_mla_nextn_tensors[] = {"nextn.eh_proj.weight", "nextn.enorm.weight", "nextn.hnorm.weight",
                                            "attn_norm.weight", "attn_q_a.weight", "attn_q_a_norm.weight",
                                            "attn_q_b.weight", "attn_kv_a_mqa.weight", "attn_kv_a_norm.weight",
                                            "attn_k_b.weight", "attn_v_b.weight", "attn_output.weight",
                                            "ffn_norm.weight", "ffn_gate_inp.weight", "ffn_down_exps.weight",
                                            "ffn_gate_shexp.weight", "ffn_up_shexp.weight", "ffn_down_shexp.weight",
                                            nullptr};

const char * const k_dsa_indexer_tensors[] = {"indexer.k_norm.weight", "indexer.k_norm.bias", "indexer.proj.weight",
                                              "indexer.attn_k.weight", "indexer.attn_q_b.weight", nullptr};

} // namespace mtpl
