// The controller against a simulated model (mtpl_controller_simulate, a test hook): step costs,
// acceptance and noise come from mtpl_controller_sim, the choices from the real controller.
#include "controller_sim.h"

#include "controller.h"
#include "sampler.h"

namespace mtpl {

void controller_simulate(const mtpl_controller_sim & sim, int32_t * out_k, double & tokens, double & seconds) {
    controller_ptr c(controller_new());
    rng_type rng(sim.seed);
    std::normal_distribution<double> normal(0.0, 1.0);
    tokens = 0.0;
    seconds = 0.0;
    int32_t backlog = sim.n_prompt;  // positions the MTP cache has not seen
    bool kept_up = false;
    int32_t rows_before = -1;  // drafts made by the step before
    for (int32_t step = 0; step < sim.n_steps; ++step) {
        const int32_t k = controller_plan(c.get(), sim.k_max).k;
        out_k[step] = k;
        const bool after = sim.switch_step >= 0 && step >= sim.switch_step;
        const double * accept = after ? sim.accept_after : sim.accept;
        const bool burst = step >= sim.burst_start && step < sim.burst_start + sim.burst_steps;
        const double speed = (after && sim.speed_after > 0.0 ? sim.speed_after : 1.0) * (burst ? sim.burst_speed : 1.0);
        // drafts are made until one falls below draft_p_min; the leading ones are accepted
        int32_t n_drafted = 0;
        while (n_drafted < k && !(sim.p_drafted[n_drafted] > 0.0 && uniform01(rng) >= sim.p_drafted[n_drafted])) {
            ++n_drafted;
        }
        int32_t n_acc = 0;
        while (n_acc < n_drafted && uniform01(rng) < accept[n_acc]) {
            ++n_acc;
        }
        // a step that stopped drafting early costs what drafting n_drafted costs, plus the MTP
        // decode of the draft that was not made
        const int32_t n_calls = std::min(k, n_drafted + 1);
        const double base = speed * (sim.cost_s[n_drafted] + (n_calls - n_drafted) * sim.draft_s) *
                            std::max(0.5, 1.0 + sim.noise * normal(rng));
        const bool steady = k == 0 || kept_up;
        const double catch_up = steady ? 0.0 : sim.catch_up_s * backlog;
        // compute graphs are rebuilt when the verification batch changes shape (drafts made)
        const double t = base + catch_up + (n_drafted != rows_before && rows_before >= 0 ? sim.k_switch_s : 0.0);
        rows_before = n_drafted;
        const double t_draft = n_calls * speed * sim.draft_s + catch_up;
        controller_update(c.get(), {k, n_drafted, n_acc, n_calls, t_draft, t - t_draft, t, 0.0,
                                    k > 0 ? speed * sim.draft_s + catch_up : 0.0, steady});
        kept_up = k > 0;
        backlog = (k > 0 ? 0 : backlog) + n_acc + 1;
        tokens += n_acc + 1;
        seconds += t;
    }
}


} // namespace mtpl
