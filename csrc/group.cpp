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

// A session's acceptance rate at draft position j this generation, optimistic while it has few
// drafts there (a position the cap keeps out of reach would otherwise never be tried)
double position_rate(const mtpl_session * s, int32_t j) {
    return (s->stats.accepted[j] + 1.0) / (s->stats.drafted[j] + 1.0);
}

// The most drafts per session this step: r - 1 for the r that maximises the expected tokens per
// second of a pass where n sessions draft min(draft_max, r - 1) each (their drafting, one after
// another, included) and verify r rows each.  MTPL_MAX_DRAFT while the costs are not known.
int32_t draft_cap(const mtpl_group * g, int32_t n, mtpl_session * const * ss) {
    double a = 0.0, b = 0.0;
    if (n < 2 || !pass_cost(g, a, b) || g->head_n < 4.0) {
        return MTPL_MAX_DRAFT;
    }
    const double h = g->head_s / g->head_n;                             // the first draft's seconds
    const double e = g->more_n > 1.0 ? g->more_s / g->more_n : h;      // each further one's
    int32_t k_most = 0;
    for (int32_t i = 0; i < n; ++i) {
        k_most = std::max(k_most, ss[i]->mtp ? ss[i]->gen.draft_max : 0);
    }
    int32_t best_k = k_most;
    double best = -1.0;
    for (int32_t k = 0; k <= k_most; ++k) {
        double tokens = 0.0, seconds = a + b * n * (k + 1);
        for (int32_t i = 0; i < n; ++i) {
            const int32_t m = ss[i]->mtp ? std::min(k, ss[i]->gen.draft_max) : 0;
            tokens += 1.0;
            for (int32_t j = 0; j < m; ++j) {
                tokens += position_rate(ss[i], j);
            }
            seconds += m > 0 ? h + e * (m - 1) : 0.0;
        }
        if (tokens / seconds > best) {
            best = tokens / seconds;
            best_k = k;
        }
    }
    return best_k;
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
    // The drafts a session may make: as many as the rows all sequences of the pass can get (below)
    // pay for, by the fitted costs and each session's acceptance so far.
    const int32_t k_cap = draft_cap(g, n, ss);
    std::vector<int32_t> order;
    std::vector<uint8_t> in_pass((size_t) n, 0);
    for (int32_t i = 0; i < n; ++i) {
        bool pass = false;
        status[i] = step_begin(ss[i], n_max[i], out + (size_t) i * (size_t) cap, &res[i], &pass, k_cap);
        if (status[i] == MTPL_OK && pass && !ss[i]->drafts.empty()) {
            const draft_outcome & d = ss[i]->cur.drafted;
            g->head_s = 0.97 * g->head_s + d.t_head;
            g->head_n = 0.97 * g->head_n + 1.0;
            g->more_s = 0.97 * g->more_s + d.t_draft;
            g->more_n = 0.97 * g->more_n + (double) (ss[i]->drafts.size() - 1);
        }
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
    // Every sequence of the pass gets as many rows (fillers pad the shorter).  Where the fitted pass
    // cost says that fewer rows for all give more expected tokens per second, the longest drafts are
    // cut: a draft dropped before verification changes nothing but the speed.
    double fa = 0.0, fb = 0.0;
    if (order.size() > 1 && pass_cost(g, fa, fb)) {
        int32_t longest = 0;
        for (int32_t i : order) {
            longest = std::max(longest, (int32_t) ss[i]->drafts.size() + 1);
        }
        int32_t best_r = longest;
        double best = -1.0;
        for (int32_t r = 1; r <= longest; ++r) {
            double tokens = 0.0;
            for (int32_t i : order) {
                tokens += 1.0;
                for (int32_t j = 0; j < std::min((int32_t) ss[i]->drafts.size(), r - 1); ++j) {
                    tokens += position_rate(ss[i], j);
                }
            }
            const double score = tokens / (fa + fb * (double) order.size() * r);
            if (score > best) {
                best = score;
                best_r = r;
            }
        }
        for (int32_t i : order) {
            mtpl_session * s = ss[i];
            if ((int32_t) s->drafts.size() + 1 > best_r) {
                s->drafts.resize((size_t) best_r - 1);
                s->tokens.resize((size_t) s->cur.pos0 + (size_t) best_r);
                g->stats.n_cut_drafts++;
            }
        }
    }
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
    // the pass's cost per row (b) and per pass (a); rows_real / n_rows apportion it until the fit holds
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
    (void) rows_real;
    return first_failure;
}

} // namespace mtpl
