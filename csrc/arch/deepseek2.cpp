// deepseek2: GLM-4.7-Flash (llama.cpp's src/models/deepseek2.cpp).  MLA attention in its absorbed
// form (a K-only cache of the latent and the shared rope key), MoE with shared experts, and one
// NextN block, the last one, drafting through graph_mtp.  Section 1 of docs/mla.md lists what the
// loader and the graphs assert on; every rule below is one of those, checked before llama.cpp
// sees the file.
#include "arch/arch.h"
#include "arch/registry.h"
#include "gguf_read.h"

#include <cmath>

namespace mtpl {
namespace {

// A float key as llama.cpp reads one (F32 only): false if present with another type or not finite;
// out is left alone when the key is absent.
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

// the vocabulary size as the loader takes it for its layer-count rules (vocab_size, else the token list)
uint32_t vocab_size(const gguf_context * g) {
    uint32_t n = 0;
    if (get_uint(g, "deepseek2.vocab_size", n)) {
        return n;
    }
    const int64_t id = gguf_find_key(g, "tokenizer.ggml.tokens");
    return id >= 0 && gguf_get_kv_type(g, id) == GGUF_TYPE_ARRAY ? (uint32_t) gguf_get_arr_n(g, id) : 0;
}

std::string check_hparams(const gguf_context * g, uint32_t n_block, uint32_t n_nextn) {
    const std::string a = "deepseek2.";
    const auto need = [&](const char * key, uint32_t & v) { return get_uint(g, a + key, v); };
    for (const char * key : {"embedding_length", "attention.head_count", "attention.head_count_kv", "expert_count",
                             "expert_used_count", "expert_shared_count", "leading_dense_block_count",
                             "attention.key_length", "attention.value_length", "attention.key_length_mla",
                             "attention.value_length_mla", "attention.q_lora_rank", "attention.kv_lora_rank",
                             "rope.dimension_count", "expert_feed_forward_length", "feed_forward_length",
                             "context_length", "expert_gating_func", "expert_group_count", "expert_group_used_count",
                             "vocab_size", "attention.temperature_length"}) {
        if (!uint_or_absent(g, a + key)) {  // per-layer arrays are legal upstream, but no converter writes them here
            return a + key + " must be a non-negative integer scalar";
        }
    }
    const uint32_t n_layer = n_block - n_nextn;  // n_layer(): the trunk, which every layer-count rule keys on

    // a "lite" count makes the loader skip q_lora_rank, and graph_mtp then asserts n_lora_q > 0
    const uint32_t n_vocab = vocab_size(g);
    const bool lite = n_layer == 26 || n_layer == 27 || (n_layer == 48 && n_vocab == 128256);
    if (lite && n_nextn > 0) return "a NextN block on a 'lite' trunk (26 or 27 layers, or 48 with 128256 tokens), whose q_lora_rank llama.cpp skips";

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
    // 0/absent falls back by layer count and vocabulary (deepseek2.cpp:23-32), which the reference mirrors;
    // 3 and 4 are legal upstream but no GLM-4.7-Flash file uses them and the reference does not model them
    uint32_t gating = 0;
    if (need("expert_gating_func", gating) && gating > 2) return "expert_gating_func must be 0, 1 (softmax) or 2 (sigmoid)";

    // floats: F32 and finite, as get_key reads them; NaN/inf would only poison the outputs
    float eps = -1.0f, base = 10000.0f, factor = 0.0f, attn_factor = 1.0f, log_mul = 0.0f, w_scale = 0.0f, temp = 0.0f;
    if (!float_ok(g, a + "attention.layer_norm_rms_epsilon", eps) || eps < 0.0f) return "attention.layer_norm_rms_epsilon missing or not a finite non-negative f32";
    if (!float_ok(g, a + "rope.freq_base", base) || base <= 0.0f) return "rope.freq_base must be a finite positive f32";
    if (!float_ok(g, a + "rope.scaling.factor", factor) || factor < 0.0f) return "rope.scaling.factor must be a finite non-negative f32";
    if (!float_ok(g, a + "rope.scaling.attn_factor", attn_factor)) return "rope.scaling.attn_factor must be a finite f32";
    if (!float_ok(g, a + "rope.scaling.yarn_log_multiplier", log_mul)) return "rope.scaling.yarn_log_multiplier must be a finite f32";
    if (!float_ok(g, a + "expert_weights_scale", w_scale)) return "expert_weights_scale must be a finite f32";
    if (!float_ok(g, a + "attention.temperature_scale", temp)) return "attention.temperature_scale must be a finite f32";
    // graph_mtp asserts f_attn_temp_scale == 0 (temperature tuning is trunk-only, for Mistral-Large)
    if (n_nextn > 0 && temp != 0.0f) return "attention.temperature_scale is set: llama.cpp's deepseek2 MTP graph does not support it";
    // a scale builds the trunk's attention-temperature input, whose set_input asserts a length
    uint32_t temp_len = 0;
    if (temp != 0.0f && (!need("attention.temperature_length", temp_len) || temp_len == 0)) return "attention.temperature_scale is set without attention.temperature_length";
    // an unknown scaling type is a GGML_ASSERT in the common loader; ext_factor (asserted >= 0) is not a file key
    const std::string scaling = get_str(g, a + "rope.scaling.type");
    if (gguf_find_key(g, (a + "rope.scaling.type").c_str()) >= 0 && scaling != "none" && scaling != "linear" &&
        scaling != "yarn" && scaling != "longrope") {
        return "rope.scaling.type must be none, linear, yarn or longrope";
    }
    return "";
}

// What graph_mtp asserts (deepseek2.cpp:181-213), so that a block lacking one reads as "trunk-only"
// instead of aborting.  The expert matrices are left out: gate/up may come fused (ffn_gate_up_exps)
// and the loader requires them either way.  Optional: nextn.embed_tokens (tied to token_embd),
// nextn.shared_head_head (to output) and nextn.shared_head_norm (to output_norm), exp_probs_b.bias.
const char * const k_nextn_tensors[] = {"nextn.eh_proj.weight", "nextn.enorm.weight", "nextn.hnorm.weight",
                                        "attn_norm.weight", "attn_q_a.weight", "attn_q_a_norm.weight",
                                        "attn_q_b.weight", "attn_kv_a_mqa.weight", "attn_kv_a_norm.weight",
                                        "attn_k_b.weight", "attn_v_b.weight", "attn_output.weight",
                                        "ffn_norm.weight", "ffn_gate_inp.weight", "ffn_down_exps.weight",
                                        "ffn_gate_shexp.weight", "ffn_up_shexp.weight", "ffn_down_shexp.weight",
                                        nullptr};

} // namespace

static std::string attention(const gguf_context * g) {
    const std::string a = "deepseek2.";
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

const arch_def arch_deepseek2 = {
    "deepseek2", "GLM-4.7-Flash", "gpt2", check_hparams, k_nextn_tensors, 1, false, attention,
};

} // namespace mtpl
