// The table of supported architectures: one line per arch/<name>.cpp.
#include "arch/registry.h"

namespace mtpl {
namespace {

const arch_def * const k_archs[] = {
    &arch_glm4moe,
    &arch_deepseek2,
    &arch_glm_dsa,
    &arch_deepseek32,
    &arch_qwen35moe,
    &arch_qwen35,
    &arch_qwen3next,
    &arch_nemotron_h_moe,
    &arch_bailingmoe3,
    &arch_hy_v3,
    &arch_mimo2,
    &arch_step35,
    &arch_cohere2moe,
    &arch_deepseek4,
};

} // namespace

const arch_def * find_arch(const std::string & name) {
    for (const arch_def * a : k_archs) {
        if (name == a->name) {
            return a;
        }
    }
    return nullptr;
}

std::string arch_names() {
    std::string out;
    for (const arch_def * a : k_archs) {
        out += (out.empty() ? "" : ", ") + std::string(a->name) + " (" + a->models + ")";
    }
    return out;
}

} // namespace mtpl
