// Loading: validate the GGUF file ourselves, then hand it to llama.cpp with the
// NextN block loaded or skipped, and record what a user needs to know about it.
#include "engine.h"

#include <algorithm>
#include <cctype>
#include <cstdio>
#include <cstring>
#include <regex>
#include <sys/stat.h>

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
