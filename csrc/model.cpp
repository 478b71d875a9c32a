// Loading: validate the GGUF file ourselves, then hand it to llama.cpp with the
// NextN block loaded or skipped, and record what a user needs to know about it.
#include "engine.h"

#include <algorithm>
#include <cctype>
#include <cstdio>
#include <cstring>
#include <regex>
#include <sys/stat.h>
#include <unordered_set>

#include "ggml-backend.h"
#include "gguf.h"

namespace mtpl {
namespace {

const char * const k_supported_arch = "glm4moe";

std::string get_str(const gguf_context * g, const char * key) {
    const int64_t id = gguf_find_key(g, key);
    if (id < 0 || gguf_get_kv_type(g, id) != GGUF_TYPE_STRING) {
        return "";
    }
    return gguf_get_val_str(g, id);
}

// An unsigned integer key of any width; false if absent or of another type.
bool get_uint(const gguf_context * g, const std::string & key, uint32_t & out) {
    const int64_t id = gguf_find_key(g, key.c_str());
    if (id < 0) {
        return false;
    }
    switch (gguf_get_kv_type(g, id)) {
        case GGUF_TYPE_UINT8:  out = gguf_get_val_u8(g, id); return true;
        case GGUF_TYPE_UINT16: out = gguf_get_val_u16(g, id); return true;
        case GGUF_TYPE_UINT32: out = gguf_get_val_u32(g, id); return true;
        case GGUF_TYPE_INT32: {
            const int32_t v = gguf_get_val_i32(g, id);
            if (v < 0) return false;
            out = (uint32_t) v;
            return true;
        }
        default: return false;
    }
}

std::string lower(std::string s) {
    std::transform(s.begin(), s.end(), s.begin(), [](unsigned char c) { return (char) std::tolower(c); });
    return s;
}

// Find a buffer type by device name ("CPU", "CUDA0") or buffer type name.
ggml_backend_buffer_type_t find_buffer_type(const std::string & name, std::string & known) {
    const std::string want = lower(name);
    for (size_t i = 0; i < ggml_backend_dev_count(); ++i) {
        ggml_backend_dev_t dev = ggml_backend_dev_get(i);
        ggml_backend_buffer_type_t buft = ggml_backend_dev_buffer_type(dev);
        known += (known.empty() ? "" : ", ") + std::string(ggml_backend_dev_name(dev));
        if (lower(ggml_backend_dev_name(dev)) == want || (buft && lower(ggml_backend_buft_name(buft)) == want)) {
            return buft;
        }
    }
    return nullptr;
}

int32_t parse_overrides(const char * spec, mtpl_model & m) {
    if (!spec) {
        return MTPL_OK;
    }
    std::string s(spec);
    size_t start = 0;
    while (start <= s.size()) {
        size_t end = s.find('\n', start);
        if (end == std::string::npos) end = s.size();
        std::string rule = s.substr(start, end - start);
        start = end + 1;
        if (rule.empty()) continue;
        const size_t eq = rule.rfind('=');
        if (eq == std::string::npos || eq == 0 || eq + 1 == rule.size()) {
            return fail(MTPL_ERR_INVALID_ARGUMENT, "tensor override '" + rule + "' is not of the form REGEX=DEVICE");
        }
        const std::string pattern = rule.substr(0, eq);
        const std::string device = rule.substr(eq + 1);
        try {
            std::regex check(pattern);
        } catch (const std::regex_error & e) {
            return fail(MTPL_ERR_INVALID_ARGUMENT, "tensor override pattern '" + pattern + "' is not a valid regex: " + e.what());
        }
        std::string known;
        ggml_backend_buffer_type_t buft = find_buffer_type(device, known);
        if (!buft) {
            return fail(MTPL_ERR_INVALID_ARGUMENT, "tensor override device '" + device + "' is unknown; available: " + known);
        }
        m.override_patterns.push_back(pattern);
        m.overrides.push_back({nullptr, buft});
    }
    for (size_t i = 0; i < m.overrides.size(); ++i) {
        m.overrides[i].pattern = m.override_patterns[i].c_str();
    }
    m.overrides.push_back({nullptr, nullptr});
    return MTPL_OK;
}

// Hyperparameters that llama.cpp asserts on (aborting the process) or loops on
// when they are inconsistent: check them here, the way llama.cpp reads them.
int32_t check_hparams(const gguf_context * g, const file_facts & f, const std::string & path) {
    const std::string a = f.arch + ".";
    auto bad = [&](const std::string & what) {
        return fail(MTPL_ERR_MODEL_LOAD, "invalid GGUF metadata in " + path + ": " + what);
    };
    auto need = [&](const char * key, uint32_t & v) -> bool {
        return get_uint(g, a + key, v);
    };
    // every key must be a scalar of an integer type if present (arrays are not used by glm4moe)
    for (const char * key : {"embedding_length", "attention.head_count", "attention.head_count_kv", "expert_count",
                             "expert_used_count", "expert_shared_count", "leading_dense_block_count",
                             "attention.key_length", "attention.value_length", "rope.dimension_count",
                             "expert_feed_forward_length", "feed_forward_length", "context_length",
                             "expert_gating_func"}) {
        const int64_t id = gguf_find_key(g, (a + key).c_str());
        uint32_t v = 0;
        if (id >= 0 && !get_uint(g, a + key, v)) {
            return bad(a + key + " must be a non-negative integer scalar");
        }
    }
    uint32_t n_embd = 0, n_head = 0, n_head_kv = 0, n_expert = 0, n_used = 0, n_shared = 0, n_dense = 0, n_ctx = 0;
    if (f.block_count > 512) return bad("block_count " + std::to_string(f.block_count) + " exceeds 512");
    if (!need("embedding_length", n_embd) || n_embd == 0 || n_embd > (1u << 17)) return bad("embedding_length missing or out of range");
    if (!need("attention.head_count", n_head) || n_head == 0 || n_head > 1024) return bad("attention.head_count missing or out of range");
    if (!need("attention.head_count_kv", n_head_kv)) n_head_kv = n_head;
    if (n_head_kv == 0 || n_head % n_head_kv != 0) return bad("attention.head_count_kv must divide attention.head_count");
    uint32_t k_len = 0, v_len = 0;
    if (!need("attention.key_length", k_len)) {
        if (n_embd % n_head != 0) return bad("embedding_length is not a multiple of attention.head_count");
        k_len = n_embd / n_head;
    }
    if (!need("attention.value_length", v_len)) v_len = k_len;
    if (k_len == 0 || k_len > 4096 || k_len != v_len) return bad("attention key/value lengths must be equal and in [1, 4096]");
    uint32_t n_rot = k_len;
    need("rope.dimension_count", n_rot);
    if (n_rot == 0 || n_rot > k_len || n_rot % 2 != 0) return bad("rope.dimension_count must be even and in [2, key_length]");
    if (!need("expert_count", n_expert) || n_expert == 0 || n_expert > 512) return bad("expert_count missing or out of [1, 512]");
    if (!need("expert_used_count", n_used) || n_used == 0 || n_used > n_expert) return bad("expert_used_count must be in [1, expert_count]");
    if (!need("expert_shared_count", n_shared) || n_shared > 64) return bad("expert_shared_count missing or out of range");
    if (need("leading_dense_block_count", n_dense) && n_dense > f.block_count) return bad("leading_dense_block_count exceeds block_count");
    uint32_t n_ff_exp = 0, n_ff = 0;
    if (need("expert_feed_forward_length", n_ff_exp) && (n_ff_exp == 0 || n_ff_exp > (1u << 20))) return bad("expert_feed_forward_length out of range");
    if (!need("feed_forward_length", n_ff) || n_ff == 0 || n_ff > (1u << 22)) return bad("feed_forward_length missing or out of range");
    if (need("context_length", n_ctx) && n_ctx == 0) return bad("context_length is 0");
    uint32_t gating = 0;
    if (need("expert_gating_func", gating) && gating > 2) return bad("expert_gating_func must be 0, 1 (softmax) or 2 (sigmoid)");
    // the vocabulary: token_embd rows must match the token list
    const int64_t tok_id = gguf_find_key(g, "tokenizer.ggml.tokens");
    if (tok_id < 0 || gguf_get_kv_type(g, tok_id) != GGUF_TYPE_ARRAY || gguf_get_arr_type(g, tok_id) != GGUF_TYPE_STRING) {
        return bad("tokenizer.ggml.tokens missing");
    }
    const size_t n_vocab = gguf_get_arr_n(g, tok_id);
    if (n_vocab == 0 || n_vocab > (1u << 24)) return bad("vocabulary size out of range");
    if (get_str(g, "tokenizer.ggml.model") != "gpt2") {
        return bad("tokenizer.ggml.model must be 'gpt2' (GLM's byte-level BPE), got '" +
                   get_str(g, "tokenizer.ggml.model") + "'");
    }
    {  // llama.cpp asserts that token strings are unique
        std::unordered_set<std::string> seen;
        seen.reserve(n_vocab);
        for (size_t i = 0; i < n_vocab; ++i) {
            if (!seen.insert(gguf_get_arr_str(g, tok_id, i)).second) {
                return bad("token " + std::to_string(i) + " duplicates an earlier token string");
            }
        }
    }
    for (const char * key : {"tokenizer.ggml.token_type", "tokenizer.ggml.scores"}) {
        const int64_t id = gguf_find_key(g, key);
        if (id >= 0 && (gguf_get_kv_type(g, id) != GGUF_TYPE_ARRAY || gguf_get_arr_n(g, id) != n_vocab ||
                        gguf_get_arr_type(g, id) != (std::string(key).back() == 'e' ? GGUF_TYPE_INT32 : GGUF_TYPE_FLOAT32))) {
            return bad(std::string(key) + " must be an array with one entry per token");
        }
    }
    for (const char * key : {"tokenizer.ggml.eos_token_id", "tokenizer.ggml.bos_token_id", "tokenizer.ggml.eot_token_id",
                             "tokenizer.ggml.padding_token_id", "tokenizer.ggml.unknown_token_id"}) {
        uint32_t id = 0;
        if (gguf_find_key(g, key) >= 0 && (!get_uint(g, key, id) || id >= n_vocab)) {
            return bad(std::string(key) + " is not a token of the vocabulary");
        }
    }
    return MTPL_OK;
}

} // namespace

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
    if (out.arch != k_supported_arch) {
        return fail(MTPL_ERR_UNSUPPORTED_ARCH, "unsupported architecture '" + out.arch + "' in " + path +
                                                   ": mtpllama runs GLM-4.5/4.6/4.7 files (architecture 'glm4moe')");
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

    if (int32_t st = check_hparams(g, out, path); st != MTPL_OK) {
        return st;
    }

    // count the tensors of the NextN blocks (the last `nextn` blocks)
    const uint32_t first_nextn = out.block_count - out.nextn;
    for (int64_t i = 0; i < out.n_tensors; ++i) {
        unsigned blk = 0;
        if (std::sscanf(gguf_get_tensor_name(g, i), "blk.%u.", &blk) == 1 && blk >= first_nextn && out.nextn > 0) {
            out.n_tensors_nextn++;
            out.nextn_bytes += (int64_t) gguf_get_tensor_size(g, i);
        }
    }

    if (out.nextn == 0) {
        out.mtp_problem = "the file declares no NextN (MTP) layers (" + out.arch + ".nextn_predict_layers is 0 or absent)";
    } else if (out.nextn != 1) {
        out.mtp_problem = "the file has " + std::to_string(out.nextn) + " NextN layers; GLM4-MoE MTP supports exactly one";
    } else {
        const std::string p = "blk." + std::to_string(first_nextn) + ".";
        for (const char * t : {"nextn.eh_proj.weight", "nextn.enorm.weight", "nextn.hnorm.weight", "ffn_gate_inp.weight",
                               "attn_norm.weight"}) {
            if (gguf_find_tensor(g, (p + t).c_str()) < 0) {
                out.mtp_problem = "the NextN block's tensors are missing (no " + p + t + "); the file is 'trunk-only'";
                break;
            }
        }
    }
    out.has_mtp = out.mtp_problem.empty();
    return MTPL_OK;
}

int32_t model_load(const mtpl_model_params & p, mtpl_model ** out) {
    const std::string path = p.path;
    file_facts facts;
    if (int32_t st = read_file_facts(path, facts); st != MTPL_OK) {
        return st;
    }
    if (p.mtp && !facts.has_mtp) {
        return fail(MTPL_ERR_NO_MTP_HEAD,
                    "cannot use MTP with " + path + ": " + facts.mtp_problem +
                        ". Many quantised GGUFs drop the NextN tensors; use a file that keeps them "
                        "(block " + std::to_string(facts.block_count - (facts.nextn ? facts.nextn : 1)) +
                        ", 'nextn.*'), or load with mtp=False for plain decoding.");
    }

    auto * m = new mtpl_model();
    if (int32_t st = parse_overrides(p.tensor_overrides, *m); st != MTPL_OK) {
        delete m;
        return st;
    }

    llama_model_params mp = llama_model_default_params();
    mp.n_gpu_layers = p.n_gpu_layers;
    mp.load_mode = p.use_mmap ? LLAMA_LOAD_MODE_MMAP : LLAMA_LOAD_MODE_NONE;
    mp.load_mtp = p.mtp != 0;
    mp.tensor_buft_overrides = m->overrides.empty() ? nullptr : m->overrides.data();

    clear_upstream_error();
    m->model = llama_model_load_from_file(path.c_str(), mp);
    if (!m->model) {
        const std::string why = upstream_error();
        delete m;
        return fail(MTPL_ERR_MODEL_LOAD, "llama.cpp could not load " + path + (why.empty() ? "" : ": " + why));
    }
    m->vocab = llama_model_get_vocab(m->model);

    mtpl_model_info & info = m->info;
    std::snprintf(info.arch, sizeof(info.arch), "%s", facts.arch.c_str());
    std::snprintf(info.name, sizeof(info.name), "%s", facts.name.c_str());
    info.n_vocab = llama_vocab_n_tokens(m->vocab);
    info.n_embd = llama_model_n_embd(m->model);
    info.n_layer = llama_model_n_layer(m->model);
    info.n_layer_nextn = (int32_t) facts.nextn;
    info.n_ctx_train = llama_model_n_ctx_train(m->model);
    info.file_has_mtp = facts.has_mtp ? 1 : 0;
    info.mtp_loaded = p.mtp ? 1 : 0;
    info.n_tensors_file = facts.n_tensors;
    info.n_tensors_nextn_file = facts.n_tensors_nextn;
    info.token_eos = llama_vocab_eos(m->vocab);
    info.model_bytes = (int64_t) llama_model_size(m->model);
    info.nextn_bytes_file = facts.nextn_bytes;
    info.n_params = (int64_t) llama_model_n_params(m->model);
    *out = m;
    return MTPL_OK;
}

void model_destroy(mtpl_model * m) {
    if (m->model) {
        llama_model_free(m->model);
    }
    delete m;
}

} // namespace mtpl
