// The architectures the engine drafts with (one arch/<name>.cpp each).
#pragma once

#include "arch/arch.h"

namespace mtpl {

extern const arch_def arch_glm4moe;
extern const arch_def arch_deepseek2;
extern const arch_def arch_glm_dsa;
extern const arch_def arch_deepseek32;
extern const arch_def arch_qwen35moe;
extern const arch_def arch_qwen35;
extern const arch_def arch_qwen3next;
extern const arch_def arch_nemotron_h_moe;
extern const arch_def arch_bailingmoe3;
extern const arch_def arch_hy_v3;
extern const arch_def arch_mimo2;
extern const arch_def arch_step35;
extern const arch_def arch_cohere2moe;
extern const arch_def arch_deepseek4;

} // namespace mtpl
