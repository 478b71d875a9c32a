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

} // namespace

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
    for (int32_t i = 0; i < p.n_seq; ++i) {
        mtpl_session * s = nullptr;
        if (int32_t st = session_create_in(model, g, g->trunk, g->batch, &g->shared, i, p.session, &s); st != MTPL_OK) {
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
    // each session drafts; those that need a pass join it, in sequence order (llama.cpp takes a
    // multi-stream batch in one graph only when its sequences are consecutive and equally long)
    std::vector<int32_t> order;
    std::vector<uint8_t> in_pass((size_t) n, 0);
    for (int32_t i = 0; i < n; ++i) {
        bool pass = false;
        status[i] = step_begin(ss[i], n_max[i], out + (size_t) i * (size_t) cap, &res[i], &pass);
        if (status[i] != MTPL_OK) {
            failed(i, status[i]);
        } else if (pass) {
            order.push_back(i);
            in_pass[(size_t) i] = 1;
        }
    }
    if (order.empty()) {
        return first_failure;
    }
    std::sort(order.begin(), order.end(), [&](int32_t a, int32_t b) { return ss[a]->seq < ss[b]->seq; });
    int32_t rows_max = 0, rows_real = 0;
    bool states = false;
    for (int32_t i : order) {
        const int32_t rows = (int32_t) ss[i]->drafts.size() + 1;
        rows_max = std::max(rows_max, rows);
        rows_real += rows;
        states = states || step_wants_states(ss[i]);
    }
    // the batch: each session's [pending, drafts...], then filler rows up to rows_max where its context
    // has room (their cells go with the rejected drafts' when the step rolls back)
    std::vector<int32_t> row0((size_t) n, 0);
    llama_batch_ext_clear(g->batch);
    int32_t n_rows = 0, n_pad = 0;
    std::vector<int32_t> seqs, seq_rows;
    for (int32_t i : order) {
        mtpl_session * s = ss[i];
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
    // exact: the whole pass computes rows as lone rows, however many sequences share it
    const int bound = batch_invariant_rows();
    const bool raise = g->exact && bound > 0 && n_rows > bound;
    if (raise) {
        set_batch_invariant(n_rows);
    }
    const int32_t reused0 = llama_perf_context(g->trunk).n_reused;
    g->shared.passes++;
    g->shared.watch = nullptr;
    const auto t0 = clock_type::now();
    const int32_t st = process(g->trunk, g->batch, g->never, "trunk evaluation");
    const double t_pass = seconds_since(t0);
    if (raise) {
        set_batch_invariant(bound);
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
    for (int32_t i : order) {
        mtpl_session * s = ss[i];
        const int32_t rows = (int32_t) s->drafts.size() + 1;
        pass_done(s, row0[(size_t) i], s->cur.pos0, rows, true);
        // each session's share of the pass: its rows' part (what its draft length adds to it)
        step_finish(s, row0[(size_t) i], t_pass * rows / rows_real, reused, true);
    }
    return first_failure;
}

} // namespace mtpl
