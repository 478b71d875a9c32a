// The controller against a simulated model (mtpl_controller_simulate).
#pragma once

#include <cstdint>

extern "C" {
#include "mtpllama.h"
}

namespace mtpl {

void controller_simulate(const mtpl_controller_sim & sim, int32_t * out_drafts, double & tokens, double & seconds);

} // namespace mtpl
