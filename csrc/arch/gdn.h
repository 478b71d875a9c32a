// What the gated delta-net hybrids share (qwen35moe, qwen35, qwen3next: llama.cpp's
// src/models/qwen35moe.cpp, qwen35.cpp, qwen3next.cpp on src/models/delta-net-base.cpp).  Their trunks interleave gated delta-net layers
// (a recurrent state per sequence) with gated full-attention layers, and their NextN block is one
// full-attention block; the loaders read the same ssm and rope keys and the graphs assert on the
// same shapes, so the rules live here once.  docs/recurrent.md lists them.
#pragma once

#include <cstdint>
#include <string>

#include "gguf.h"

namespace mtpl {

// How a gated delta-net architecture differs in the rules check_gdn_hparams applies.
struct gdn_rules {
    const char * arch;       // key prefix, without the dot ("qwen35moe")
    bool moe;                // routed experts with a gated shared expert (else dense SwiGLU)
    bool mrope;              // interleaved M-RoPE: rope.dimension_sections required (qwen35, qwen35moe)
    bool legacy_ssm_in;      // a delta-net layer may carry the older fused ssm_in instead of attn_qkv + attn_gate
};

// The shared rules, in the loader's order: "" when the file passes, else what is wrong.
std::string check_gdn_hparams(const gguf_context * g, const gdn_rules & rules, uint32_t n_block, uint32_t n_nextn);

// inspect's description: "hybrid: N gated delta-net layers (H value heads of D, ...) and M gated attention ..."
std::string gdn_attention(const gguf_context * g, const char * arch);

} // namespace mtpl
