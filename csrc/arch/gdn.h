// What the gated delta-net hybrids share (qwen35moe, qwen35: llama.cpp's src/models/qwen35moe.cpp,
// qwen35.cpp on src/models/delta-net-base.cpp).  Their trunks interleave gated delta-net layers
// (a recurrent state per sequence) with gated full-attention layers, and their NextN block is one
// full-attention block; the loaders read the same ssm and rope keys and the graphs assert on the
// same shapes, so the rules live here once.  docs/recurrent.md lists them.
#pragma once

#include <cstdint>
#include <string>

#include "gguf.h"

namespace mtpl {

// The shared rules, in the loader's order: "" when the file passes, else what is wrong.  moe: the
// feed-forward layers are routed experts with a gated shared expert (qwen35moe), else dense SwiGLU.
std::string check_gdn_hparams(const gguf_context * g, const char * arch, uint32_t n_block, uint32_t n_nextn, bool moe);

// inspect's description: "hybrid: N gated delta-net layers (H value heads of D, ...) and M gated attention ..."
std::string gdn_attention(const gguf_context * g, const char * arch);

} // namespace mtpl
