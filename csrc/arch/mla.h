// What the MLA architectures share (deepseek2, glm-dsa, deepseek32: llama.cpp's src/models/deepseek2.cpp,
// glm-dsa.cpp, deepseek32.cpp).  Their loaders read the same MLA, expert and rope keys and their graphs
// assert on the same things, so the rules live here once; each arch/<name>.cpp adds its own.
// docs/mla.md section 1 lists the rules, docs/dsa.md the DSA ones.
#pragma once

#include <cstdint>
#include <initializer_list>
#include <string>

#include "gguf.h"

namespace mtpl {

// How an MLA architecture differs in the rules check_mla_hparams applies.
struct mla_rules {
    const char * arch;       // key prefix, without the dot ("deepseek2")
    bool lite;               // deepseek2: a "lite" trunk (26/27 layers, or 48 with 128256 tokens) skips q_lora_rank
    bool temperature;        // deepseek2: attention.temperature_scale/_length (Mistral-Large temperature tuning)
    bool gating_required;    // deepseek32 reads expert_gating_func as required; the others fall back when 0/absent
};

// A float key as llama.cpp reads one (F32 only): false if present with another type or not finite;
// out is left alone when the key is absent.
bool float_ok(const gguf_context * g, const std::string & key, float & out);

// The rules every MLA architecture shares (the common loader's asserts, the MLA cache shapes, the
// expert rules, the NextN block being MoE, finite floats, a known rope scaling type), in deepseek2's
// order: "" when the file passes, else what is wrong.  extra_uint_keys (without the prefix) must,
// like the shared ones, be non-negative integer scalars when present; they are checked after them.
std::string check_mla_hparams(const gguf_context * g, uint32_t n_block, uint32_t n_nextn, const mla_rules & rules,
                              std::initializer_list<const char *> extra_uint_keys);

// The DSA lightning indexer's keys (glm-dsa, deepseek32), after check_mla_hparams passed: head count,
// key length (a power of two >= 64: the Hadamard rotation is that size; and >= rope.dimension_count)
// and top_k >= 1.
std::string check_dsa_indexer(const gguf_context * g, const char * arch);

// inspect's description of the attention: "MLA: H heads, q_lora_rank .., kv_lora_rank .., qk .. + rope .., v .."
std::string mla_attention(const gguf_context * g, const char * arch);

// What an MLA graph_mtp asserts or its loader requires of a NextN block (deepseek2.cpp:181-213, and
// glm-dsa/deepseek32, whose loaders require the same block), ending with nullptr.
extern const char * const k_mla_nextn_tensors[];

// The five tensors of a DSA indexer (after "blk.N."), ending with nullptr.
extern const char * const k_dsa_indexer_tensors[];

} // namespace mtpl
