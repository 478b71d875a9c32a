// RPC workers (llama.cpp's RPC backend, patches/0022): registering a model's workers, the devices a
// model may use, failures of calls in flight, and serving this machine's CPU as a worker.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "ggml-backend.h"

namespace mtpl {

// Register the workers at these endpoints ("HOST:PORT", once per process each) and return their
// devices in order.  Fails (MTPL_ERR_MODEL_LOAD naming the worker) when one cannot be reached.
int32_t rpc_devices(const std::vector<std::string> & endpoints, std::vector<ggml_backend_dev_t> & out);
// Whether any worker has been registered in this process (models then name their devices).
bool rpc_any_registered();
// Failures of RPC calls so far; the last one's message in *why when given.
uint64_t rpc_failures(std::string * why = nullptr);
int32_t rpc_set_timeout(int32_t ms);
int32_t rpc_timeout();
int32_t rpc_serve(const std::string & endpoint, int32_t n_threads, const char * cache_dir);

} // namespace mtpl
