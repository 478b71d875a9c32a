"""The benchmark's tables, as text on stdout and as Markdown in RESULTS.md."""
from __future__ import annotations

import shlex
import statistics
from pathlib import Path

import fixtures
from analysis import BenchRun, Conditions, ModelResult
from fixtures import FRESH, PLAIN
from mtpllama import SpecConfig

LOAD_NOTES = {
    "default": "each engine's default (--load default): mtpllama reads a file that fits into memory "
               "(`ModelConfig.use_mmap=None`) on transparent huge pages (patches/0007, 0010), upstream maps it.",
    "mmap": "both engines map the file (--load mmap; upstream `-lm mmap`).",
    "memory": "both engines read the file into memory on huge pages (--load memory; upstream `-lm none` with "
              "`GLIBC_TUNABLES=glibc.malloc.hugetlb=1`).",
}


def _f(x: float | None, fmt: str = "{:.2f}") -> str:
    return "-" if x is None else fmt.format(x)


def _pair(x: float | None, x_paired: float | None, fmt: str = "{:.3f}x") -> str:
    return f"{_f(x, fmt)} ({_f(x_paired, fmt)})"


def _acc(xs: list[float]) -> str:
    return " ".join(f"{x:.2f}" for x in xs)


# --- tables -----------------------------------------------------------------------------

def table(res: ModelResult) -> list[list[str]]:
    out = [["setting", "ours t/s min / med", "ours acc/pos", "ours tok/step", "ours x plain",
            "upstream t/s min / med", "upstream acc/pos", "upstream tok/step", "upstream x plain", "ours / upstream",
            "paired"]]
    for r in res.rows:
        cells = [r.setting.label]
        for g in (r.ours, r.upstream):
            cells += (["-"] * 4 if g is None else
                      [f"{g.min:.1f} / {g.median:.1f}", _acc(g.acc_pos) or "-", _f(g.tok_per_step),
                       _f(g.x_plain, "{:.2f}x")])
        cells += [_f(r.x_upstream, "{:.3f}x"), _f(r.x_upstream_paired, "{:.3f}x")]
        out.append(cells)
    return out


def overview(results: list[ModelResult]) -> list[list[str]]:
    """One line per model: mtpllama against upstream at each setting, and the adaptive controller
    against plain decoding and the best fixed settings."""
    out = [["model", "plain: ours / upstream t/s", "plain ratio (paired)", "fixed k: ours / upstream (min .. max)",
            "plain, fresh process: ratio (paired)", "fixed k, paired: median (min .. max)", "best fixed, ours",
            "best fixed, upstream", "adaptive x plain", "adaptive x best fixed (ours)",
            "confirmation: adaptive x best fixed (paired)", "confirmation: adaptive x plain (paired)"]]
    for res in results:
        pl, fr = res.row(PLAIN), res.row(FRESH)
        fixed = [r for r in res.rows if r.setting.mode == "fixed"]
        fx = [r.x_upstream for r in fixed if r.x_upstream is not None]
        fxp = [r.x_upstream_paired for r in fixed if r.x_upstream_paired is not None]
        ad, cf = res.adaptive, res.confirmation
        out.append([
            res.run.model,
            f"{_f(pl.ours and pl.ours.median, '{:.1f}')} / {_f(pl.upstream and pl.upstream.median, '{:.1f}')}",
            _pair(pl.x_upstream, pl.x_upstream_paired),
            f"{min(fx):.2f}x .. {max(fx):.2f}x" if fx else "-",
            _pair(fr.x_upstream, fr.x_upstream_paired) if fr else "-",
            f"{statistics.median(fxp):.2f}x ({min(fxp):.2f}x .. {max(fxp):.2f}x)" if fxp else "-",
            *(f"{b.setting.label}: {_f(b.x_plain, '{:.2f}x')}" if b else "-"
              for b in (res.best_ours, res.best_upstream)),
            _f(ad and ad.summary.x_plain, "{:.2f}x"), _f(ad and ad.x_best_ours, "{:.2f}x"),
            _pair(cf.x_best, cf.x_best_paired, "{:.2f}x") if cf else "-",
            _pair(cf.x_plain, cf.x_plain_paired, "{:.2f}x") if cf else "-"])
    return out


def render_text(rows: list[list[str]]) -> str:
    w = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    lines = ["  ".join(c.ljust(w[i]) for i, c in enumerate(r)) for r in rows]
    lines.insert(1, "  ".join("-" * x for x in w))
    return "\n".join(lines)


def render_md(rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(rows[0]) + " |", "|" + "|".join("---" for _ in rows[0]) + "|"]
    lines += ["| " + " | ".join(r) + " |" for r in rows[1:]]
    return "\n".join(lines)


# --- per-model lines --------------------------------------------------------------------

def _spec_str(spec: SpecConfig) -> str:
    return f"draft_max={spec.draft_max}, draft_p_min={spec.draft_p_min}, adaptive={spec.adaptive}"


def _ms_by(d: dict[int, float]) -> str:
    return "{" + ", ".join(f"{n}: {1e3 * v:.1f}" for n, v in sorted(d.items())) + "}"


def _adaptive_lines(res: ModelResult) -> list[str]:
    ad = res.adaptive
    g = ad.summary
    s = f"adaptive ({_spec_str(ad.spec)}): {g.median:.1f} t/s = {_f(g.x_plain, '{:.2f}x')} plain"
    for eng, x, best in (("mtpllama", ad.x_best_ours, res.best_ours),
                         ("upstream", ad.x_best_upstream, res.best_upstream)):
        if best:
            s += f", {_f(x, '{:.2f}x')} best fixed {eng}"
    if ad.drafts_per_step:
        s += f"; steps by drafts verified (0, 1, ..), all rounds: {ad.drafts_per_step}"
    out = [s]
    st = ad.last
    if st.est_verify:
        out.append(f"controller's estimates after the last adaptive run: trunk pass ms by drafts "
                   f"{_ms_by(st.est_verify)} (+{1e3 * getattr(st, 'est_rebuild', 0.0):.2f} ms for a new graph), "
                   f"head {1e3 * st.est_head:.2f} ms, further draft {1e3 * st.est_draft:.2f} ms, "
                   f"acceptance by position {_acc(st.est_accept[:4])}, first-draft acceptance by head confidence "
                   + " ".join(f"{lo:.2f}:{a:.2f}" for lo, a, w in st.calibration if w >= 1.0))
    return out


def _confirmation_line(res: ModelResult) -> str:
    cf = res.confirmation
    med = ", ".join(f"{s.label} {v:.1f}" for s, v in cf.medians)
    pr = ", ".join(f"{s.label} {v:.2f}x" for s, v in cf.paired)
    return (f"confirmation ({cf.rounds} rounds of adaptive and the main rounds' best fixed settings, and plain, "
            f"back to back): medians t/s {med}; adaptive over each fixed setting, paired by round: {pr}; adaptive x "
            f"best of them ({cf.best.label}): {cf.x_best:.2f}x; adaptive x plain: {cf.x_plain:.2f}x, paired by "
            f"round {cf.x_plain_paired:.2f}x")


def summary_lines(res: ModelResult) -> list[str]:
    out = [f"best fixed ({eng}): {b.setting.label} at {b.median:.1f} t/s = {_f(b.x_plain, '{:.2f}x')} plain"
           for eng, b in (("mtpllama", res.best_ours), ("upstream", res.best_upstream)) if b]
    if res.adaptive:
        out += _adaptive_lines(res)
    if res.confirmation:
        out.append(_confirmation_line(res))
    reuse = [f"{r.setting.label} {g[0]}/{g[1]}" + (f" + MTP {g[2]}/{g[3]}" if g[3] else "")
             for r in res.rows if r.ours and (g := r.ours.graphs) and (r.setting.mode != "fixed" or r.setting.p == 0.0)]
    if reuse:
        out.append("compute graphs reused by mtpllama (trunk, MTP; reused/evaluations, all rounds): "
                   + "; ".join(reuse))
    n = res.noise
    out.append(f"prompt tokens: ours {res.prompt_tokens_ours}, upstream {res.prompt_tokens_upstream}; "
               f"load average during the runs: median {_f(n.loadavg_median)}, max {_f(n.loadavg_max)}; "
               f"other processes' CPU during a run: max {_f(n.foreign_max, '{:.0%}')} of the machine, "
               f"{n.contended}/{n.n} runs kept above the busy threshold ({n.retried} retried)")
    same = sum(t.same for t in res.texts)
    out.append(f"greedy output: mtpllama settings all identical to plain: {res.lossless}; "
               f"upstream runs with the same text as mtpllama plain: {same}/{len(res.texts)}")
    if not res.lossless:
        out.append("mtpllama: some MTP run's greedy tokens differ from plain decoding's")
    for t in res.texts:
        if not t.same:
            i = t.common_prefix
            out.append(f"greedy text differs from mtpllama plain: upstream {t.setting.label} after {i} characters "
                       f"(ours {t.ours[i:i + 20]!r} vs upstream {t.upstream[i:i + 20]!r})")
    return out


def model_line(res: ModelResult) -> str:
    run = res.run
    s = f"`{Path(run.path).name}`: {run.n_params / 1e9:.2f}B parameters, {run.model_bytes / 2**30:.2f} GiB"
    s += f"; plain decode step {1e3 / res.row(PLAIN).ours.median:.1f} ms"
    try:
        sp = fixtures.spec_of(run.model)
    except KeyError:
        return s + "."
    return (s + f". Synthetic: {sp.n_layer} trunk layers ({sp.n_dense_lead} dense, n_ff {sp.n_ff}), "
            f"n_embd {sp.n_embd}, MoE {sp.n_expert} experts / {sp.n_expert_used} active / {sp.n_expert_shared} shared (n_ff_exp "
            f"{sp.n_ff_exp}), {sp.dtype.upper()}, noise {sp.noise}.")


def print_tables(results: list[ModelResult], c: Conditions) -> None:
    for res in results:
        print(f"\n{res.run.model}  ({res.run.n_params / 1e9:.2f}B params, {c.tokens} tokens, {c.threads} threads, "
              f"{c.repeats} rounds)")
        print(render_text(table(res)))
        for line in summary_lines(res):
            print("  " + line)


def print_overview(results: list[ModelResult]) -> None:
    if len(results) > 1:
        print("\nOverview (medians)")
        print(render_text(overview(results)))


# --- RESULTS.md -------------------------------------------------------------------------

COLUMNS = (
    "Columns: tokens/s are decode speeds (prompt excluded), min / median over the rounds; "
    "*acc/pos*: fraction of decode steps whose draft token at position 1, 2, .. was accepted "
    "(upstream's `#acc rate/pos`); *tok/step*: tokens per decode step; *x plain*: median against the same "
    "engine's plain decoding; *ours / upstream*: mtpllama's median against upstream's at the same setting; "
    "*paired*: the median over rounds of mtpllama's speed over upstream's in the same round (the two runs "
    "back to back, so slow drift of the machine's speed cancels). "
    "mtpllama: `(generated - 1) / (t_draft + t_verify + t_other)` from the engine's stats; upstream plain: "
    "`llama-completion`'s `eval time` (single-token decodes only, sampling excluded); upstream draft-mtp: "
    "`llama-speculative-simple`'s `decoded N tokens in S seconds`. Upstream's `--spec-draft-p-min` applies to the "
    "draft's top-10 softmax, ours to the full softmax, so p=0.85 rows can stop drafts at different places. "
    "*plain, fresh process*: mtpllama's plain decoding in a new Python process per run, as every upstream run "
    "is (run next to upstream's plain run; its ratio and paired ratio are against upstream plain).")

OVERVIEW = (
    "Medians. *plain ratio*, *fixed k*: mtpllama's speed over upstream's at the same setting (in brackets: "
    "paired by round; for fixed k, the lowest and highest over the 8 settings); *fixed k, paired*: the median, min "
    "and max over the fixed settings of their paired ratios; "
    "*best fixed*: the fastest fixed setting of each engine, against that engine's plain decoding; *adaptive*: "
    "`SpecConfig()` defaults; *confirmation*: after the rounds, adaptive and the two fastest fixed settings of "
    "the rounds (the fastest, and the fastest at another k) run back to back for --confirm more rounds: "
    "adaptive's median over the faster one's, and (in brackets) the lower of its paired medians against the two; "
    "plain decoding runs in those rounds too, and *confirmation: adaptive x plain* is adaptive's median over "
    "plain's there (in brackets: paired by round). "
    "A maximum over ~16 noisy medians is biased upwards; fresh runs side by side are not.")


def _machine_section(run: BenchRun) -> list[str]:
    m, eng, up = run.machine, run.machine.engine, run.upstream
    out = ["## Machine", "", f"nproc: {m.nproc}; {m.platform}; Python {m.python}; mtpllama commit {m.git_commit}"
           f"{' (engine sources modified)' if m.git_dirty else ''} at the start of the run; engine `{eng.library}` "
           f"built {eng.library_mtime} (sha256 {eng.library_sha256}, llama.cpp patch set {eng.patches_hash}).", ""]
    if m.warning:
        out += [f"**Warning**: {m.warning}.", ""]
    out += ["```", "\n".join(m.lscpu.splitlines()[:10]), "```", ""]
    if up:
        out += [f"Upstream: llama.cpp {up.commit[:12]} (patch set {up.patches_hash}) built by "
                f"`benchmarks/build_upstream.py` (Release, GGML_NATIVE=ON, static, OpenMP).", "",
                "```", *[shlex.join(c) for c in up.commands], "```", ""]
    out += ["The machine is shared: other processes may run during a benchmark and timings are noisy. The harness "
            "measures the CPU time other processes used during each run (/proc/stat minus its own and its children's "
            "CPU time), waits for a quiet machine before each run (--wait-idle) and reruns a run during which others "
            f"used more than {run.conditions.busy_threshold:.0%} of the machine (--retries); the counts are given per "
            "model above. With as many threads as cores, any other busy process slows every run that waits on a "
            "thread barrier (OpenMP spin-waits): a single busy core can make a 2-thread decode step 10-50x slower.", ""]
    return out


def write_md(path: Path, run: BenchRun, results: list[ModelResult], json_path: Path) -> None:
    c = run.conditions
    minutes = sum(r.run.elapsed_s for r in results) / 60
    lines = ["# Benchmark results", "",
             f"Latest run of `benchmarks/bench.py`, {run.started_utc} (UTC), {minutes:.1f} min.", "",
             "```", run.command, "```", "",
             f"(Raw data: `{json_path}` on the machine that ran it; `bench.py --render JSON` rewrites this file "
             "from it.)",
             "",
             f"Settings: {c.tokens} tokens, {c.repeats} interleaved rounds, {c.threads} threads, context {c.ctx}, "
             f"greedy, prompt {c.prompt!r}; mtpllama runs each setting in its own session, kept across the rounds "
             f"(the adaptive controller learns from its own steps only). Weights: {LOAD_NOTES[c.load]}", "",
             COLUMNS, "",
             "## Overview", "", OVERVIEW, "", render_md(overview(results)), ""]
    for res in results:
        lines += [f"## {res.run.model}", "", model_line(res), "", render_md(table(res)), ""]
        lines += [f"- {x}" for x in summary_lines(res)]
        lines.append("")
    lines += _machine_section(run)
    path.write_text("\n".join(lines))
