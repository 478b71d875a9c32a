// What is specific to one architecture, one file each (arch/<name>.cpp), registered in one
// table (arch/registry.cpp).  Adding an architecture: a new file defining its arch_def, and a
// line in the table.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "gguf.h"

namespace mtpl {

// NextN blocks an architecture whose blocks draft as a chain may have (one MTP context each)
constexpr uint32_t k_max_heads = 8;

struct arch_def {
    const char * name;              // general.architecture, as llama.cpp names it
    const char * models;            // the models users know it by, for messages
    const char * tokenizer;         // tokenizer.ggml.model its files use
    // Hyperparameters llama.cpp asserts on (aborting the process) or loops over: "" when the
    // file's are consistent, else what is wrong.  n_block: <arch>.block_count, n_nextn: its
    // NextN blocks.
    std::string (*check_hparams)(const gguf_context * g, uint32_t n_block, uint32_t n_nextn);
    // the tensors every NextN block holds (names after "blk.N."), ending with nullptr
    const char * const * nextn_tensors;
    uint32_t max_nextn;             // NextN blocks the engine can draft with (several: chained)
    // the trunk keeps per-sequence state (recurrent layers) that dropping a cache tail cannot
    // roll back: a rollback must restore a snapshot instead
    bool recurrent;
    // the attention kind and its shape, for inspect (after check_hparams passed)
    std::string (*attention)(const gguf_context * g) = nullptr;
    // what the tensors must satisfy beyond the names the loader asks for, e.g. contents llama.cpp
    // indexes with (after check_hparams passed; path: the file g was read from): "" when fine,
    // else what is wrong
    std::string (*check_data)(const gguf_context * g, const std::string & path) = nullptr;
};

// Block b's FFN weights as a graph that picks the FFN by the router needs them: a router with all
// experts (and the shared expert when shared_expert), else a dense FFN (always, when dense_only).
// "" when fine or when the block is not in the file, else what is missing.
std::string check_block_ffn(const gguf_context * g, uint32_t b, bool shared_expert, bool dense_only);
// The head dims as llama.cpp reads them (prefix `a`): key_length (else n_embd / n_head), value_length
// (else key_length), rope.dimension_count (else key_length), each K and V in [1, 4096].  "" when
// readable, else what is wrong.
struct head_dims {
    uint32_t k = 0, v = 0, rot = 0;
};
std::string read_head_dims(const gguf_context * g, const std::string & a, uint32_t n_embd, uint32_t n_head,
                           head_dims & out);
// Routed experts: expert_count in [1, 512], expert_used_count in [1, expert_count] and
// expert_feed_forward_length (a scalar or one per block), which the loaders require.
std::string check_experts(const gguf_context * g, const std::string & a, uint32_t n_block);
// The sliding window and its per-block pattern (a prefix `a`, e.g. "mimo2."), which llama.cpp requires
// and asserts marks a block at least.  "" when fine, else what is wrong.
std::string check_swa_layers(const gguf_context * g, const std::string & a, uint32_t n_block);
// Per-block head counts (a scalar or one per block; no KV count: the query count): the KV count
// divides the query count.  heads receives the query counts.  "" when fine, else what is wrong.
std::string check_layer_heads(const gguf_context * g, const std::string & a, uint32_t n_block,
                              std::vector<uint32_t> & heads);
// embedding_length, the per-block head counts and the head dims (first block's head count) as the
// two above read them.  "" when fine, else what is wrong.
std::string read_attention(const gguf_context * g, const std::string & a, uint32_t n_block, uint32_t & n_embd,
                           std::vector<uint32_t> & heads, head_dims & hd);

// the architecture named so, or null
const arch_def * find_arch(const std::string & name);
// the supported names, comma-separated
std::string arch_names();

} // namespace mtpl
