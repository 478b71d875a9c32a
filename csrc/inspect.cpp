// File inspection: structure, vocabulary and the architecture's hyperparameters are checked
// here, because llama.cpp asserts (aborting the process) or loops on many inconsistencies.
#include "inspect.h"

#include <cstdio>
#include <cstring>
#include <tuple>
#include <sys/stat.h>
#include <unordered_set>

#include "gguf_read.h"
#include "util.h"

namespace mtpl {
namespace {

// The vocabulary as llama.cpp's loader trusts it: "" when fine, else what is wrong.
std::string check_vocab(const gguf_context * g, const arch_def & def) {
    const int64_t tok_id = gguf_find_key(g, "tokenizer.ggml.tokens");
    if (tok_id < 0 || gguf_get_kv_type(g, tok_id) != GGUF_TYPE_ARRAY || gguf_get_arr_type(g, tok_id) != GGUF_TYPE_STRING) {
        return "tokenizer.ggml.tokens missing";
    }
    const size_t n_vocab = gguf_get_arr_n(g, tok_id);
    if (n_vocab == 0 || n_vocab > (1u << 24)) return "vocabulary size out of range";
    if (get_str(g, "tokenizer.ggml.model") != def.tokenizer) {
        return "tokenizer.ggml.model must be '" + std::string(def.tokenizer) + "' for " + def.name + ", got '" +
               get_str(g, "tokenizer.ggml.model") + "'";
    }
    {  // llama.cpp asserts that token strings are unique
        std::unordered_set<std::string> seen;
        seen.reserve(n_vocab);
        for (size_t i = 0; i < n_vocab; ++i) {
            if (!seen.insert(gguf_get_arr_str(g, tok_id, i)).second) {
                return "token " + std::to_string(i) + " duplicates an earlier token string";
            }
        }
    }
    for (const char * key : {"tokenizer.ggml.token_type", "tokenizer.ggml.scores"}) {
        const int64_t id = gguf_find_key(g, key);
        if (id >= 0 && (gguf_get_kv_type(g, id) != GGUF_TYPE_ARRAY || gguf_get_arr_n(g, id) != n_vocab ||
                        gguf_get_arr_type(g, id) != (std::string(key).back() == 'e' ? GGUF_TYPE_INT32 : GGUF_TYPE_FLOAT32))) {
            return std::string(key) + " must be an array with one entry per token";
        }
    }
    for (const char * key : {"tokenizer.ggml.eos_token_id", "tokenizer.ggml.bos_token_id", "tokenizer.ggml.eot_token_id",
                             "tokenizer.ggml.padding_token_id", "tokenizer.ggml.unknown_token_id"}) {
        uint32_t id = 0;
        if (gguf_find_key(g, key) >= 0 && (!get_uint(g, key, id) || id >= n_vocab)) {
            return std::string(key) + " is not a token of the vocabulary";
        }
    }
    return "";
}

// Whether the NextN blocks (the last `nextn` blocks) are usable: "" if so, else why not.
std::string nextn_problem(const gguf_context * g, const file_facts & f) {
    if (f.nextn == 0) {
        return "the file declares no NextN (MTP) layers (" + f.arch + ".nextn_predict_layers is 0 or absent)";
    }
    if (f.nextn > f.def->max_nextn) {
        return "the file has " + std::to_string(f.nextn) + " NextN layers; " + f.arch + " MTP supports " +
               std::to_string(f.def->max_nextn);
    }
    for (uint32_t b = f.block_count - f.nextn; b < f.block_count; ++b) {
        const std::string p = "blk." + std::to_string(b) + ".";
        for (const char * const * t = f.def->nextn_tensors; *t; ++t) {
            if (gguf_find_tensor(g, (p + *t).c_str()) < 0) {
                return "the NextN block's tensors are missing (no " + p + *t + "); the file is 'trunk-only'";
            }
        }
    }
    return "";
}

// Norm weights, biases and the other parameters not named "*.weight" (ssm_a, ssm_d) enter elementwise
// products and sums, which ggml's CPU backend computes for an f32 activation with an f32 operand
// only (anything else aborts); converters keep them f32.  "" when fine, else what is wrong.
std::string check_elementwise_types(const gguf_context * g) {
    const int64_t n = gguf_get_n_tensors(g);
    for (int64_t i = 0; i < n; ++i) {
        const std::string name = gguf_get_tensor_name(g, i);
        const auto ends_with = [&](const std::string & suffix) {
            return name.size() >= suffix.size() && name.compare(name.size() - suffix.size(), suffix.size(), suffix) == 0;
        };
        if ((ends_with("norm.weight") || ends_with(".bias") || !ends_with(".weight")) &&
            gguf_get_tensor_type(g, i) != GGML_TYPE_F32) {
            return "tensor " + name + " is " + ggml_type_name(gguf_get_tensor_type(g, i)) +
                   "; llama.cpp needs it f32 (it is added or multiplied elementwise)";
        }
    }
    return "";
}

// The expert-group keys llama.cpp's common loader asserts on for every architecture (whether or not
// its graphs use groups).  "" when fine, else what is wrong.
std::string check_expert_groups(const gguf_context * g, const std::string & a) {
    for (const char * key : {"expert_count", "expert_group_count", "expert_group_used_count"}) {
        if (!uint_or_absent(g, a + key)) {
            return a + key + " must be a non-negative integer scalar";
        }
    }
    uint32_t n_expert = 0, n_groups = 0, n_used = 0;
    get_uint(g, a + "expert_count", n_expert);
    get_uint(g, a + "expert_group_count", n_groups);
    get_uint(g, a + "expert_group_used_count", n_used);
    if (n_expert == 0) {
        return n_groups == 0 ? "" : a + "expert_group_count needs experts";
    }
    if (n_groups >= n_expert) return a + "expert_group_count must be below expert_count";
    if (n_groups > 1 && n_expert % n_groups != 0) return a + "expert_count must be a multiple of expert_group_count";
    if (n_groups > 1 && (n_used == 0 || n_used >= n_groups)) {
        return a + "expert_group_used_count must be in [1, expert_group_count - 1]";
    }
    return "";
}

size_t scalar_size(gguf_type t) {
    switch (t) {
        case GGUF_TYPE_UINT8: case GGUF_TYPE_INT8: case GGUF_TYPE_BOOL: return 1;
        case GGUF_TYPE_UINT16: case GGUF_TYPE_INT16: return 2;
        case GGUF_TYPE_UINT32: case GGUF_TYPE_INT32: case GGUF_TYPE_FLOAT32: return 4;
        case GGUF_TYPE_UINT64: case GGUF_TYPE_INT64: case GGUF_TYPE_FLOAT64: return 8;
        default: return 0;
    }
}

// Whether key `id` holds the same value in both files; arrays are compared over their first n
// entries when n >= 0 (per-layer arrays: the trunk's layers).
bool same_value(const gguf_context * a, int64_t ia, const gguf_context * b, int64_t ib, int64_t n) {
    const gguf_type t = gguf_get_kv_type(a, ia);
    if (t != gguf_get_kv_type(b, ib)) {
        return false;
    }
    if (t == GGUF_TYPE_STRING) {
        return std::strcmp(gguf_get_val_str(a, ia), gguf_get_val_str(b, ib)) == 0;
    }
    if (t != GGUF_TYPE_ARRAY) {
        return std::memcmp(gguf_get_val_data(a, ia), gguf_get_val_data(b, ib), scalar_size(t)) == 0;
    }
    const gguf_type at = gguf_get_arr_type(a, ia);
    const int64_t na = (int64_t) gguf_get_arr_n(a, ia), nb = (int64_t) gguf_get_arr_n(b, ib);
    if (at != gguf_get_arr_type(b, ib) || (n < 0 && na != nb) || (n >= 0 && (na < n || nb < n))) {
        return false;
    }
    const int64_t m = n < 0 ? na : n;
    if (at == GGUF_TYPE_STRING) {
        for (int64_t i = 0; i < m; ++i) {
            if (std::strcmp(gguf_get_arr_str(a, ia, i), gguf_get_arr_str(b, ib, i)) != 0) {
                return false;
            }
        }
        return true;
    }
    const size_t sz = scalar_size(at);
    return sz > 0 && std::memcmp(gguf_get_arr_data(a, ia), gguf_get_arr_data(b, ib), sz * (size_t) m) == 0;
}

struct gguf_handle {
    gguf_context * g = nullptr;
    explicit gguf_handle(const std::string & path) {
        gguf_init_params gp{};
        gp.no_alloc = true;
        g = gguf_init_from_file(path.c_str(), gp);
    }
    ~gguf_handle() { if (g) gguf_free(g); }
};

} // namespace

const char * file_kind(const file_facts & f) {
    return !f.has_trunk ? "mtp-only" : f.has_mtp ? "full" : "trunk-only";
}

int32_t check_pair(const std::string & trunk_path, const file_facts & t, const std::string & head_path,
                   const file_facts & h) {
    const auto mismatch = [&](const std::string & what) {
        return fail(MTPL_ERR_MTP_MISMATCH, "the MTP head " + head_path + " does not belong to " + trunk_path + ": " + what);
    };
    if (h.arch != t.arch) {
        return mismatch("architecture '" + h.arch + "', the trunk's is '" + t.arch + "'");
    }
    if (!h.has_mtp) {
        return fail(MTPL_ERR_NO_MTP_HEAD, "no usable NextN block in " + head_path + ": " + h.mtp_problem);
    }
    if (h.has_trunk) {
        return mismatch("it is a full model (trunk blocks included); load it as the model, or write its head "
                        "alone with `mtpllama extract-mtp`");
    }
    const uint32_t n_layer = t.block_count - t.nextn, head_index = h.block_count - h.nextn;
    if (head_index != n_layer) {
        return mismatch("its NextN block follows " + std::to_string(head_index) + " trunk layers, the trunk has " +
                        std::to_string(n_layer));
    }
    gguf_handle a(trunk_path), b(head_path);
    if (!a.g || !b.g) {
        return fail(MTPL_ERR_MODEL_LOAD, "cannot reopen " + (a.g ? head_path : trunk_path));
    }
    // every key but the block counts: hyperparameters (embedding width, heads, experts, rope) and
    // the vocabulary (token strings, types, special ids) must be the same
    const std::string bc = t.arch + ".block_count", nn = t.arch + ".nextn_predict_layers";
    for (const auto & [x, y, x_name] : {std::tuple{a.g, b.g, trunk_path}, std::tuple{b.g, a.g, head_path}}) {
        for (int64_t i = 0; i < gguf_get_n_kv(x); ++i) {
            const std::string key = gguf_get_key(x, i);
            if (key == bc || key == nn || key.rfind("general.", 0) == 0 || key.rfind("quantize.", 0) == 0 ||
                key.rfind("split.", 0) == 0 || key.rfind("tokenizer.chat_template", 0) == 0) {
                continue;  // provenance, quantisation and a fixed chat template may differ between quants
            }
            const int64_t j = gguf_find_key(y, key.c_str());
            if (j < 0) {
                return mismatch("key " + key + " is only in " + x_name);
            }
            // a per-layer array holds block_count entries in each file: the trunk's layers must agree
            const bool per_layer = gguf_get_kv_type(x, i) == GGUF_TYPE_ARRAY && gguf_get_kv_type(y, j) == GGUF_TYPE_ARRAY &&
                                   gguf_get_arr_n(a.g, x == a.g ? i : j) == t.block_count &&
                                   gguf_get_arr_n(b.g, x == a.g ? j : i) == h.block_count;
            if (x == a.g && !same_value(x, i, y, j, per_layer ? (int64_t) n_layer : -1)) {
                return mismatch(key + " differs");
            }
        }
    }
    return MTPL_OK;
}

int32_t read_file_facts(const std::string & path, file_facts & out) {
    struct stat st {};
    if (stat(path.c_str(), &st) != 0) {
        return fail(MTPL_ERR_FILE_NOT_FOUND, "model file not found: " + path);
    }
    if (!S_ISREG(st.st_mode)) {
        return fail(MTPL_ERR_FILE_NOT_FOUND, "model path is not a regular file: " + path);
    }
    {
        FILE * f = std::fopen(path.c_str(), "rb");
        if (!f) {
            return fail(MTPL_ERR_FILE_NOT_FOUND, "cannot open model file: " + path);
        }
        char magic[4] = {0, 0, 0, 0};
        const size_t n = std::fread(magic, 1, 4, f);
        std::fclose(f);
        if (n != 4 || std::memcmp(magic, "GGUF", 4) != 0) {
            return fail(MTPL_ERR_NOT_GGUF, "not a GGUF file (wrong magic bytes): " + path);
        }
    }
    clear_upstream_error();
    gguf_init_params gp{};
    gp.no_alloc = true;
    gp.ctx = nullptr;
    gguf_context * g = gguf_init_from_file(path.c_str(), gp);
    if (!g) {
        const std::string why = upstream_error();
        return fail(MTPL_ERR_MODEL_LOAD, "corrupt or truncated GGUF file " + path + (why.empty() ? "" : ": " + why));
    }
    struct closer { gguf_context * g; ~closer() { gguf_free(g); } } c{g};

    // every tensor's data must lie inside the file
    const uint64_t data_off = gguf_get_data_offset(g);
    out.n_tensors = (int32_t) gguf_get_n_tensors(g);
    for (int64_t i = 0; i < out.n_tensors; ++i) {
        const uint64_t end = data_off + gguf_get_tensor_offset(g, i) + gguf_get_tensor_size(g, i);
        if (end > (uint64_t) st.st_size) {
            return fail(MTPL_ERR_MODEL_LOAD, std::string("truncated GGUF file: data of tensor '") +
                                                 gguf_get_tensor_name(g, i) + "' extends past the end of " + path);
        }
    }

    out.arch = get_str(g, "general.architecture");
    out.name = get_str(g, "general.name");
    out.def = find_arch(out.arch);
    if (!out.def) {
        out.mtp_problem = "mtpllama does not run architecture '" + out.arch + "'";
        return MTPL_OK;
    }
    if (!get_uint(g, out.arch + ".block_count", out.block_count) || out.block_count == 0) {
        return fail(MTPL_ERR_MODEL_LOAD, "GGUF file lacks " + out.arch + ".block_count: " + path);
    }
    if (!get_uint(g, out.arch + ".nextn_predict_layers", out.nextn)) {
        out.nextn = 0;
    }
    if (out.nextn >= out.block_count) {
        return fail(MTPL_ERR_MODEL_LOAD, "GGUF file declares " + std::to_string(out.nextn) +
                                             " NextN layers but only " + std::to_string(out.block_count) + " blocks");
    }
    if (out.block_count > 512) {
        return fail(MTPL_ERR_MODEL_LOAD, "invalid GGUF metadata in " + path + ": block_count " +
                                             std::to_string(out.block_count) + " exceeds 512");
    }
    std::string bad = out.def->check_hparams(g, out.block_count, out.nextn);
    if (bad.empty()) {
        bad = check_vocab(g, *out.def);
    }
    if (bad.empty()) {
        bad = check_elementwise_types(g);
    }
    if (bad.empty()) {
        bad = check_expert_groups(g, out.arch + ".");
    }
    if (bad.empty() && out.def->check_data) {
        bad = out.def->check_data(g, path);
    }
    if (!bad.empty()) {
        return fail(MTPL_ERR_MODEL_LOAD, "invalid GGUF metadata in " + path + ": " + bad);
    }
    if (out.def->attention) {
        out.attention = out.def->attention(g);
    }

    const uint32_t first_nextn = out.block_count - out.nextn;
    for (int64_t i = 0; i < out.n_tensors; ++i) {
        unsigned blk = 0;
        if (out.nextn > 0 && std::sscanf(gguf_get_tensor_name(g, i), "blk.%u.", &blk) == 1 && blk >= first_nextn) {
            out.n_tensors_nextn++;
            out.nextn_bytes += (int64_t) gguf_get_tensor_size(g, i);
        }
    }
    out.mtp_problem = nextn_problem(g, out);
    out.has_mtp = out.mtp_problem.empty();
    // upstream tells an MTP-only file by the same tensor (its loader then makes the trunk optional)
    out.has_trunk = gguf_find_tensor(g, "blk.0.attn_norm.weight") >= 0;
    if (!out.has_trunk && !out.has_mtp) {
        return fail(MTPL_ERR_MODEL_LOAD, "neither trunk blocks nor a usable NextN block in " + path + ": " + out.mtp_problem);
    }
    return MTPL_OK;
}

} // namespace mtpl
