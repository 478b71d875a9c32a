// Thin helpers over llama.cpp calls shared by the session and the proposer.
#pragma once

#include <atomic>
#include <cstdint>

#include "llama.h"

namespace mtpl {

// Add one token of sequence seq to a batch; h (n_state floats) is the MTP input state, or null.
void batch_add(llama_batch_ext * b, int32_t token, int32_t pos, bool output, const float * h, int32_t n_state,
               int32_t seq = 0);
// Evaluate a batch.  A failure returns its status with a message naming `what`: MTPL_ERR_CANCELLED
// (cancel was requested: the request is consumed), MTPL_ERR_CONTEXT_FULL or MTPL_ERR_DECODE.  The
// caller drops what the failed call may have left in the cache.
int32_t process(llama_context * ctx, llama_batch_ext * b, std::atomic<bool> & cancel, const char * what);

// Release the calling thread's OpenMP team (ggml's CPU threads).  libgomp spins idle team threads
// only briefly once the process's teams hold more threads than there are cores: a team left behind
// by the thread that loaded a model slows down every other thread that computes (a server's
// engine thread: 26 instead of 36 tokens/s here).  No-op without OpenMP.
void release_worker_threads();

} // namespace mtpl
