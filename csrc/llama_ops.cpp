// Thin helpers over llama.cpp calls shared by the session and the proposer.
#include "llama_ops.h"

#include <stdexcept>
#include <string>

#include "rpc.h"
#include "util.h"

// OpenMP 5's omp_pause_resource_all (libgomp since GCC 9), weak: absent in a build without OpenMP
extern "C" int omp_pause_resource_all(int kind) __attribute__((weak));

namespace mtpl {

void release_worker_threads() {
    if (omp_pause_resource_all) {
        omp_pause_resource_all(1 /* omp_pause_soft */);
    }
}

void batch_add(llama_batch_ext * b, int32_t token, int32_t pos, bool output, const float * h, int32_t n_state,
               int32_t seq) {
    const int32_t idx = llama_batch_ext_add_token(b, seq, token);
    llama_batch_ext_set_pos(b, idx, &pos);
    llama_batch_ext_set_output_logits(b, idx, output);
    if (h) {
        llama_batch_ext_set_embd_token(b, idx, llama_embd{h, 1, (size_t) n_state});
    }
}

int32_t process(llama_context * ctx, llama_batch_ext * b, std::atomic<bool> & cancel, const char * what) {
    clear_upstream_error();
    // a lost RPC worker throws from the call that needed it, or leaves a failure behind for results
    // read asynchronously (patches/0022): either fails this pass
    std::string lost;
    const uint64_t failures = rpc_failures();
    int32_t rc;
    try {
        rc = llama_process(ctx, LLAMA_PROCESS_TYPE_DECODE, b);
    } catch (const std::exception & e) {
        return fail(MTPL_ERR_DECODE, std::string(what) + " failed: " + e.what());
    }
    if (rpc_failures(&lost) != failures) {
        return fail(MTPL_ERR_DECODE, std::string(what) + " failed: " + lost);
    }
    if (rc == 0) {
        return MTPL_OK;
    }
    if (rc == 2 || cancel.load()) {
        cancel.store(false);
        return fail(MTPL_ERR_CANCELLED, std::string(what) + " was cancelled");
    }
    if (rc == 1) {
        return fail(MTPL_ERR_CONTEXT_FULL, std::string(what) + ": no room left in the KV cache");
    }
    const std::string why = upstream_error();
    return fail(MTPL_ERR_DECODE, std::string(what) + " failed (llama_process returned " + std::to_string(rc) + ")" +
                                     (why.empty() ? "" : ": " + why));
}

} // namespace mtpl
