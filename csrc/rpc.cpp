// RPC workers: everything goes through the RPC backend's registry procs, so a build without it
// (GGML_RPC=OFF) compiles and says so.
#include "rpc.h"

#include <atomic>
#include <map>
#include <mutex>
#include <stdexcept>

#include "util.h"

extern "C" {
#include "mtpllama.h"
}

namespace mtpl {
namespace {

std::mutex g_mutex;
std::map<std::string, ggml_backend_reg_t> g_registered;  // endpoint -> its registered backend
std::atomic<int32_t> g_timeout_ms{60000};

ggml_backend_reg_t rpc_reg() { return ggml_backend_reg_by_name("RPC"); }

template <typename F>
F proc(const char * name) {
    ggml_backend_reg_t reg = rpc_reg();
    return reg ? (F) ggml_backend_reg_get_proc_address(reg, name) : nullptr;
}


} // namespace

int32_t rpc_set_timeout(int32_t ms) {
    g_timeout_ms.store(ms > 0 ? ms : 0);
    if (auto * set = proc<void (*)(int)>("ggml_backend_rpc_set_timeout")) {
        set(g_timeout_ms.load());
    }
    return MTPL_OK;
}

int32_t rpc_timeout() { return g_timeout_ms.load(); }

int32_t rpc_devices(const std::vector<std::string> & endpoints, std::vector<ggml_backend_dev_t> & out) {
    using add_fn = ggml_backend_reg_t (*)(const char *);
    auto * add = proc<add_fn>("ggml_backend_rpc_add_server");
    if (!endpoints.empty() && !add) {
        return fail(MTPL_ERR_NO_BACKEND, "this build of mtpllama has no RPC backend (built with GGML_RPC=OFF)");
    }
    rpc_set_timeout(g_timeout_ms.load());
    std::lock_guard<std::mutex> lock(g_mutex);
    for (const std::string & ep : endpoints) {
        const size_t colon = ep.rfind(':');
        if (colon == std::string::npos || colon == 0 || colon + 1 == ep.size() ||
            ep.find_first_not_of("0123456789", colon + 1) != std::string::npos) {
            return fail(MTPL_ERR_INVALID_ARGUMENT, "RPC worker '" + ep + "' is not HOST:PORT");
        }
        auto it = g_registered.find(ep);
        if (it == g_registered.end()) {
            ggml_backend_reg_t reg = nullptr;
            try {
                reg = add(ep.c_str());
            } catch (const std::exception & e) {
                return fail(MTPL_ERR_MODEL_LOAD, e.what());
            }
            if (!reg) {
                return fail(MTPL_ERR_MODEL_LOAD, "RPC worker " + ep + " offers no device");
            }
            ggml_backend_register(reg);
            it = g_registered.emplace(ep, reg).first;
        }
        for (size_t i = 0; i < ggml_backend_reg_dev_count(it->second); ++i) {
            out.push_back(ggml_backend_reg_dev_get(it->second, i));
        }
    }
    return MTPL_OK;
}

bool rpc_any_registered() {
    std::lock_guard<std::mutex> lock(g_mutex);
    return !g_registered.empty();
}

uint64_t rpc_failures(std::string * why) {
    using failures_fn = uint64_t (*)(char *, size_t);
    static const failures_fn g_failures = proc<failures_fn>("ggml_backend_rpc_failures");  // every pass asks
    if (!g_failures) {
        return 0;
    }
    if (!why) {
        return g_failures(nullptr, 0);
    }
    char buf[512] = {0};
    const uint64_t n = g_failures(buf, sizeof(buf));
    *why = buf;
    return n;
}

int32_t rpc_serve(const std::string & endpoint, int32_t n_threads, const char * cache_dir) {
    using serve_fn = void (*)(const char *, const char *, size_t, size_t, ggml_backend_dev_t *);
    auto * serve = proc<serve_fn>("ggml_backend_rpc_start_server");
    if (!serve) {
        return fail(MTPL_ERR_NO_BACKEND, "this build of mtpllama has no RPC backend (built with GGML_RPC=OFF)");
    }
    ggml_backend_dev_t cpu = ggml_backend_dev_by_type(GGML_BACKEND_DEVICE_TYPE_CPU);
    if (!cpu) {
        return fail(MTPL_ERR_INTERNAL, "no CPU device");
    }
    serve(endpoint.c_str(), cache_dir, (size_t) n_threads, 1, &cpu);
    return fail(MTPL_ERR_INVALID_ARGUMENT, "could not serve RPC at " + endpoint + " (address in use, or not HOST:PORT)");
}

} // namespace mtpl
