// Loading: the file is validated first (inspect.cpp), then handed to llama.cpp with the NextN
// block loaded or skipped; what a user needs to know about it is recorded in the model's info.
#include <algorithm>
#include <cctype>
#include <cstdio>
#include <regex>

#include "chat_format.h"
#include "ggml-backend.h"
#include "inspect.h"
#include "llama-model.h"
#include "model.h"
#include "llama_ops.h"
#include "rpc.h"
#include "util.h"

namespace mtpl {
namespace {

std::string lower(std::string s) {
    std::transform(s.begin(), s.end(), s.begin(), [](unsigned char c) { return (char) std::tolower(c); });
    return s;
}

// A device by name ("CPU", "CUDA0", "RPC0"), case-insensitive, or an RPC worker's first device by its
// endpoint ("10.0.0.3:50052").
ggml_backend_dev_t find_device(const std::string & name, std::string & known) {
    const std::string want = lower(name);
    ggml_backend_dev_t found = nullptr;
    for (size_t i = 0; i < ggml_backend_dev_count(); ++i) {
        ggml_backend_dev_t dev = ggml_backend_dev_get(i);
        const bool rpc = std::string(ggml_backend_reg_name(ggml_backend_dev_backend_reg(dev))).rfind("RPC", 0) == 0;
        known += (known.empty() ? "" : ", ") + std::string(ggml_backend_dev_name(dev)) +
                 (rpc ? " (" + std::string(ggml_backend_dev_description(dev)) + ")" : "");
        if (!found && (lower(ggml_backend_dev_name(dev)) == want || (rpc && ggml_backend_dev_description(dev) == name))) {
            found = dev;
        }
    }
    return found;
}

// A buffer type by device (as find_device names them) or by buffer type name ("CUDA_Host").
ggml_backend_buffer_type_t find_buffer_type(const std::string & name, std::string & known) {
    if (ggml_backend_dev_t dev = find_device(name, known)) {
        return ggml_backend_dev_buffer_type(dev);
    }
    const std::string want = lower(name);
    for (size_t i = 0; i < ggml_backend_dev_count(); ++i) {
        ggml_backend_buffer_type_t buft = ggml_backend_dev_buffer_type(ggml_backend_dev_get(i));
        if (buft && lower(ggml_backend_buft_name(buft)) == want) {
            return buft;
        }
    }
    return nullptr;
}

// Rules "regex=DEVICE" (newline-separated), after `first` (rules that must win: the NextN block's).
int32_t parse_overrides(const char * spec, std::vector<std::pair<std::string, ggml_backend_buffer_type_t>> first,
                        override_list & out) {
    std::string s(spec ? spec : "");
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
        first.emplace_back(pattern, buft);
    }
    if (first.empty()) {
        return MTPL_OK;
    }
    for (auto & [pattern, buft] : first) {
        out.patterns.push_back(pattern);
        out.list.push_back({nullptr, buft});
    }
    for (size_t i = 0; i < out.list.size(); ++i) {
        out.list[i].pattern = out.patterns[i].c_str();
    }
    out.list.push_back({nullptr, nullptr});
    return MTPL_OK;
}

// The NextN blocks of a file: blk.<first>. .. blk.<block_count - 1>.
std::string nextn_pattern(const file_facts & f) {
    std::string alt;
    const uint32_t n = f.nextn ? f.nextn : 1;
    for (uint32_t il = f.block_count - n; il < f.block_count; ++il) {
        alt += (alt.empty() ? "" : "|") + std::to_string(il);
    }
    return "^blk\\.(" + alt + ")\\.";
}

} // namespace

int32_t model_load(const mtpl_model_params & p, mtpl_model ** out) {
    const std::string path = p.path;
    file_facts facts;
    if (int32_t st = read_file_facts(path, facts); st != MTPL_OK) {
        return st;
    }
    if (!facts.def) {
        return fail(MTPL_ERR_UNSUPPORTED_ARCH, "unsupported architecture '" + facts.arch + "' in " + path +
                                                   ": mtpllama runs " + arch_names());
    }
    if (!facts.has_trunk) {
        return fail(MTPL_ERR_MODEL_LOAD, path + " is MTP-only (no trunk blocks): load its model's trunk, with this "
                                                "file as mtp_path");
    }
    const std::string head_path = p.mtp_path ? p.mtp_path : "";
    file_facts head;
    if (!head_path.empty()) {
        if (!p.mtp) {
            return fail(MTPL_ERR_INVALID_ARGUMENT, "mtp_path is given but MTP is off (mtp=False)");
        }
        if (int32_t st = read_file_facts(head_path, head); st != MTPL_OK) {
            return st;
        }
        if (int32_t st = check_pair(path, facts, head_path, head); st != MTPL_OK) {
            return st;
        }
    } else if (p.mtp && !facts.has_mtp) {
        return fail(MTPL_ERR_NO_MTP_HEAD,
                    "cannot use MTP with " + path + ": " + facts.mtp_problem +
                        ". Many quantised GGUFs drop the NextN tensors; use a file that keeps them "
                        "(block " + std::to_string(facts.block_count - (facts.nextn ? facts.nextn : 1)) +
                        ", 'nextn.*'), pass an MTP-only file of the same model as mtp_path (`mtpllama extract-mtp` "
                        "writes one from a full file), or load with mtp=False for plain decoding.");
    }

    // RPC workers' devices first (llama.cpp's order: fewer transfers), then this machine's GPUs.  Once a
    // worker is registered the list is explicit, so a model never spills onto another model's workers.
    // Registered before the names below are resolved: mtp_device and tensor_overrides may name them.
    std::vector<std::string> endpoints;
    const std::string rpc_all = p.rpc_servers ? p.rpc_servers : "";
    for (size_t start = 0; start < rpc_all.size();) {
        size_t end = rpc_all.find('\n', start);
        if (end == std::string::npos) end = rpc_all.size();
        if (end > start) endpoints.push_back(rpc_all.substr(start, end - start));
        start = end + 1;
    }
    std::vector<ggml_backend_dev_t> devices;
    if (int32_t st = rpc_devices(endpoints, devices); st != MTPL_OK) {
        return st;
    }
    if (rpc_any_registered()) {
        for (size_t i = 0; i < ggml_backend_dev_count(); ++i) {
            ggml_backend_dev_t dev = ggml_backend_dev_get(i);
            const auto type = ggml_backend_dev_type(dev);
            if ((type == GGML_BACKEND_DEVICE_TYPE_GPU || type == GGML_BACKEND_DEVICE_TYPE_IGPU) &&
                std::string(ggml_backend_reg_name(ggml_backend_dev_backend_reg(dev))).rfind("RPC", 0) != 0) {
                devices.push_back(dev);
            }
        }
        devices.push_back(nullptr);
    }

    // mtp_device: the NextN layer's KV cache and compute follow the layer (patches/0019); on a device other
    // than the CPU its weights go there too, ahead of tensor_overrides (so "exps=CPU" keeps the trunk's
    // experts in RAM and the head's with the head).  On the CPU the weights keep the CPU's own buffer
    // types (repacked, AMX), which an override would bypass.
    ggml_backend_dev_t mtp_dev = nullptr;
    if (p.mtp_device && *p.mtp_device) {
        std::string known;
        mtp_dev = find_device(p.mtp_device, known);
        if (!mtp_dev) {
            return fail(MTPL_ERR_INVALID_ARGUMENT, std::string("mtp_device '") + p.mtp_device +
                                                       "' is unknown; available: " + known);
        }
        if (!p.mtp) {
            return fail(MTPL_ERR_INVALID_ARGUMENT, "mtp_device is given but MTP is off (mtp=False)");
        }
    }
    // With layers on RPC workers the head stays on this machine unless told otherwise (its first GPU, else
    // the CPU): every drafted token would otherwise cost a round trip (benchmarks/RESULTS.md, "RPC").
    if (!mtp_dev && p.mtp && !endpoints.empty()) {
        mtp_dev = ggml_backend_dev_by_type(GGML_BACKEND_DEVICE_TYPE_CPU);
        for (ggml_backend_dev_t dev : devices) {
            if (dev && std::string(ggml_backend_reg_name(ggml_backend_dev_backend_reg(dev))).rfind("RPC", 0) != 0) {
                mtp_dev = dev;
                break;
            }
        }
    }
    const bool cpu_head = mtp_dev && ggml_backend_dev_type(mtp_dev) == GGML_BACKEND_DEVICE_TYPE_CPU;
    auto head_rules = [&](const file_facts & f) {
        std::vector<std::pair<std::string, ggml_backend_buffer_type_t>> r;
        if (mtp_dev && !cpu_head) {
            r.emplace_back(nextn_pattern(f), ggml_backend_dev_buffer_type(mtp_dev));
        }
        return r;
    };

    auto * m = new mtpl_model();
    m->arch = facts.def;
    if (int32_t st = parse_overrides(p.tensor_overrides, head_path.empty() ? head_rules(facts) : decltype(head_rules(facts)){},
                                     m->overrides);
        st != MTPL_OK) {
        delete m;
        return st;
    }
    if (!head_path.empty()) {
        if (int32_t st = parse_overrides(p.tensor_overrides, head_rules(head), m->head_overrides); st != MTPL_OK) {
            delete m;
            return st;
        }
    }

    llama_model_params mp = llama_model_default_params();
    mp.devices = devices.empty() ? nullptr : devices.data();
    mp.n_gpu_layers = p.n_gpu_layers;
    mp.load_mode = p.use_mmap ? LLAMA_LOAD_MODE_MMAP : LLAMA_LOAD_MODE_NONE;
    mp.load_mtp = p.mtp != 0 && head_path.empty();
    mp.tensor_buft_overrides = m->overrides.list.empty() ? nullptr : m->overrides.list.data();
    mp.nextn_device = mtp_dev;

    clear_upstream_error();
    m->model = llama_model_load_from_file(path.c_str(), mp);
    if (!m->model) {
        const std::string why = upstream_error();
        delete m;
        return fail(MTPL_ERR_MODEL_LOAD, "llama.cpp could not load " + path + (why.empty() ? "" : ": " + why));
    }
    if (!head_path.empty()) {
        mp.load_mtp = true;
        mp.tensor_buft_overrides = m->head_overrides.list.empty() ? nullptr : m->head_overrides.list.data();
        clear_upstream_error();
        m->head = llama_model_load_from_file(head_path.c_str(), mp);
        if (!m->head) {
            const std::string why = upstream_error();
            model_destroy(m);
            return fail(MTPL_ERR_MODEL_LOAD, "llama.cpp could not load " + head_path + (why.empty() ? "" : ": " + why));
        }
    }
    m->vocab = llama_model_get_vocab(m->model);

    mtpl_model_info & info = m->info;
    std::snprintf(info.arch, sizeof(info.arch), "%s", facts.arch.c_str());
    std::snprintf(info.name, sizeof(info.name), "%s", facts.name.c_str());
    info.n_vocab = llama_vocab_n_tokens(m->vocab);
    info.n_embd = llama_model_n_embd(m->model);
    info.n_embd_state = llama_model_n_embd_out(m->model);
    info.n_layer = llama_model_n_layer(m->model);
    const file_facts & nextn = head_path.empty() ? facts : head;
    info.n_layer_nextn = (int32_t) nextn.nextn;
    info.n_ctx_train = llama_model_n_ctx_train(m->model);
    info.file_has_mtp = nextn.has_mtp ? 1 : 0;
    info.mtp_loaded = p.mtp ? 1 : 0;
    info.n_tensors_file = facts.n_tensors;
    info.n_tensors_nextn_file = nextn.n_tensors_nextn;
    info.token_eos = llama_vocab_eos(m->vocab);
    info.model_bytes = (int64_t) llama_model_size(m->model);
    info.nextn_bytes_file = nextn.nextn_bytes;
    info.n_params = (int64_t) llama_model_n_params(m->model) + (m->head ? (int64_t) llama_model_n_params(m->head) : 0);
    info.mtp_separate = m->head ? 1 : 0;
    info.recurrent = m->arch->recurrent ? 1 : 0;
    if (p.mtp) {
        const llama_model * hm = m->head ? m->head : m->model;
        const int il = (int) hm->hparams.n_layer_all - 1;
        std::snprintf(info.mtp_device, sizeof(info.mtp_device), "%s", ggml_backend_dev_name(hm->dev_layer(il)));
    }
    release_worker_threads();  // loading (repacking weights) made this thread a team: it may never compute
    *out = m;
    return MTPL_OK;
}

void model_destroy(mtpl_model * m) {
    chat_templates_free(m->chat);
    if (m->head) {
        llama_model_free(m->head);
    }
    if (m->model) {
        llama_model_free(m->model);
    }
    delete m;
}

} // namespace mtpl
