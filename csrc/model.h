// A loaded model, behind the C API's opaque handle.
#pragma once

#include <atomic>
#include <cstdint>
#include <mutex>
#include <string>
#include <vector>

#include "arch/arch.h"
#include "llama.h"

extern "C" {
#include "mtpllama.h"
}

namespace mtpl {
struct chat_templates;  // the model's chat template, parsed on first use (chat_format.cpp)

// tensor_buft_overrides as llama.cpp takes them: patterns kept alive, NULL-terminated
struct override_list {
    std::vector<std::string> patterns;
    std::vector<llama_model_tensor_buft_override> list;
};
}

struct mtpl_model {
    llama_model * model = nullptr;
    llama_model * head = nullptr;       // the MTP-only model of mtp_path (null: the head is in model)
    const llama_vocab * vocab = nullptr;
    const mtpl::arch_def * arch = nullptr;
    mtpl_model_info info{};
    mtpl::override_list overrides;       // for model
    mtpl::override_list head_overrides;  // for head
    std::atomic<int32_t> n_sessions{0};
    mtpl::chat_templates * chat = nullptr;  // set once, under chat_mutex, by the first chat render
    std::mutex chat_mutex;
};

namespace mtpl {

// validate the file (inspect.cpp), then load it with llama.cpp
int32_t model_load(const mtpl_model_params & p, mtpl_model ** out);
void model_destroy(mtpl_model * m);

} // namespace mtpl
