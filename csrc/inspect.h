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
    bool has_trunk = false;             // trunk blocks (an MTP-only file has none)
    std::string mtp_problem;            // why has_mtp is false (for messages)
    std::string attention;              // the architecture's attention kind and shape (arch_def::attention)
};

// Fails (MTPL_ERR_*, with a message) on a missing, non-GGUF, corrupt or inconsistent file.  A file
// of an unsupported architecture is described (def null) without checking its hyperparameters.
int32_t read_file_facts(const std::string & path, file_facts & out);

// "full", "trunk-only" or "mtp-only"
const char * file_kind(const file_facts & f);

// Whether the MTP-only file `head` belongs to the trunk-only or full file `trunk`: the same
// architecture, NextN block index, hyperparameters and vocabulary.  MTPL_ERR_MTP_MISMATCH naming
// the first difference, MTPL_ERR_NO_MTP_HEAD when head has no usable NextN block.
int32_t check_pair(const std::string & trunk_path, const file_facts & trunk, const std::string & head_path,
                   const file_facts & head);

} // namespace mtpl
