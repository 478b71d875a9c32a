// The controller against a simulated model (mtpl_controller_simulate, a test hook): costs,
// confidences and acceptance come from mtpl_controller_sim, the decisions from the real controller.
#include "controller_sim.h"

#include <algorithm>

#include "controller.h"
#include "sampler.h"

namespace mtpl {

void controller_simulate(const mtpl_controller_sim & sim, int32_t * out_drafts, double & tokens, double & seconds) {
    controller_ptr c(controller_new());
    rng_type rng(sim.seed);
    std::normal_distribution<double> normal(0.0, 1.0);
    const auto noisy = [&](double t) { return t * std::max(0.5, 1.0 + sim.noise * normal(rng)); };
    tokens = 0.0;
    seconds = 0.0;
    int32_t backlog = 1;  // positions the MTP cache has not seen, the head entry included (0: after a gap)
    bool kept_up = false;
    bool states = true;
    for (int32_t step = 0; step < sim.n_steps; ++step) {
        if (sim.text_steps > 0 && step > 0 && step % sim.text_steps == 0) {
            controller_new_text(c.get());
        }
        const bool after = sim.text_steps > 0 ? (step / sim.text_steps) % 2 == 1
                                              : sim.switch_step >= 0 && step >= sim.switch_step;
        const double * accept = after ? sim.accept_after : sim.accept;
        const bool burst = step >= sim.burst_start && step < sim.burst_start + sim.burst_steps;
        const double speed = (after && sim.speed_after > 0.0 ? sim.speed_after : 1.0) * (burst ? sim.burst_speed : 1.0);
        const step_plan plan = controller_plan(c.get(), sim.k_max, sim.adaptive != 0, states);
        const int32_t k_max = plan.k_max;
        double t_head = 0.0, t_draft = 0.0;
        int32_t n_kept = 0, n_acc = 0, n_calls = 0;
        bool all_accepted = true;
        if (k_max > 0) {
            n_calls = 1;
            t_head = noisy(speed * (sim.head_s + (kept_up ? 0.0 : sim.catch_up_s * backlog)));
            for (int32_t i = 0; i < k_max; ++i) {
                const double lo = sim.conf_lo[i], hi = sim.conf_hi[i];
                const double conf = lo + (hi - lo) * uniform01(rng);
                const double p_acc = std::clamp(accept[i] + sim.slope[i] * (conf - 0.5 * (lo + hi)), 0.0, 1.0);
                const bool hit = uniform01(rng) < p_acc;
                const bool keep = sim.adaptive ? controller_keep(c.get(), i, (float) conf)
                                               : conf >= sim.p_min && controller_keep(c.get(), i, (float) conf);
                if (!keep) {
                    break;
                }
                n_kept++;
                all_accepted = all_accepted && hit;
                n_acc += all_accepted ? 1 : 0;
                if (i + 1 == k_max || !controller_extend(c.get(), i)) {
                    break;
                }
                n_calls++;
                t_draft += noisy(speed * sim.draft_s);
            }
        }
        const double t_verify = noisy(speed * (sim.verify_s[n_kept] + (plan.states ? sim.states_s : 0.0)));
        const double t_other = noisy(speed * sim.other_s);
        const double t = t_head + t_draft + t_verify + t_other;
        controller_update(c.get(), {n_kept, n_acc, n_calls, t_head, t_draft, t_verify, t, 0.0, kept_up,
                                    k_max > 0 ? backlog - 1 : 0, nullptr, 0});
        out_drafts[step] = n_kept;
        kept_up = k_max > 0;
        // a pass without states leaves a gap; the first pass after one adds its rows but the first
        backlog = plan.states ? (k_max > 0 || backlog == 0 ? 0 : backlog) + n_acc + 1 : 0;
        states = plan.states;
        tokens += n_acc + 1;
        seconds += t;
    }
}

} // namespace mtpl
