// A group of sessions on one trunk context: each session is a sequence with a KV stream of its own
// (llama.cpp's non-unified cache), so its attention sees exactly the cells it would see alone; a
// group step drafts for each session and verifies all drafts in one trunk pass, where the weights
// are read once for every sequence.
#include "group.h"

#include <algorithm>
#include <numeric>

#include "llama-ext.h"
#include "llama_ops.h"
#include "util.h"

namespace mtpl {
namespace {

// How many graphs llama.cpp evaluates for a batch of sequences seqs (ascending) with rows[i] rows
// each: a ubatch takes consecutive sequences, as many rows of each as the shortest has left.
int64_t count_ubatches(const std::vector<int32_t> & seqs, std::vector<int32_t> rows) {
    int64_t n = 0;
    for (;;) {
        int32_t last = -2, take = 0;
        std::vector<size_t> set;
        for (size_t i = 0; i < seqs.size(); ++i) {
            if (rows[i] == 0) {
                continue;
            }
            if (!set.empty() && seqs[i] != last + 1) {
                break;
            }
            set.push_back(i);
            last = seqs[i];
            take = set.size() == 1 ? rows[i] : std::min(take, rows[i]);
        }
        if (set.empty()) {
            return n;
        }
        for (size_t i : set) {
            rows[i] -= take;
        }
        n++;
    }
}

// The fitted pass cost t = a + b * rows (group.h); false while the passes seen do not determine it.
bool pass_cost(const mtpl_group * g, double & a, double & b) {
    if (g->fit_w < 8.0) {
        return false;
    }
    const double mr = g->fit_r / g->fit_w, mt = g->fit_t / g->fit_w;
    const double var = g->fit_rr / g->fit_w - mr * mr;
    if (var < 0.25) {
        return false;
    }
    b = (g->fit_rt / g->fit_w - mr * mt) / var;
    a = mt - b * mr;
    return b > 0.0 && a >= 0.0;
}

constexpr int32_t k_probe_every = 8;  // steps between tries of the best cap's neighbours, at first
constexpr int32_t k_probe_most = 128; // ... and at most, while they keep losing
constexpr double k_decay_cap = 0.9;    // weight of a cap's older steps at each new one
// a session adopts another's cache entries (group_adopt_prefix) where that saves evaluating at least
// this many tokens, and one per k_adopt_per entries copied (copying an entry costs far less than
// evaluating its token, and the copy takes the other session's whole sequence)
constexpr int32_t k_adopt_min = 4;
constexpr int32_t k_adopt_per = 256;
constexpr size_t k_adopt_max_bytes = size_t(1) << 30;  // the copy passes through a host buffer this large at most

// Sessions stepping together, bucketed: 2, 3-4, 5-8, 9-16, 17-32, 33-64.
int32_t bucket_of(int32_t n) {
    int32_t b = 0;
    while (b + 1 < mtpl_group::k_buckets && (1 << (b + 1)) < n) {
        ++b;
    }
    return b;
}

// The most drafts a session may make this step, a bandit over caps 0..k_most per bucket of sessions
// stepping together, rewarded with the tokens per second of whole steps (every session's tokens,
// drafting included): caps 0 and 1 first, then one more while the highest tried is the best (a
// long cap tried blindly costs a pass of many rows for every session), the best's neighbours every
// k_probe_every steps, twice as seldom each time they lose again.  A lone session keeps its own
// controller's choice.
int32_t choose_cap(mtpl_group * g, int32_t n, mtpl_session * const * ss) {
    int32_t k_most = 0;
    for (int32_t i = 0; i < n; ++i) {
        k_most = std::max(k_most, ss[i]->mtp ? ss[i]->gen.draft_max : 0);
    }
    if (n < 2 || k_most == 0 || !g->cap) {
        return MTPL_MAX_DRAFT;
    }
    k_most = std::min<int32_t>(k_most, MTPL_MAX_DRAFT);
    mtpl_group::cap_bucket & b = g->caps[bucket_of(n)];
    b.steps++;
    if (!b.tried(0)) {
        return 0;
    }
    if (!b.tried(1)) {
        return 1;
    }
    const int32_t best = b.best(k_most);
    if (best < k_most && !b.tried(best + 1)) {
        return best + 1;  // the climb goes on while the last step up paid
    }
    if (b.probed >= 0) {  // a neighbour that lost again is tried half as often
        b.interval = b.probed == best ? k_probe_every : std::min(2 * b.interval, k_probe_most);
        b.probed = -1;
    }
    if (b.interval == 0) {
        b.interval = k_probe_every;
        b.next_probe = b.steps + b.interval;
    }
    if (b.steps >= b.next_probe) {
        b.next_probe = b.steps + b.interval;
        const bool up = (b.steps / k_probe_every) % 2 == 0 || best == 0;
        const int32_t c = std::clamp(best + (up ? 1 : -1), 0, k_most);
        b.probed = c == best ? -1 : c;
        return c;
    }
    return best;
}

} // namespace

namespace {
// tokens a and b share from the start, at most n
int32_t shared_prefix(const std::vector<int32_t> & a, const int32_t * b, int32_t n) {
    int32_t i = 0;
    const int32_t lim = std::min(n, (int32_t) a.size());
    while (i < lim && a[(size_t) i] == b[i]) {
        ++i;
    }
    return i;
}
} // namespace

int32_t group_adopt_prefix(mtpl_group * g, mtpl_session * s, const int32_t * tokens, int32_t n_tokens,
                           int32_t * n_kept) {
    *n_kept = 0;
    // a sliding window's cache drops entries its last position no longer sees, and a shorter prefix needs them
    if (n_tokens < 2 || llama_model_n_swa(s->model->model) > 0) {
        return MTPL_OK;
    }
    // as mtpl_session_truncate keeps a prefix: never a context's last token (it may be a chosen next
    // token never emitted), nor the prompt's last (it is fed for its logits)
    const int32_t own = shared_prefix(s->tokens, tokens, std::min(n_tokens, (int32_t) s->tokens.size()) - 1);
    const mtpl_session * best = nullptr;
    int32_t n_best = own;
    for (const mtpl_session * o : g->sessions) {
        if (o == s || o->trunk_stale) {
            continue;
        }
        // its cache holds positions [0, n_past): the kept prefix's last one is evaluated again
        const int32_t lim = std::min({n_tokens, (int32_t) o->tokens.size(), o->n_past + 1}) - 1;
        const int32_t n = shared_prefix(o->tokens, tokens, std::max(lim, 0));
        if (n > n_best) {
            best = o;
            n_best = n;
        }
    }
    if (!best || n_best - own < k_adopt_min || (int64_t) (n_best - own) * k_adopt_per < best->n_past ||
        llama_state_seq_get_size(g->trunk, best->seq) > k_adopt_max_bytes) {
        return MTPL_OK;
    }
    const int32_t st = session_adopt(s, best, tokens, n_best);
    if (st == MTPL_OK) {
        *n_kept = n_best;
    }
    return st;
}

int32_t group_head_window(const mtpl_group * g, int32_t n) {
    if (n < 2 || !g->cap) {
        return 0;
    }
    // a bucket not yet measured takes the verdict of the nearest smaller one where drafting did not
    // pay: with more sessions a pass is more compute-bound, and drafting pays less still
    for (int32_t i = bucket_of(n); i >= 0; --i) {
        const mtpl_group::cap_bucket & b = g->caps[i];
        if (b.tried(0) && b.tried(1)) {
            return b.best(MTPL_MAX_DRAFT) == 0 ? k_idle_window : 0;
        }
    }
    return 0;
}

void group_seed_caps(mtpl_group * g, int32_t n, const double * rate, int32_t n_caps) {
    mtpl_group::cap_bucket & b = g->caps[bucket_of(n)];
    for (int32_t c = 0; c < n_caps; ++c) {
        b.tok[c] = rate[c];
        b.sec[c] = 1.0;
    }
}

int32_t group_prompt_window(const mtpl_group * g, const mtpl_session * fed) {
    int32_t active = 1;  // fed, and the sessions that took part in the last few passes
    for (const mtpl_session * s : g->sessions) {
        active += s != fed && s->last_pass >= g->shared.passes - 8;
    }
    return group_head_window(g, std::max(active, (int32_t) std::lround(g->n_mean)));
}

int32_t group_create(mtpl_model * model, const mtpl_group_params & p, mtpl_group ** out) {
    if (p.n_seq < 1 || p.n_seq > MTPL_MAX_GROUP) {
        return fail(MTPL_ERR_INVALID_ARGUMENT, "n_seq must be in [1, " + std::to_string(MTPL_MAX_GROUP) + "], got " +
                                                   std::to_string(p.n_seq));
    }
    if (model->arch->recurrent) {
        // each sequence's recurrent state needs its own snapshots and rollback: not built for groups yet
        return fail(MTPL_ERR_INVALID_ARGUMENT, std::string("groups of sequences are not supported for ") +
                                                   model->arch->name + " (a recurrent trunk): use one session per sequence");
    }
    llama_context_params cp;
    if (int32_t st = context_params(model, p.session, cp); st != MTPL_OK) {
        return st;
    }
    auto * g = new mtpl_group();
    g->model = model;
    g->exact = p.exact != 0;
    g->cap = p.no_cap == 0;
    // one KV stream per sequence (n_ctx each), and a batch that holds every sequence's k + 1 rows
    const int32_t n_ctx = (int32_t) cp.n_ctx;
    g->n_batch = std::max((int32_t) cp.n_batch, std::min(p.n_seq * (MTPL_MAX_DRAFT + 1), n_ctx * p.n_seq));
    llama_context_params ct = cp;
    ct.n_ctx = (uint32_t) (n_ctx * p.n_seq);
    ct.n_seq_max = (uint32_t) p.n_seq;
    ct.kv_unified = false;
    ct.n_batch = (uint32_t) g->n_batch;
    ct.n_ubatch = (uint32_t) g->n_batch;
    ct.abort_callback_data = &g->shared;
    clear_upstream_error();
    g->trunk = llama_init_from_model(model->model, ct);
    if (!g->trunk) {
        const std::string why = upstream_error();
        delete g;
        return fail(MTPL_ERR_MODEL_LOAD, "could not create the llama.cpp context" + (why.empty() ? "" : ": " + why));
    }
    g->batch = llama_batch_ext_init(g->trunk);
    // one MTP context for all: each draft depth is one call for every session drafting that deep
    llama_model * head = model->head ? model->head : model->model;
    if (p.session.mtp && llama_model_n_layer_nextn(head) == 1) {
        llama_context_params cm = cp;
        cm.abort_callback_data = &g->shared;
        g->mtp = shared_mtp_context(head, cm, p.n_seq, g->n_batch);
        if (!g->mtp) {
            const std::string why = upstream_error();
            group_destroy(g);
            return fail(MTPL_ERR_MODEL_LOAD, "could not create the MTP context" + (why.empty() ? "" : ": " + why));
        }
        g->mtp_batch = llama_batch_ext_init(g->mtp);
    }
    for (int32_t i = 0; i < p.n_seq; ++i) {
        mtpl_session * s = nullptr;
        if (int32_t st = session_create_in(model, g, g->trunk, g->batch, &g->shared, i, p.session, g->mtp, g->mtp_batch,
                                           &s);
            st != MTPL_OK) {
            group_destroy(g);
            return st;
        }
        g->sessions.push_back(s);
    }
    *out = g;
    return MTPL_OK;
}

void group_destroy(mtpl_group * g) {
    for (mtpl_session * s : g->sessions) {
        session_destroy(s);
    }
    if (g->mtp_batch) llama_batch_ext_free(g->mtp_batch);
    if (g->mtp) llama_free(g->mtp);
    if (g->batch) llama_batch_ext_free(g->batch);
    if (g->trunk) llama_free(g->trunk);
    delete g;
}

int32_t group_step(mtpl_group * g, int32_t n, mtpl_session * const * ss, const int32_t * n_max, int32_t * out,
                   int32_t cap, mtpl_step_result * res, int32_t * status) {
    int32_t first_failure = MTPL_OK;
    const auto failed = [&](int32_t i, int32_t st) {
        status[i] = st;
        if (first_failure == MTPL_OK) {
            first_failure = st;
        }
    };
    // each session drafts (at most k_cap: choose_cap), all together where they share an MTP context;
    // those that need a pass join it, in sequence order (llama.cpp takes a multi-stream batch in one
    // graph only when its sequences are consecutive and equally long)
    const auto t_step = clock_type::now();
    const int32_t k_cap = choose_cap(g, n, ss);
    const int32_t window = group_head_window(g, n);
    g->n_mean = g->n_mean > 0.0 ? 0.9 * g->n_mean + 0.1 * n : n;
    for (int32_t i = 0; i < n; ++i) {
        g->stats.n_capped += ss[i]->mtp && k_cap < ss[i]->gen.draft_max;
        ss[i]->prop.window = ss[i]->mtp && controller_idle(ss[i]->ctl.get()) ? k_idle_window : window;
    }
    std::vector<int32_t> order;
    std::vector<uint8_t> in_pass((size_t) n, 0);
    const bool together = g->mtp != nullptr;  // else each session drafts in step_begin
    std::vector<draft_job> jobs;
    std::vector<int32_t> job_of((size_t) n, -1);
    for (int32_t i = 0; i < n; ++i) {
        bool pass = false;
        status[i] = step_begin(ss[i], n_max[i], out + (size_t) i * (size_t) cap, &res[i], &pass, k_cap, !together);
        if (together && status[i] == MTPL_OK && pass) {
            mtpl_session * s = ss[i];
            job_of[(size_t) i] = (int32_t) jobs.size();
            jobs.push_back({&s->prop, &s->tokens, s->n_past, s->n_ctx, s->mtp ? s->cur.k : 0, s->cur.plan.mix, &s->gen,
                            s->ctl.get(), &s->rng, &s->cancel, &s->drafts, &s->cur.drafted});
        }
        in_pass[(size_t) i] = status[i] == MTPL_OK && pass;
    }
    if (together && !jobs.empty()) {
        proposer_draft_many(jobs, g->mtp, g->mtp_batch, g->exact);
    }
    for (int32_t i = 0; i < n; ++i) {
        if (together && job_of[(size_t) i] >= 0) {
            const draft_job & J = jobs[(size_t) job_of[(size_t) i]];
            if (J.status != MTPL_OK) {
                ss[i]->stats.n_mtp_calls += J.out->n_calls;
                status[i] = J.status;
                in_pass[(size_t) i] = 0;
            } else {
                step_drafted(ss[i], J.out->t_head + J.out->t_draft + J.out->t_upkeep);
            }
        }
        const bool pass = in_pass[(size_t) i] != 0;
        if (status[i] != MTPL_OK) {
            failed(i, status[i]);
        } else if (pass) {
            order.push_back(i);
        }
    }
    if (order.empty()) {
        return first_failure;
    }
    std::sort(order.begin(), order.end(), [&](int32_t a, int32_t b) { return ss[a]->seq < ss[b]->seq; });
    int32_t rows_max = 0;
    bool states = false;
    for (int32_t i : order) {
        const int32_t rows = (int32_t) ss[i]->drafts.size() + 1;
        rows_max = std::max(rows_max, rows);
        states = states || step_wants_states(ss[i]);
    }
    // the batch: each session's [pending, drafts...], then filler rows up to rows_max where its context
    // has room (their cells go with the rejected drafts' when the step rolls back)
    std::vector<int32_t> row0((size_t) n, 0);
    llama_batch_ext_clear(g->batch);
    int32_t n_rows = 0, n_pad = 0;
    std::vector<int32_t> seqs, seq_rows;
    // a sequence between two of the pass's that is not in it gets filler rows too (after its context,
    // dropped after the pass): llama.cpp takes consecutive sequences only into one graph
    std::vector<mtpl_session *> gaps;
    int32_t next_seq = ss[order.front()]->seq;
    const auto fill_gaps = [&](int32_t upto) {
        for (; next_seq < upto; ++next_seq) {
            mtpl_session * idle = g->sessions[(size_t) next_seq];
            const int32_t from = idle->n_past;
            if (from + rows_max > idle->n_ctx) {
                continue;  // no room: llama.cpp evaluates the pass in more graphs
            }
            for (int32_t r = 0; r < rows_max; ++r) {
                batch_add(g->batch, 0, from + r, false, nullptr, 0, idle->seq);
            }
            n_rows += rows_max;
            n_pad += rows_max;
            seqs.push_back(idle->seq);
            seq_rows.push_back(rows_max);
            gaps.push_back(idle);
        }
    };
    for (int32_t i : order) {
        mtpl_session * s = ss[i];
        fill_gaps(s->seq);
        next_seq = s->seq + 1;
        const int32_t pos0 = s->cur.pos0;
        const int32_t rows = (int32_t) s->drafts.size() + 1;
        row0[(size_t) i] = n_rows;
        for (int32_t r = 0; r < rows; ++r) {
            batch_add(g->batch, s->tokens[(size_t) (pos0 + r)], pos0 + r, true, nullptr, 0, s->seq);
        }
        n_rows += rows;
        const int32_t pad = pos0 + rows_max <= s->n_ctx ? rows_max - rows : 0;
        for (int32_t r = rows; r < rows + pad; ++r) {
            batch_add(g->batch, s->tokens.back(), pos0 + r, false, nullptr, 0, s->seq);
        }
        n_rows += pad;
        n_pad += pad;
        seqs.push_back(s->seq);
        seq_rows.push_back(rows + pad);
        s->test_passes += s->test_gap_every > 0;
        set_states(s, states);
    }
    const int32_t reused0 = llama_perf_context(g->trunk).n_reused;
    g->shared.passes++;
    g->shared.watch = nullptr;
    const auto t0 = clock_type::now();
    int32_t st;
    {
        // exact: the whole pass computes rows as lone rows, however many sequences share it
        invariant_rows_scope scope(g->exact, n_rows);
        st = process(g->trunk, g->batch, g->never, "trunk evaluation");
    }
    const double t_pass = seconds_since(t0);
    for (mtpl_session * idle : gaps) {
        llama_memory_seq_rm(llama_get_memory(g->trunk), idle->seq, idle->n_past, -1);
    }
    g->stats.n_passes++;
    g->stats.n_ubatches += count_ubatches(seqs, seq_rows);
    g->stats.t_pass_s += t_pass;
    if (st != MTPL_OK) {
        for (int32_t i : order) {
            ss[i]->stats.n_trunk_calls++;
            pass_failed(ss[i]);
            step_abandon(ss[i]);
            failed(i, st);
        }
        return first_failure;
    }
    const bool reused = llama_perf_context(g->trunk).n_reused > reused0;
    g->stats.n_seq_steps += (int64_t) order.size();
    g->stats.n_rows += n_rows - n_pad;
    g->stats.n_pad_rows += n_pad;
    // the pass's cost per row (b) and per pass (a); until the fit holds every row costs the same
    const double decay = 0.97;
    g->fit_w = decay * g->fit_w + 1.0;
    g->fit_r = decay * g->fit_r + n_rows;
    g->fit_t = decay * g->fit_t + t_pass;
    g->fit_rr = decay * g->fit_rr + (double) n_rows * n_rows;
    g->fit_rt = decay * g->fit_rt + n_rows * t_pass;
    double a = 0.0, b = 0.0;
    if (!pass_cost(g, a, b)) {  // no usable fit yet: every row costs the same
        a = 0.0;
        b = t_pass / n_rows;
    }
    const double scale = t_pass / (a + b * n_rows);  // the shares add up to this pass's time
    const int32_t n_long = (int32_t) std::count_if(order.begin(), order.end(), [&](int32_t i) {
        return (int32_t) ss[i]->drafts.size() + 1 == rows_max;
    });
    for (int32_t i : order) {
        mtpl_session * s = ss[i];
        const int32_t rows = (int32_t) s->drafts.size() + 1;
        pass_done(s, row0[(size_t) i], s->cur.pos0, rows, true);
        // its share: the pass's fixed part split evenly, its rows, and (the longest) the filler rows
        // the others got because of its length: what drafting one more costs the group
        const double pad = rows == rows_max ? (double) n_pad / n_long : 0.0;
        const double share = scale * (a / (double) order.size() + b * (rows + pad));
        step_finish(s, row0[(size_t) i], share, reused, true);
    }
    if (k_cap < MTPL_MAX_DRAFT) {  // what this cap gave: every session's tokens over the whole step
        int64_t tokens = 0;
        for (int32_t i = 0; i < n; ++i) {
            tokens += status[i] == MTPL_OK ? res[i].n_tokens : 0;
        }
        mtpl_group::cap_bucket & b = g->caps[bucket_of(n)];
        b.tok[k_cap] = k_decay_cap * b.tok[k_cap] + (double) tokens;
        b.sec[k_cap] = k_decay_cap * b.sec[k_cap] + seconds_since(t_step);
    }
    return first_failure;
}

} // namespace mtpl
