// What a GGUF file holds, read and validated before llama.cpp sees it.
#pragma once

#include <cstdint>
#include <string>

#include "arch/arch.h"

namespace mtpl {

struct file_facts {
    std::string arch;
    std::string name;
    const arch_def * def = nullptr;     // null: an architecture the engine does not run
    uint32_t block_count = 0;
    uint32_t nextn = 0;                 // <arch>.nextn_predict_layers
    int32_t n_tensors = 0;
    int32_t n_tensors_nextn = 0;
    int64_t nextn_bytes = 0;
    bool has_mtp = false;               // a usable NextN block: the one definition
    std::string mtp_problem;            // why has_mtp is false (for messages)
};

// Fails (MTPL_ERR_*, with a message) on a missing, non-GGUF, corrupt or inconsistent file.  A file
// of an unsupported architecture is described (def null) without checking its hyperparameters.
int32_t read_file_facts(const std::string & path, file_facts & out);

} // namespace mtpl
