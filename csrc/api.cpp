// The C surface: argument checks, status codes, the thread-local last error, and
// the log hook.  Everything that can be checked here is checked before llama.cpp
// sees it, because upstream aborts the process on many failed asserts.
#include <algorithm>
#include <atomic>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <exception>
#include <mutex>
#include <new>
#include <vector>

#include "chat_format.h"
#include "rpc.h"
#include "controller_sim.h"
#include "ggml.h"
#include "ggml-backend.h"
#include "ggml-cpu.h"
#include "inspect.h"
#include "llama_ops.h"
#include "group.h"
#include "session.h"
#include "util.h"
#include "verify.h"

#ifndef MTPLLAMA_VERSION
#define MTPLLAMA_VERSION "0.0.0+unknown"
#endif
#ifndef MTPLLAMA_UPSTREAM_COMMIT
#define MTPLLAMA_UPSTREAM_COMMIT "unknown"
#endif
#ifndef MTPLLAMA_PATCHES_HASH
#define MTPLLAMA_PATCHES_HASH "unknown"
#endif

namespace {

thread_local std::string t_last_error;
thread_local std::string t_upstream_error;
thread_local std::string t_log_line;
thread_local int32_t t_log_level = GGML_LOG_LEVEL_INFO;

std::mutex g_log_mutex;
mtpl_log_fn g_log_fn = nullptr;
void * g_log_user = nullptr;
int32_t g_log_min = MTPL_LOG_WARN;

// llama.cpp logs in pieces; assemble lines per thread, remember the first error
// line since the last clear (the cause; what follows reports the failure upward),
// and hand complete lines to the user's callback.
void log_hook(ggml_log_level level, const char * text, void * /*user*/) {
    if (level != GGML_LOG_LEVEL_CONT) {
        t_log_level = (int32_t) level;
    }
    t_log_line += text ? text : "";
    if (t_log_line.empty() || t_log_line.back() != '\n') {
        return;
    }
    t_log_line.pop_back();
    if (t_log_level == GGML_LOG_LEVEL_ERROR && t_upstream_error.empty()) {
        t_upstream_error = t_log_line;
    }
    {
        std::lock_guard<std::mutex> lock(g_log_mutex);
        if (g_log_fn && t_log_level >= g_log_min) {
            g_log_fn(t_log_level, t_log_line.c_str(), g_log_user);
        }
    }
    t_log_line.clear();
}

// Refuses concurrent use of one session from two threads.
struct session_guard {
    mtpl_session * s;
    bool ok;
    explicit session_guard(mtpl_session * s_) : s(s_) {
        bool expected = false;
        ok = s->busy.compare_exchange_strong(expected, true);
    }
    ~session_guard() {
        if (ok) {
            s->busy.store(false);
        }
    }
};

template <typename F>
int32_t guarded(F && f) {
    mtpl::clear_error();
    try {
        return f();
    } catch (const std::bad_alloc &) {
        return mtpl::fail(MTPL_ERR_INTERNAL, "out of memory");
    } catch (const std::exception & e) {
        return mtpl::fail(MTPL_ERR_INTERNAL, std::string("internal error: ") + e.what());
    } catch (...) {
        return mtpl::fail(MTPL_ERR_INTERNAL, "internal error (unknown exception)");
    }
}

template <typename F>
int32_t with_session(mtpl_session * s, F && f) {
    return guarded([&]() -> int32_t {
        if (!s) {
            return mtpl::fail(MTPL_ERR_INVALID_ARGUMENT, "session is NULL (closed?)");
        }
        session_guard g(s);
        if (!g.ok) {
            return mtpl::fail(MTPL_ERR_BUSY, "this session is already in use by another thread; "
                                             "use one session per thread");
        }
        if (!s->group) {
            return f();
        }
        // a group's sessions evaluate in one context: one at a time, each pass aborting on its own cancel
        std::lock_guard<std::mutex> lock(s->group->mu);
        s->shared->watch = &s->cancel;
        const int32_t st = f();
        s->shared->watch = nullptr;
        return st;
    });
}

} // namespace

namespace mtpl {

int32_t fail(int32_t status, const std::string & msg) {
    t_last_error = msg;
    return status;
}

void clear_error() { t_last_error.clear(); }
std::string upstream_error() { return t_upstream_error; }
void clear_upstream_error() { t_upstream_error.clear(); }

// Every backend that offers a batch-invariant mode (the CPU's is linked in; CUDA's, patches/0020, is
// found through its registry when the build has it).
namespace {
std::atomic<int> g_invariant_rows{0};
}

int batch_invariant_rows() { return g_invariant_rows.load(); }

void set_batch_invariant(int max_rows) {
    g_invariant_rows.store(max_rows);
    ggml_cpu_set_batch_invariant(max_rows);
    for (size_t i = 0; i < ggml_backend_reg_count(); ++i) {
        ggml_backend_reg_t reg = ggml_backend_reg_get(i);
        if (auto * fn = (void (*)(int)) ggml_backend_reg_get_proc_address(reg, "ggml_backend_set_batch_invariant")) {
            fn(max_rows);
        }
    }
}

void ensure_backend() {
    static std::once_flag once;
    std::call_once(once, [] {
        llama_log_set(log_hook, nullptr);
        llama_backend_init();
        // Verification batches (at most MTPL_MAX_DRAFT + 1 rows) must compute each row as plain
        // decoding computes it alone, or near-ties flip and greedy MTP output differs from plain
        // output (patches/0003, 0020).
        set_batch_invariant(MTPL_MAX_DRAFT + 1);
        // Decoding streams every weight once per step: 2 MiB pages spare TLB misses (patches/0007,
        // 0010; the gain is in benchmarks/RESULTS.md).
        ggml_backend_cpu_buffer_set_huge_pages(true);
    });
}

} // namespace mtpl

extern "C" {

const char * mtpl_version(void) { return MTPLLAMA_VERSION; }
const char * mtpl_upstream_commit(void) { return MTPLLAMA_UPSTREAM_COMMIT; }
const char * mtpl_patches_hash(void) { return MTPLLAMA_PATCHES_HASH; }
const char * mtpl_last_error(void) { return t_last_error.c_str(); }

int32_t mtpl_set_log(mtpl_log_fn fn, void * user_data, int32_t min_level) {
    mtpl::ensure_backend();
    std::lock_guard<std::mutex> lock(g_log_mutex);
    g_log_fn = fn;
    g_log_user = user_data;
    g_log_min = min_level;
    return MTPL_OK;
}

int32_t mtpl_controller_simulate(const mtpl_controller_sim * sim, int32_t * out_drafts, double * out_tokens,
                                 double * out_seconds) {
    return guarded([&]() -> int32_t {
        if (!sim || !out_drafts || !out_tokens || !out_seconds) {
            return mtpl::fail(MTPL_ERR_INVALID_ARGUMENT, "sim, out_drafts, out_tokens and out_seconds must not be NULL");
        }
        if (sim->k_max < 0 || sim->k_max > MTPL_MAX_DRAFT || sim->n_steps < 0) {
            return mtpl::fail(MTPL_ERR_INVALID_ARGUMENT, "k_max must be in 0.." + std::to_string(MTPL_MAX_DRAFT) +
                                                             " and n_steps >= 0");
        }
        const auto time_ok = [](double t) { return t >= 0.0 && t < 1e6; };
        bool ok = time_ok(sim->head_s) && time_ok(sim->draft_s) && time_ok(sim->other_s) && time_ok(sim->catch_up_s) &&
                  time_ok(sim->noise) && time_ok(sim->speed_after) && sim->burst_steps >= 0 && sim->text_steps >= 0 &&
                  (sim->burst_steps == 0 || (sim->burst_speed > 0.0 && sim->burst_speed < 1e6));
        for (int32_t k = 0; k <= sim->k_max; ++k) {
            ok = ok && sim->verify_s[k] > 0.0 && sim->verify_s[k] < 1e6;
        }
        for (int32_t i = 0; i < MTPL_MAX_DRAFT; ++i) {
            ok = ok && sim->conf_lo[i] >= 0.0 && sim->conf_lo[i] <= sim->conf_hi[i] && sim->conf_hi[i] <= 1.0;
        }
        if (!ok) {
            return mtpl::fail(MTPL_ERR_INVALID_ARGUMENT, "times must be in [0, 1e6), verify_s[k] > 0 for k <= k_max, "
                                                         "0 <= conf_lo[i] <= conf_hi[i] <= 1, text_steps >= 0");
        }
        mtpl::controller_simulate(*sim, out_drafts, *out_tokens, *out_seconds);
        return MTPL_OK;
    });
}

int32_t mtpl_release_threads(void) {
    mtpl::release_worker_threads();
    return MTPL_OK;
}

int32_t mtpl_set_batch_invariant(int32_t enabled) {
    mtpl::ensure_backend();
    mtpl::set_batch_invariant(enabled ? MTPL_MAX_DRAFT + 1 : 0);
    return MTPL_OK;
}

int32_t mtpl_get_batch_invariant(void) {
    mtpl::ensure_backend();
    return ggml_cpu_batch_invariant(1) ? 1 : 0;
}

int32_t mtpl_devices(char * buf, int64_t cap, int64_t * n_out) {
    return guarded([&]() -> int32_t {
        mtpl::ensure_backend();
        if (!buf || !n_out || cap <= 0) {
            return mtpl::fail(MTPL_ERR_INVALID_ARGUMENT, "bad arguments to mtpl_devices");
        }
        std::string text;
        for (size_t i = 0; i < ggml_backend_dev_count(); ++i) {
            ggml_backend_dev_t dev = ggml_backend_dev_get(i);
            const char * kind = "gpu";
            switch (ggml_backend_dev_type(dev)) {
                case GGML_BACKEND_DEVICE_TYPE_CPU: kind = "cpu"; break;
                case GGML_BACKEND_DEVICE_TYPE_IGPU: kind = "igpu"; break;
                case GGML_BACKEND_DEVICE_TYPE_ACCEL: kind = "accel"; break;
                default: break;
            }
            size_t free = 0, total = 0;
            try {
                ggml_backend_dev_memory(dev, &free, &total);
            } catch (const std::exception &) {
                free = total = 0;  // an RPC worker that no longer answers (patches/0022): listed, with no memory
            }
            std::string desc = ggml_backend_dev_description(dev);
            for (char & c : desc) {
                if (c == '\t' || c == '\n') c = ' ';
            }
            text += std::string(ggml_backend_dev_name(dev)) + "\t" + desc + "\t" + kind + "\t" + std::to_string(free) +
                    "\t" + std::to_string(total) + "\n";
        }
        *n_out = (int64_t) text.size();
        if ((int64_t) text.size() + 1 > cap) {
            return mtpl::fail(MTPL_ERR_BUFFER_TOO_SMALL, "buffer of " + std::to_string(cap) + " bytes is too small (" +
                                                             std::to_string(text.size() + 1) + " needed)");
        }
        std::memcpy(buf, text.c_str(), text.size() + 1);
        return MTPL_OK;
    });
}

int32_t mtpl_set_rpc_timeout(int32_t ms) {
    mtpl::ensure_backend();
    if (ms < 0) {
        return mtpl::fail(MTPL_ERR_INVALID_ARGUMENT, "the RPC timeout must be >= 0 ms (0: wait forever)");
    }
    return mtpl::rpc_set_timeout(ms);
}

int32_t mtpl_get_rpc_timeout(int32_t * ms) {
    if (!ms) {
        return mtpl::fail(MTPL_ERR_INVALID_ARGUMENT, "ms must not be NULL");
    }
    *ms = mtpl::rpc_timeout();
    return MTPL_OK;
}

int32_t mtpl_rpc_serve(const char * endpoint, int32_t n_threads, const char * cache_dir) {
    return guarded([&]() -> int32_t {
        mtpl::ensure_backend();
        if (!endpoint || !*endpoint || n_threads < 1) {
            return mtpl::fail(MTPL_ERR_INVALID_ARGUMENT, "mtpl_rpc_serve needs an endpoint and n_threads >= 1");
        }
        return mtpl::rpc_serve(endpoint, n_threads, cache_dir);
    });
}

int32_t mtpl_cuda_graph_counts(int64_t * reused, int64_t * captured, int64_t * direct) {
    mtpl::ensure_backend();
    if (!reused || !captured || !direct) {
        return mtpl::fail(MTPL_ERR_INVALID_ARGUMENT, "reused, captured and direct must not be NULL");
    }
    ggml_backend_reg_t reg = ggml_backend_reg_by_name("CUDA");
    auto * fn = reg ? (void (*)(uint64_t *, uint64_t *, uint64_t *)) ggml_backend_reg_get_proc_address(
                          reg, "ggml_backend_cuda_graph_counts")
                    : nullptr;
    if (!fn) {
        return mtpl::fail(MTPL_ERR_NO_BACKEND, "this build of mtpllama has no CUDA backend");
    }
    uint64_t r = 0, c = 0, d = 0;
    fn(&r, &c, &d);
    *reused = (int64_t) r;
    *captured = (int64_t) c;
    *direct = (int64_t) d;
    return MTPL_OK;
}

int32_t mtpl_set_huge_pages(int32_t enabled) {
    mtpl::ensure_backend();
    ggml_backend_cpu_buffer_set_huge_pages(enabled != 0);
    return MTPL_OK;
}

int32_t mtpl_get_huge_pages(void) {
    mtpl::ensure_backend();
    return ggml_backend_cpu_buffer_huge_pages() ? 1 : 0;
}

int32_t mtpl_file_inspect(const char * path, mtpl_file_info * out) {
    return guarded([&]() -> int32_t {
        if (!path || !*path || !out) {
            return mtpl::fail(MTPL_ERR_INVALID_ARGUMENT, "path must be a non-empty string and out not NULL");
        }
        mtpl::ensure_backend();
        mtpl::file_facts f;
        if (int32_t st = mtpl::read_file_facts(path, f); st != MTPL_OK) {
            return st;
        }
        *out = mtpl_file_info{};
        std::snprintf(out->arch, sizeof(out->arch), "%s", f.arch.c_str());
        std::snprintf(out->name, sizeof(out->name), "%s", f.name.c_str());
        out->supported = f.def ? 1 : 0;
        out->block_count = (int32_t) f.block_count;
        out->n_layer_nextn = (int32_t) f.nextn;
        out->n_tensors = f.n_tensors;
        out->n_tensors_nextn = f.n_tensors_nextn;
        out->nextn_bytes = f.nextn_bytes;
        out->has_mtp = f.has_mtp ? 1 : 0;
        std::snprintf(out->mtp_problem, sizeof(out->mtp_problem), "%s", f.mtp_problem.c_str());
        std::snprintf(out->kind, sizeof(out->kind), "%s", f.def ? mtpl::file_kind(f) : "");
        std::snprintf(out->attention, sizeof(out->attention), "%s", f.attention.c_str());
        return MTPL_OK;
    });
}

int32_t mtpl_model_load(const mtpl_model_params * params, mtpl_model ** out) {
    return guarded([&]() -> int32_t {
        if (!params || !out) {
            return mtpl::fail(MTPL_ERR_INVALID_ARGUMENT, "params and out must not be NULL");
        }
        *out = nullptr;
        if (!params->path || !*params->path) {
            return mtpl::fail(MTPL_ERR_INVALID_ARGUMENT, "model path is empty");
        }
        mtpl::ensure_backend();
        return mtpl::model_load(*params, out);
    });
}

int32_t mtpl_model_free(mtpl_model * model) {
    return guarded([&]() -> int32_t {
        if (!model) {
            return MTPL_OK;
        }
        if (model->n_sessions.load() > 0) {
            return mtpl::fail(MTPL_ERR_BUSY, "the model still has " + std::to_string(model->n_sessions.load()) +
                                                 " open session(s); close them first");
        }
        mtpl::model_destroy(model);
        return MTPL_OK;
    });
}

int32_t mtpl_model_get_info(const mtpl_model * model, mtpl_model_info * out) {
    return guarded([&]() -> int32_t {
        if (!model || !out) {
            return mtpl::fail(MTPL_ERR_INVALID_ARGUMENT, "model and out must not be NULL");
        }
        *out = model->info;
        return MTPL_OK;
    });
}

int32_t mtpl_model_meta(const mtpl_model * model, const char * key, char * buf, int32_t cap, int32_t * n_out) {
    return guarded([&]() -> int32_t {
        if (!model || !key || !n_out || cap < 0 || (cap > 0 && !buf)) {
            return mtpl::fail(MTPL_ERR_INVALID_ARGUMENT, "bad arguments to mtpl_model_meta");
        }
        // llama_model_meta_val_str returns the full length and writes a NUL-terminated prefix
        char probe[1];
        const int32_t n = llama_model_meta_val_str(model->model, key, cap > 0 ? buf : probe, cap > 0 ? (size_t) cap : 1);
        *n_out = n;
        if (n >= 0 && n + 1 > cap) {
            return mtpl::fail(MTPL_ERR_BUFFER_TOO_SMALL, "buffer too small");
        }
        return MTPL_OK;
    });
}

int32_t mtpl_tokenize(const mtpl_model * model, const char * text, int32_t text_len, int32_t add_special,
                      int32_t parse_special, int32_t * out, int32_t cap, int32_t * n_out) {
    return guarded([&]() -> int32_t {
        if (!model || !n_out || text_len < 0 || (text_len > 0 && !text) || cap < 0 || (cap > 0 && !out)) {
            return mtpl::fail(MTPL_ERR_INVALID_ARGUMENT, "bad arguments to mtpl_tokenize");
        }
        const int32_t n = llama_tokenize(model->vocab, text ? text : "", text_len, out, cap, add_special != 0,
                                         parse_special != 0);
        if (n < 0) {
            if (n == INT32_MIN) {
                return mtpl::fail(MTPL_ERR_INVALID_ARGUMENT, "text too long to tokenize");
            }
            *n_out = -n;
            return mtpl::fail(MTPL_ERR_BUFFER_TOO_SMALL, "token buffer too small");
        }
        *n_out = n;
        return MTPL_OK;
    });
}

int32_t mtpl_detokenize(const mtpl_model * model, const int32_t * tokens, int32_t n_tokens, char * buf,
                        int32_t cap, int32_t * n_out) {
    return guarded([&]() -> int32_t {
        if (!model || !n_out || n_tokens < 0 || (n_tokens > 0 && !tokens) || cap < 0 || (cap > 0 && !buf)) {
            return mtpl::fail(MTPL_ERR_INVALID_ARGUMENT, "bad arguments to mtpl_detokenize");
        }
        for (int32_t i = 0; i < n_tokens; ++i) {
            if (tokens[i] < 0 || tokens[i] >= model->info.n_vocab) {
                return mtpl::fail(MTPL_ERR_INVALID_ARGUMENT, "token id " + std::to_string(tokens[i]) +
                                                                 " is outside the vocabulary [0, " +
                                                                 std::to_string(model->info.n_vocab) + ")");
            }
        }
        const int32_t n = llama_detokenize(model->vocab, tokens, n_tokens, buf, cap, false, false);
        if (n < 0) {
            *n_out = -n;
            return mtpl::fail(MTPL_ERR_BUFFER_TOO_SMALL, "text buffer too small");
        }
        *n_out = n;
        return MTPL_OK;
    });
}

int32_t mtpl_vocab_pieces(const mtpl_model * model, char * buf, int64_t cap, int64_t * offsets, int64_t * n_out) {
    return guarded([&]() -> int32_t {
        if (!model || !n_out || cap < 0 || (cap > 0 && (!buf || !offsets))) {
            return mtpl::fail(MTPL_ERR_INVALID_ARGUMENT, "bad arguments to mtpl_vocab_pieces");
        }
        char tmp[256];
        int64_t total = 0;
        const int32_t n_vocab = model->info.n_vocab;
        for (int32_t t = 0; t < n_vocab; ++t) {
            int32_t n = llama_token_to_piece(model->vocab, t, tmp, sizeof(tmp), 0, false);
            std::string big;
            const char * src = tmp;
            if (n < 0) {
                big.resize((size_t) -n);
                n = llama_token_to_piece(model->vocab, t, big.data(), (int32_t) big.size(), 0, false);
                src = big.data();
            }
            if (cap > 0) {
                offsets[t] = total;
                if (total + n <= cap) {
                    std::memcpy(buf + total, src, (size_t) n);
                }
            }
            total += n;
        }
        if (cap > 0) {
            offsets[n_vocab] = total;
        }
        *n_out = total;
        if (total > cap) {
            return mtpl::fail(MTPL_ERR_BUFFER_TOO_SMALL, "piece buffer too small");
        }
        return MTPL_OK;
    });
}

int32_t mtpl_token_is_eog(const mtpl_model * model, int32_t token, int32_t * out) {
    return guarded([&]() -> int32_t {
        if (!model || !out) {
            return mtpl::fail(MTPL_ERR_INVALID_ARGUMENT, "model and out must not be NULL");
        }
        if (token < 0 || token >= model->info.n_vocab) {
            return mtpl::fail(MTPL_ERR_INVALID_ARGUMENT, "token id out of range");
        }
        *out = llama_vocab_is_eog(model->vocab, token) ? 1 : 0;
        return MTPL_OK;
    });
}

int32_t mtpl_session_new(mtpl_model * model, const mtpl_session_params * params, mtpl_session ** out) {
    return guarded([&]() -> int32_t {
        if (!model || !params || !out) {
            return mtpl::fail(MTPL_ERR_INVALID_ARGUMENT, "model, params and out must not be NULL");
        }
        *out = nullptr;
        return mtpl::session_create(model, *params, out);
    });
}

int32_t mtpl_session_free(mtpl_session * session) {
    return guarded([&]() -> int32_t {
        if (!session) {
            return MTPL_OK;
        }
        if (session->group) {
            return mtpl::fail(MTPL_ERR_INVALID_ARGUMENT, "this session belongs to a group: free the group");
        }
        bool expected = false;
        if (!session->busy.compare_exchange_strong(expected, true)) {
            return mtpl::fail(MTPL_ERR_BUSY, "cannot free a session while another thread uses it");
        }
        mtpl::session_destroy(session);
        return MTPL_OK;
    });
}

int32_t mtpl_group_new(mtpl_model * model, const mtpl_group_params * params, mtpl_group ** out) {
    return guarded([&]() -> int32_t {
        if (!model || !params || !out) {
            return mtpl::fail(MTPL_ERR_INVALID_ARGUMENT, "model, params and out must not be NULL");
        }
        *out = nullptr;
        return mtpl::group_create(model, *params, out);
    });
}

int32_t mtpl_group_free(mtpl_group * group) {
    return guarded([&]() -> int32_t {
        if (!group) {
            return MTPL_OK;
        }
        std::vector<mtpl_session *> held;
        for (mtpl_session * s : group->sessions) {
            bool expected = false;
            if (!s->busy.compare_exchange_strong(expected, true)) {
                for (mtpl_session * h : held) {
                    h->busy.store(false);
                }
                return mtpl::fail(MTPL_ERR_BUSY, "cannot free a group while another thread uses one of its sessions");
            }
            held.push_back(s);
        }
        mtpl::group_destroy(group);
        return MTPL_OK;
    });
}

int32_t mtpl_group_session(mtpl_group * group, int32_t i, mtpl_session ** out) {
    return guarded([&]() -> int32_t {
        if (!group || !out) {
            return mtpl::fail(MTPL_ERR_INVALID_ARGUMENT, "group and out must not be NULL");
        }
        if (i < 0 || i >= (int32_t) group->sessions.size()) {
            return mtpl::fail(MTPL_ERR_INVALID_ARGUMENT, "session index " + std::to_string(i) + " is outside [0, " +
                                                             std::to_string(group->sessions.size()) + ")");
        }
        *out = group->sessions[(size_t) i];
        return MTPL_OK;
    });
}

int32_t mtpl_group_step(mtpl_group * group, int32_t n, mtpl_session * const * sessions, const int32_t * n_max,
                        int32_t * out_tokens, int32_t cap, mtpl_step_result * results, int32_t * statuses) {
    return guarded([&]() -> int32_t {
        if (!group || n < 0 || (n > 0 && (!sessions || !n_max || !out_tokens || !results || !statuses))) {
            return mtpl::fail(MTPL_ERR_INVALID_ARGUMENT, "bad arguments to mtpl_group_step");
        }
        if (n > (int32_t) group->sessions.size()) {
            return mtpl::fail(MTPL_ERR_INVALID_ARGUMENT, "more sessions than the group has");
        }
        if (cap < MTPL_MAX_DRAFT + 2) {
            return mtpl::fail(MTPL_ERR_INVALID_ARGUMENT, "cap must be >= MTPL_MAX_DRAFT + 2");
        }
        for (int32_t i = 0; i < n; ++i) {
            if (!sessions[i] || sessions[i]->group != group) {
                return mtpl::fail(MTPL_ERR_INVALID_ARGUMENT, "session " + std::to_string(i) + " is not one of this group's");
            }
            if (n_max[i] < 1) {
                return mtpl::fail(MTPL_ERR_INVALID_ARGUMENT, "n_max must be >= 1");
            }
            for (int32_t j = 0; j < i; ++j) {
                if (sessions[j] == sessions[i]) {
                    return mtpl::fail(MTPL_ERR_INVALID_ARGUMENT, "a session is named twice");
                }
            }
        }
        // hold every session, then the context
        int32_t held = 0;
        for (; held < n; ++held) {
            bool expected = false;
            if (!sessions[held]->busy.compare_exchange_strong(expected, true)) {
                break;
            }
        }
        if (held < n) {
            for (int32_t i = 0; i < held; ++i) {
                sessions[i]->busy.store(false);
            }
            return mtpl::fail(MTPL_ERR_BUSY, "a session of this step is in use by another thread");
        }
        int32_t st;
        try {
            std::lock_guard<std::mutex> lock(group->mu);
            st = mtpl::group_step(group, n, sessions, n_max, out_tokens, cap, results, statuses);
        } catch (...) {
            for (int32_t i = 0; i < n; ++i) {
                sessions[i]->busy.store(false);
            }
            throw;
        }
        for (int32_t i = 0; i < n; ++i) {
            sessions[i]->busy.store(false);
        }
        return st;
    });
}

int32_t mtpl_group_get_stats(const mtpl_group * group, mtpl_group_stats * out) {
    return guarded([&]() -> int32_t {
        if (!group || !out) {
            return mtpl::fail(MTPL_ERR_INVALID_ARGUMENT, "group and out must not be NULL");
        }
        *out = group->stats;
        return MTPL_OK;
    });
}

int32_t mtpl_session_reset(mtpl_session * session) {
    return with_session(session, [&] { return mtpl::session_reset(session); });
}

int32_t mtpl_session_feed(mtpl_session * session, const int32_t * tokens, int32_t n_tokens) {
    return with_session(session, [&]() -> int32_t {
        if (n_tokens <= 0 || !tokens) {
            return mtpl::fail(MTPL_ERR_INVALID_ARGUMENT, "nothing to feed: the token list is empty");
        }
        for (int32_t i = 0; i < n_tokens; ++i) {
            if (tokens[i] < 0 || tokens[i] >= session->n_vocab) {
                return mtpl::fail(MTPL_ERR_INVALID_ARGUMENT, "token id " + std::to_string(tokens[i]) + " at index " +
                                                                 std::to_string(i) + " is outside the vocabulary [0, " +
                                                                 std::to_string(session->n_vocab) + ")");
            }
        }
        return mtpl::session_feed(session, tokens, n_tokens);
    });
}

int32_t mtpl_session_configure(mtpl_session * session, const mtpl_gen_params * params) {
    return with_session(session, [&]() -> int32_t {
        if (!params) {
            return mtpl::fail(MTPL_ERR_INVALID_ARGUMENT, "params must not be NULL");
        }
        if (params->draft_max < 0 || params->draft_max > MTPL_MAX_DRAFT) {
            return mtpl::fail(MTPL_ERR_INVALID_ARGUMENT, "draft_max must be in [0, " + std::to_string(MTPL_MAX_DRAFT) +
                                                             "], got " + std::to_string(params->draft_max));
        }
        if (!(params->draft_p_min >= 0.0f && params->draft_p_min <= 1.0f)) {
            return mtpl::fail(MTPL_ERR_INVALID_ARGUMENT, "draft_p_min must be in [0, 1]");
        }
        if (!(params->temperature >= 0.0f && params->temperature <= 100.0f)) {
            return mtpl::fail(MTPL_ERR_INVALID_ARGUMENT, "temperature must be in [0, 100]");
        }
        if (params->top_k < 0) {
            return mtpl::fail(MTPL_ERR_INVALID_ARGUMENT, "top_k must be >= 0");
        }
        if (!(params->top_p > 0.0f && params->top_p <= 1.0f)) {
            return mtpl::fail(MTPL_ERR_INVALID_ARGUMENT, "top_p must be in (0, 1]");
        }
        if (!(params->min_p >= 0.0f && params->min_p <= 1.0f)) {
            return mtpl::fail(MTPL_ERR_INVALID_ARGUMENT, "min_p must be in [0, 1]");
        }
        if (!(params->repeat_penalty > 0.0f && params->repeat_penalty <= 100.0f) ||
            !(std::fabs(params->presence_penalty) <= 100.0f) || !(std::fabs(params->frequency_penalty) <= 100.0f)) {
            return mtpl::fail(MTPL_ERR_INVALID_ARGUMENT,
                              "repeat_penalty must be in (0, 100], presence/frequency penalties in [-100, 100]");
        }
        if (!(params->draft_temperature <= 100.0f)) {
            return mtpl::fail(MTPL_ERR_INVALID_ARGUMENT, "draft_temperature must be <= 100 (negative: same as temperature)");
        }
        if (params->penalty_last_n < -1) {
            return mtpl::fail(MTPL_ERR_INVALID_ARGUMENT, "penalty_last_n must be >= -1");
        }
        if (!mtpl::known_verify_mode(params->verify)) {
            return mtpl::fail(MTPL_ERR_INVALID_ARGUMENT, "verify must be a value of enum mtpl_verify, got " +
                                                             std::to_string(params->verify));
        }
        if (params->draft_max > 0 && !session->mtp) {
            return mtpl::fail(MTPL_ERR_INVALID_ARGUMENT,
                              "draft_max > 0 needs a session created with mtp enabled (this one decodes plainly)");
        }
        session->gen = *params;
        session->rng.seed(params->seed);
        session->cancel.store(false);  // a generation starts: earlier cancel requests are void
        return MTPL_OK;
    });
}

int32_t mtpl_session_step(mtpl_session * session, int32_t n_max, int32_t * out_tokens, int32_t cap,
                          mtpl_step_result * result) {
    return with_session(session, [&]() -> int32_t {
        if (!out_tokens || !result) {
            return mtpl::fail(MTPL_ERR_INVALID_ARGUMENT, "out_tokens and result must not be NULL");
        }
        if (n_max < 1) {
            return mtpl::fail(MTPL_ERR_INVALID_ARGUMENT, "n_max must be >= 1");
        }
        if (cap < session->gen.draft_max + 2) {
            return mtpl::fail(MTPL_ERR_INVALID_ARGUMENT, "out_tokens needs room for draft_max + 2 tokens");
        }
        return mtpl::session_step(session, n_max, out_tokens, result);
    });
}

int32_t mtpl_session_truncate(mtpl_session * session, int32_t n_keep) {
    return with_session(session, [&]() -> int32_t {
        if (n_keep < 0 || n_keep > (int32_t) session->tokens.size()) {
            return mtpl::fail(MTPL_ERR_INVALID_ARGUMENT, "n_keep must be in [0, " +
                                                             std::to_string(session->tokens.size()) + "]");
        }
        return mtpl::session_truncate(session, n_keep);
    });
}

int32_t mtpl_session_adopt_prefix(mtpl_session * session, const int32_t * tokens, int32_t n_tokens,
                                  int32_t * n_kept) {
    return with_session(session, [&]() -> int32_t {
        if (!n_kept || n_tokens < 0 || (n_tokens > 0 && !tokens)) {
            return mtpl::fail(MTPL_ERR_INVALID_ARGUMENT, "bad arguments to mtpl_session_adopt_prefix");
        }
        *n_kept = 0;
        return session->group ? mtpl::group_adopt_prefix(session->group, session, tokens, n_tokens, n_kept) : MTPL_OK;
    });
}

int32_t mtpl_session_tokens(const mtpl_session * session, int32_t * out, int32_t cap, int32_t * n_out) {
    return guarded([&]() -> int32_t {
        if (!session || !n_out || cap < 0 || (cap > 0 && !out)) {
            return mtpl::fail(MTPL_ERR_INVALID_ARGUMENT, "bad arguments to mtpl_session_tokens");
        }
        const int32_t n = (int32_t) session->tokens.size();
        *n_out = n;
        if (n > cap) {
            return mtpl::fail(MTPL_ERR_BUFFER_TOO_SMALL, "token buffer too small");
        }
        std::memcpy(out, session->tokens.data(), sizeof(int32_t) * (size_t) n);
        return MTPL_OK;
    });
}

int32_t mtpl_session_n_ctx(const mtpl_session * session, int32_t * out) {
    return guarded([&]() -> int32_t {
        if (!session || !out) {
            return mtpl::fail(MTPL_ERR_INVALID_ARGUMENT, "session and out must not be NULL");
        }
        *out = session->n_ctx;
        return MTPL_OK;
    });
}

int32_t mtpl_session_memory(const mtpl_session * session, int64_t * weights, int64_t * kv, int64_t * compute) {
    return guarded([&]() -> int32_t {
        if (!session || !weights || !kv || !compute) {
            return mtpl::fail(MTPL_ERR_INVALID_ARGUMENT, "bad arguments to mtpl_session_memory");
        }
        mtpl::session_memory(session, weights, kv, compute);
        return MTPL_OK;
    });
}

int32_t mtpl_session_memory_by_buffer(const mtpl_session * session, int32_t mtp, char * buf, int64_t cap,
                                      int64_t * n_out) {
    return guarded([&]() -> int32_t {
        if (!session || !buf || !n_out || cap <= 0) {
            return mtpl::fail(MTPL_ERR_INVALID_ARGUMENT, "bad arguments to mtpl_session_memory_by_buffer");
        }
        const std::string text = mtpl::session_memory_by_buffer(session, mtp != 0);
        *n_out = (int64_t) text.size();
        if ((int64_t) text.size() + 1 > cap) {
            return mtpl::fail(MTPL_ERR_BUFFER_TOO_SMALL, "buffer of " + std::to_string(cap) + " bytes is too small (" +
                                                             std::to_string(text.size() + 1) + " needed)");
        }
        std::memcpy(buf, text.c_str(), text.size() + 1);
        return MTPL_OK;
    });
}

int32_t mtpl_session_get_stats(const mtpl_session * session, mtpl_stats * out) {
    return guarded([&]() -> int32_t {
        if (!session || !out) {
            return mtpl::fail(MTPL_ERR_INVALID_ARGUMENT, "session and out must not be NULL");
        }
        mtpl::session_stats(session, *out);
        return MTPL_OK;
    });
}

int32_t mtpl_session_reset_stats(mtpl_session * session) {
    return with_session(session, [&]() -> int32_t {
        mtpl::session_reset_stats(session);
        return MTPL_OK;
    });
}

int32_t mtpl_session_debug(mtpl_session * session, int32_t enable) {
    return with_session(session, [&]() -> int32_t {
        session->tr.start(enable != 0);
        return MTPL_OK;
    });
}

int32_t mtpl_session_debug_events(const mtpl_session * session, mtpl_debug_event * out, int32_t cap, int32_t * n_out) {
    return guarded([&]() -> int32_t {
        if (!session || !n_out || cap < 0 || (cap > 0 && !out)) {
            return mtpl::fail(MTPL_ERR_INVALID_ARGUMENT, "bad arguments to mtpl_session_debug_events");
        }
        const int32_t n = (int32_t) session->tr.events.size();
        *n_out = n;
        if (n > cap) {
            return mtpl::fail(MTPL_ERR_BUFFER_TOO_SMALL, "event buffer too small");
        }
        std::memcpy(out, session->tr.events.data(), sizeof(mtpl_debug_event) * (size_t) n);
        return MTPL_OK;
    });
}

int32_t mtpl_session_debug_floats(const mtpl_session * session, float * out, int64_t cap, int64_t * n_out) {
    return guarded([&]() -> int32_t {
        if (!session || !n_out || cap < 0 || (cap > 0 && !out)) {
            return mtpl::fail(MTPL_ERR_INVALID_ARGUMENT, "bad arguments to mtpl_session_debug_floats");
        }
        const int64_t n = (int64_t) session->tr.floats.size();
        *n_out = n;
        if (n > cap) {
            return mtpl::fail(MTPL_ERR_BUFFER_TOO_SMALL, "float buffer too small");
        }
        std::memcpy(out, session->tr.floats.data(), sizeof(float) * (size_t) n);
        return MTPL_OK;
    });
}

int32_t mtpl_test_skip_rollback(mtpl_session * session, int32_t skip) {
    if (!session) {
        return mtpl::fail(MTPL_ERR_INVALID_ARGUMENT, "session is NULL");
    }
    session->test_skip_rollback = skip != 0;
    return MTPL_OK;
}

int32_t mtpl_test_states_gap_every(mtpl_session * session, int32_t every) {
    if (!session || every < 0) {
        return mtpl::fail(MTPL_ERR_INVALID_ARGUMENT, "session is NULL or every < 0");
    }
    session->test_gap_every = every;
    session->test_passes = 0;
    return MTPL_OK;
}

int32_t mtpl_test_group_cap_rates(mtpl_group * group, int32_t n_seq, const double * tokens_per_s, int32_t n_caps) {
    if (!group || !tokens_per_s || n_seq < 2 || n_seq > MTPL_MAX_GROUP || n_caps < 1 || n_caps > MTPL_MAX_DRAFT + 1) {
        return mtpl::fail(MTPL_ERR_INVALID_ARGUMENT, "group or rates NULL, n_seq outside [2, " +
                                                         std::to_string(MTPL_MAX_GROUP) + "] or n_caps outside [1, " +
                                                         std::to_string(MTPL_MAX_DRAFT + 1) + "]");
    }
    std::lock_guard<std::mutex> lock(group->mu);
    mtpl::group_seed_caps(group, n_seq, tokens_per_s, n_caps);
    return MTPL_OK;
}

int32_t mtpl_test_mtp_entries(const mtpl_session * session, int32_t head, int32_t * trunk_pos, int32_t * tokens,
                              int32_t cap, int32_t * n_out) {
    if (!session || !n_out || cap < 0 || (cap > 0 && (!trunk_pos || !tokens))) {
        return mtpl::fail(MTPL_ERR_INVALID_ARGUMENT, "session or n_out is NULL, or cap < 0 without buffers");
    }
    if (session->mtp && (head < 0 || head >= (int32_t) session->prop.heads.size())) {
        return mtpl::fail(MTPL_ERR_INVALID_ARGUMENT, "head must be in [0, " +
                                                         std::to_string(session->prop.heads.size()) + ")");
    }
    const mtpl::head_lane * h = session->mtp ? &session->prop.heads[(size_t) head] : nullptr;
    *n_out = h ? (int32_t) h->entry_pos.size() : 0;
    for (int32_t i = 0; i < std::min(cap, *n_out); ++i) {
        trunk_pos[i] = h->entry_pos[(size_t) i];
        tokens[i] = h->entry_tok[(size_t) i];
    }
    return MTPL_OK;
}

int32_t mtpl_test_verify(const float * rows, int32_t n_vocab, const int32_t * tokens, int32_t n_before,
                         int32_t n_drafts, const float * q_probs, const mtpl_gen_params * params, uint64_t seed,
                         int32_t * n_accepted, int32_t * next) {
    return guarded([&]() -> int32_t {
        if (!rows || n_vocab < 1 || !tokens || n_before < 1 || n_drafts < 0 || n_drafts > MTPL_MAX_DRAFT || !params ||
            !n_accepted || !next || !mtpl::known_verify_mode(params->verify)) {
            return mtpl::fail(MTPL_ERR_INVALID_ARGUMENT, "bad arguments to mtpl_test_verify");
        }
        std::vector<const float *> row_ptrs((size_t) n_drafts + 1);
        for (int32_t i = 0; i <= n_drafts; ++i) {
            row_ptrs[(size_t) i] = rows + (size_t) i * (size_t) n_vocab;
        }
        std::vector<mtpl::draft_dist> q((size_t) n_drafts);
        for (int32_t i = 0; i < n_drafts && q_probs; ++i) {
            for (int32_t t = 0; t < n_vocab; ++t) {
                const float pr = q_probs[(size_t) i * (size_t) n_vocab + (size_t) t];
                if (pr > 0.0f) {
                    q[(size_t) i].base.ids.push_back(t);
                    q[(size_t) i].base.probs.push_back(pr);
                }
            }
        }
        mtpl::sampler_scratch scratch;
        mtpl::rng_type rng(seed);
        const mtpl::verify_result v = mtpl::verify(row_ptrs.data(), n_vocab, tokens, (size_t) n_before, n_drafts,
                                                   q.data(), *params, scratch, rng);
        *n_accepted = v.n_accepted;
        *next = v.next;
        return MTPL_OK;
    });
}

int32_t mtpl_chat_render(mtpl_model * model, const char * request_json, mtpl_chat ** out) {
    return guarded([&]() -> int32_t {
        if (!model || !request_json || !out) {
            return mtpl::fail(MTPL_ERR_INVALID_ARGUMENT, "model, request_json and out must not be NULL");
        }
        *out = nullptr;
        return mtpl::chat_render(model, request_json, out);
    });
}

int32_t mtpl_chat_info(mtpl_chat * chat, const char ** text, int64_t * n_text) {
    return guarded([&]() -> int32_t {
        if (!chat || !text || !n_text) {
            return mtpl::fail(MTPL_ERR_INVALID_ARGUMENT, "chat, text and n_text must not be NULL");
        }
        const std::string & info = mtpl::chat_info(chat);
        *text = info.c_str();
        *n_text = (int64_t) info.size();
        return MTPL_OK;
    });
}

int32_t mtpl_chat_parse(mtpl_chat * chat, const char * generated, int64_t n_generated, int32_t is_partial,
                        const char ** text, int64_t * n_text) {
    return guarded([&]() -> int32_t {
        if (!chat || !text || !n_text || n_generated < 0 || (n_generated > 0 && !generated)) {
            return mtpl::fail(MTPL_ERR_INVALID_ARGUMENT, "bad arguments to mtpl_chat_parse");
        }
        const std::string * msg = nullptr;
        const int32_t st = mtpl::chat_parse(chat, std::string(generated ? generated : "", (size_t) n_generated),
                                            is_partial != 0, &msg);
        if (st != MTPL_OK) {
            return st;
        }
        *text = msg->c_str();
        *n_text = (int64_t) msg->size();
        return MTPL_OK;
    });
}

int32_t mtpl_chat_free(mtpl_chat * chat) {
    return guarded([&]() -> int32_t {
        mtpl::chat_free(chat);
        return MTPL_OK;
    });
}

int32_t mtpl_session_cancel(mtpl_session * session) {
    if (!session) {
        return mtpl::fail(MTPL_ERR_INVALID_ARGUMENT, "session is NULL");
    }
    session->cancel.store(true);
    return MTPL_OK;
}

} // extern "C"
