// nemotron_h_moe: NVIDIA Nemotron-H MoE (Nemotron 3 Nano/Super; llama.cpp's src/models/nemotron-h.cpp
// and nemotron-h-moe.cpp).  A hybrid trunk whose layers are each one kind, told apart by per-layer
// arrays: Mamba-2 (a recurrent state per sequence; head_count_kv and feed_forward_length 0),
// attention without rope (head_count_kv > 0) or MoE (feed_forward_length > 0: ReLU^2 experts with
// sigmoid routing and a shared expert).  One NextN block, the last one, folds an attention and a
// MoE sub-layer into one block.  Rollback restores llama.cpp's state snapshots (docs/recurrent.md).
#include <cmath>
#include <vector>

#include "arch/arch.h"
#include "arch/registry.h"
#include "gguf_read.h"

namespace mtpl {
namespace {

bool finite_f32(const gguf_context * g, const std::string & key, bool required) {
    const int64_t id = gguf_find_key(g, key.c_str());
    if (id < 0) return !required;
    return gguf_get_kv_type(g, id) == GGUF_TYPE_FLOAT32 && std::isfinite(gguf_get_val_f32(g, id));
}

std::string check_hparams(const gguf_context * g, uint32_t n_block, uint32_t n_nextn) {
    const std::string a = "nemotron_h_moe.";
    const auto need = [&](const char * key, uint32_t & v) { return get_uint(g, a + key, v); };
    for (const char * key : {"embedding_length", "attention.head_count", "attention.key_length", "attention.value_length",
                             "expert_count", "expert_used_count", "expert_feed_forward_length",
                             "expert_shared_feed_forward_length", "expert_shared_count", "context_length",
                             "ssm.conv_kernel", "ssm.inner_size", "ssm.state_size", "ssm.time_step_rank",
                             "ssm.group_count", "moe_latent_size"}) {
        if (!uint_or_absent(g, a + key)) {
            return a + key + " must be a non-negative integer scalar";
        }
    }
    const uint32_t n_layer = n_block - n_nextn;
    uint32_t n_embd = 0, n_head = 0, k_len = 0, v_len = 0, n_ctx = 0;
    if (!need("embedding_length", n_embd) || n_embd == 0 || n_embd > (1u << 17)) return "embedding_length missing or out of range";
    if (!need("attention.head_count", n_head) || n_head == 0 || n_head > 1024) return "attention.head_count missing or out of range";
    if (!need("attention.key_length", k_len)) {
        if (n_embd % n_head != 0) return "embedding_length is not a multiple of attention.head_count";
        k_len = n_embd / n_head;
    }
    if (!need("attention.value_length", v_len)) v_len = k_len;
    if (k_len == 0 || k_len > 4096 || k_len != v_len) return "attention key/value lengths must be equal and in [1, 4096]";
    if (need("context_length", n_ctx) && n_ctx == 0) return "context_length is 0";
    if (!finite_f32(g, a + "attention.layer_norm_epsilon", true)) return "attention.layer_norm_epsilon missing or not finite";
    if (!finite_f32(g, a + "attention.layer_norm_rms_epsilon", false)) return "attention.layer_norm_rms_epsilon not finite";
    if (!finite_f32(g, a + "expert_weights_scale", false)) return "expert_weights_scale not finite";

    // the layer kinds: Mamba-2 where both per-layer values are 0, attention where head_count_kv is
    // set, MoE where feed_forward_length is; the NextN block has both
    std::vector<uint32_t> kv, ff;
    if (!per_layer(g, a + "attention.head_count_kv", n_block, kv)) {
        return a + "attention.head_count_kv must be an integer or one per block";
    }
    if (!per_layer(g, a + "feed_forward_length", n_block, ff)) {
        return a + "feed_forward_length must be an integer or one per block";
    }
    uint32_t n_mamba = 0, n_attn = 0, n_moe = 0;
    for (uint32_t i = 0; i < n_block; ++i) {
        if (kv[i] > 0 && (kv[i] > n_head || n_head % kv[i] != 0)) {
            return "attention.head_count_kv of block " + std::to_string(i) + " must divide attention.head_count";
        }
        if (ff[i] > (1u << 22)) return "feed_forward_length of block " + std::to_string(i) + " out of range";
        if (i >= n_layer) {
            if (kv[i] == 0 || ff[i] == 0) {
                return "NextN block " + std::to_string(i) + " must have attention and MoE (head_count_kv and feed_forward_length)";
            }
            continue;
        }
        if (kv[i] > 0 && ff[i] > 0) {
            return "trunk block " + std::to_string(i) + " sets both head_count_kv and feed_forward_length";
        }
        n_mamba += kv[i] == 0 && ff[i] == 0;
        n_attn += kv[i] > 0;
        n_moe += ff[i] > 0;
        const std::string conv = "blk." + std::to_string(i) + ".ssm_conv1d.weight";
        if (kv[i] == 0 && ff[i] == 0 && !f32_or_absent(g, conv)) {  // ssm_a, ssm_d: inspect's elementwise rule
            return conv + " must be f32 (ggml's convolution reads it so)";
        }
    }
    if (n_mamba == 0 || n_attn == 0 || n_moe == 0) {
        return "the trunk must have Mamba-2, attention and MoE layers (" + std::to_string(n_mamba) + ", " +
               std::to_string(n_attn) + ", " + std::to_string(n_moe) + ")";
    }

    uint32_t n_expert = 0, n_used = 0, n_ff_exp = 0, n_ff_sh = 0, latent = 0;
    if (!need("expert_count", n_expert) || n_expert == 0 || n_expert > 1024) return "expert_count missing or out of [1, 1024]";
    if (!need("expert_used_count", n_used) || n_used == 0 || n_used > n_expert) return "expert_used_count must be in [1, expert_count]";
    if (!need("expert_feed_forward_length", n_ff_exp) || n_ff_exp == 0 || n_ff_exp > (1u << 20)) {
        return "expert_feed_forward_length missing or out of range";
    }
    if (!need("expert_shared_feed_forward_length", n_ff_sh) || n_ff_sh == 0 || n_ff_sh > (1u << 22)) {
        return "expert_shared_feed_forward_length missing or out of range";
    }
    if (need("moe_latent_size", latent) && latent > (1u << 17)) return "moe_latent_size out of range";

    // Mamba-2: n_head heads of d_inner / n_head, in n_group groups of the state size
    uint32_t d_conv = 0, d_inner = 0, d_state = 0, n_ssm_head = 0, n_group = 0;
    if (!need("ssm.conv_kernel", d_conv) || d_conv < 2 || d_conv > 64) return "ssm.conv_kernel missing or out of [2, 64]";
    if (!need("ssm.state_size", d_state) || d_state == 0 || d_state > 1024) return "ssm.state_size missing or out of [1, 1024]";
    if (!need("ssm.time_step_rank", n_ssm_head) || n_ssm_head == 0 || n_ssm_head > 4096) {
        return "ssm.time_step_rank (Mamba-2 heads) missing or out of [1, 4096]";
    }
    if (!need("ssm.group_count", n_group) || n_group == 0 || n_ssm_head % n_group != 0) {
        return "ssm.group_count must divide ssm.time_step_rank";
    }
    if (!need("ssm.inner_size", d_inner) || d_inner == 0 || d_inner > (1u << 20) || d_inner % n_ssm_head != 0 ||
        d_inner % n_group != 0) {
        return "ssm.inner_size must be a multiple of ssm.time_step_rank and ssm.group_count";
    }
    return "";
}

std::string attention(const gguf_context * g) {
    uint32_t n_block = 0, n_nextn = 0, n_head = 0, k_len = 0, n_ssm_head = 0, d_state = 0;
    const std::string a = "nemotron_h_moe.";
    get_uint(g, a + "block_count", n_block);
    get_uint(g, a + "nextn_predict_layers", n_nextn);
    get_uint(g, a + "attention.head_count", n_head);
    get_uint(g, a + "attention.key_length", k_len);
    get_uint(g, a + "ssm.time_step_rank", n_ssm_head);
    get_uint(g, a + "ssm.state_size", d_state);
    std::vector<uint32_t> kv, ff;
    per_layer(g, a + "attention.head_count_kv", n_block, kv);
    per_layer(g, a + "feed_forward_length", n_block, ff);
    uint32_t n_mamba = 0, n_attn = 0, n_moe = 0;
    for (uint32_t i = 0; i + n_nextn < n_block; ++i) {
        n_mamba += kv[i] == 0 && ff[i] == 0;
        n_attn += kv[i] > 0;
        n_moe += ff[i] > 0;
    }
    return "hybrid: " + std::to_string(n_mamba) + " Mamba-2 layers (" + std::to_string(n_ssm_head) + " heads, state " +
           std::to_string(d_state) + "), " + std::to_string(n_attn) + " attention layers (" + std::to_string(n_head) +
           " heads, head dim " + std::to_string(k_len) + ", no rope), " + std::to_string(n_moe) + " MoE layers";
}

// what graph_mtp asserts on (nemotron-h-moe.cpp): the fusion tensors, the router and the head norm
const char * const k_nextn_tensors[] = {"nextn.eh_proj.weight", "nextn.enorm.weight", "nextn.hnorm.weight",
                                        "nextn.shared_head_norm.weight", "ffn_gate_inp.weight", "attn_norm.weight",
                                        nullptr};

} // namespace

const arch_def arch_nemotron_h_moe = {
    "nemotron_h_moe", "Nemotron-H MoE", "gpt2", check_hparams, k_nextn_tensors, 1, true, attention,
};

} // namespace mtpl
