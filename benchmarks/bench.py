#!/usr/bin/env python3
"""Side-by-side decode-speed benchmark: mtpllama against upstream llama.cpp's own tools.

    python3 benchmarks/bench.py --models dense-hi moe-lo --tokens 128 --repeats 3 --threads 2

Per model, in INTERLEAVED rounds (every configuration once per round, the mtpllama and upstream
runs of one setting next to each other, the order reversed every other round):

* mtpllama plain: ``Model.generate(prompt, n, mtp=False)``
* mtpllama plain, fresh process (--fresh, default): the same in a new Python process per run,
  as every upstream run is, placed next to upstream's plain run
* mtpllama fixed k: ``SpecConfig(draft_max=k, draft_p_min=p, adaptive=False)``, k in --ks, p in --p-mins
* mtpllama adaptive: ``SpecConfig()`` (the defaults: the adaptive controller)
* upstream plain: ``llama-completion`` (``eval time`` of its perf report: single-token decodes)
* upstream draft-mtp: ``llama-speculative-simple --spec-type draft-mtp --spec-draft-n-max k
  --spec-draft-p-min p`` (its ``decoded N tokens in S seconds``: the loop after the prompt)

all on the same GGUF file, thread count, context size, prompt and token count, greedy.  Both
upstream tools are built from the package's own pinned, patched tree (build_upstream.py).
Each engine holds the weights its own default way (--load default): mtpllama reads a file that
fits into memory, on transparent huge pages (ModelConfig.use_mmap, patches/0007, 0010), upstream maps
the file.  --load memory (both read, upstream with glibc advising huge pages) and --load mmap
(both map) compare the engines like for like.

Speeds are decode speeds, prompt processing excluded: for mtpllama
``GenerationStats.decode_tokens_per_second``, ``(generated - 1) / (t_draft + t_verify + t_other)``
(the first token comes out of the prompt pass, whose time is t_prefill; upstream's numbers count
tokens the same way), for upstream the tools' own printed timing.  Reported: min and median
tokens/s over the repeats, acceptance per draft position (the fraction of decode steps whose
draft token at that position was kept: upstream's ``#acc rate/pos``), mean tokens per decode
step, ratios against plain decoding of the same engine and against upstream at the same setting.
Greedy outputs are compared (reported, never fatal).

mtpllama runs in this one long-lived process (but for the fresh-process plain row), each setting
in its own session kept across the rounds, upstream in a new process per run.  Plain decoding in
this process, which also runs the MTP sessions, measured 1-8% slower than in a new process (median
3.5% over the 8 default models; outside the harness 0.96-1.03x paired, and a process running only
plain decoding is not slower), so both plain rows are reported; the ratios against plain use the
long-lived row, as they compare runs in one process.

Confirmation rounds: the main rounds run ~20 configurations one after another, a minute or more
per round, and the best fixed setting is the maximum of their noisy medians: selected and measured
on the same samples, it is biased upwards (two settings doing identical work differed by up to
30% in one round, 8% in their medians, on these machines).  So the rounds only *select* the
candidates (the best fixed setting, and the best one at another draft length), and then --confirm
rounds run adaptive, the candidates and plain decoding back to back, the order rotating.
Reported: each one's median over those rounds, the median over rounds of adaptive's speed over
each candidate's, and the same against plain decoding.

Before each run the harness waits for other processes to go quiet (--wait-idle), measures the
CPU they used during the run and reruns a run during which they used more than --busy-threshold
of the machine (--retries).

Outputs: a table on stdout, a JSON file with every run (--json, default
~/.cache/mtpllama/bench-results/results-DATE.json, outside the repository) and
benchmarks/RESULTS.md (--results-md) with the tables, the command and the machine.
``--render JSON`` rewrites the tables and RESULTS.md from an earlier run's JSON.

A full run (the 8 default models, 20 configurations, 4 rounds, 128 tokens, 6 confirmation rounds)
takes about 50 minutes on the 2-core machines (the dense Q8_0 files ~7 minutes each, the others
~5), plus ~4-7 minutes to build the upstream tools and ~5 minutes to generate the models the
first time.  Models: names from models.py (generated and cached on demand) or paths of GGUF files.
"""
from __future__ import annotations

import argparse
import datetime as dt
import shlex
import sys
import time
from pathlib import Path

import analysis
import fixtures
import report
from analysis import BenchRun, Conditions, EngineBuild, ModelRun, Sample, UpstreamTools
from fixtures import ADAPTIVE, PLAIN, Setting
from runners import LOADS, InProcess, NoiseMeter, Upstream, build_upstream_tools, describe_machine

HERE = Path(__file__).resolve().parent


def bench_model(name: str, path: Path, a: argparse.Namespace, tools: UpstreamTools | None) -> ModelRun:
    """The interleaved rounds, then the confirmation rounds, on one model."""
    ours = InProcess(path, a.threads, a.ctx, a.load)
    up = Upstream(tools, path, a.threads, a.ctx, a.timeout, a.load) if tools else None
    sets = fixtures.settings(a.ks, a.p_mins, a.adaptive, a.fresh)
    jobs: list[tuple[InProcess | Upstream, Setting]] = []
    for s in sets:
        jobs.append((ours, s))
        if up and s.mode in ("plain", "fixed"):  # right after mtpllama's run; so fresh runs next to upstream plain
            jobs.append((up, s))
    info = ours.model.info
    print(f"\n== {name}: {path} ({info.n_params / 1e9:.2f}B params, {info.model_bytes / 2**30:.2f} GiB), "
          f"{len(jobs)} runs x {a.repeats} rounds", file=sys.stderr, flush=True)
    ours.warmup(a.prompt)
    meter = NoiseMeter(a.busy_threshold, a.retries, a.wait_idle)

    def run(engine: InProcess | Upstream, s: Setting, tag: str) -> Sample:
        return meter.measure(lambda: engine.run(s, a.prompt, a.tokens), tag)

    t0 = time.perf_counter()
    samples = []
    for r in range(a.repeats):
        for engine, s in (jobs if r % 2 == 0 else reversed(jobs)):
            samples.append(run(engine, s, f"round {r + 1}"))
    confirm = []
    candidates = analysis.confirm_candidates(samples) if a.adaptive and a.confirm > 0 else []
    if candidates:
        group = analysis.confirm_group(candidates)
        for r in range(a.confirm):
            order = group[r % len(group):] + group[:r % len(group)]
            done = {s: run(ours, s, f"confirm {r + 1}") for s in order}
            confirm += [done[s] for s in group]
    elapsed = time.perf_counter() - t0
    ours.close()
    return ModelRun(name, str(path), info.n_params, info.model_bytes, info.use_mmap, sets, samples, confirm,
                    ADAPTIVE.spec() if a.adaptive else None, elapsed, meter.loadavg)


def upstream_tools(engine: EngineBuild) -> tuple[UpstreamTools, str]:
    """Build upstream's tools; and a warning when the engine was built from another patch set."""
    tools = build_upstream_tools()
    print(f"[bench] upstream tools: {tools.completion}, {tools.speculative} (build step {tools.build_seconds} s)",
          file=sys.stderr)
    if engine.patches_hash == tools.patches_hash:
        return tools, ""
    msg = (f"the engine ({engine.library}) was built with patch set {engine.patches_hash}, the upstream tools "
           f"with {tools.patches_hash}: rebuild the engine so that both run the same llama.cpp")
    print(f"[bench] WARNING: {msg}", file=sys.stderr)
    return tools, msg


def render(json_path: Path, results_md: str) -> int:
    run = analysis.load(json_path)
    results = [analysis.analyse(m, run.conditions.busy_threshold) for m in run.models]
    report.print_tables(results, run.conditions)
    report.print_overview(results)
    if results_md:
        report.write_md(Path(results_md), run, results, json_path)
        print(f"[bench] wrote {results_md}", file=sys.stderr)
    return 0


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    ap.add_argument("--models", nargs="+", default=fixtures.default_names(),
                    help="benchmark model names (models.py) or GGUF paths")
    ap.add_argument("--tokens", type=int, default=128)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--ctx", type=int, default=2048, help="context size for both engines")
    ap.add_argument("--load", choices=sorted(LOADS), default="default",
                    help="how both engines hold the weights: each its own default (mtpllama reads a file that fits "
                         "into memory, upstream maps it), or both the same: mmap (upstream -lm mmap) or memory "
                         "(upstream -lm none, with glibc's huge pages)")
    ap.add_argument("--ks", type=int, nargs="*", default=[1, 2, 3, 4], help="fixed draft lengths (none: plain only)")
    ap.add_argument("--p-mins", type=float, nargs="*", default=[0.0, 0.85], help="fixed draft_p_min values")
    ap.add_argument("--adaptive", dest="adaptive", action="store_true", default=True,
                    help="also run mtpllama's adaptive controller with SpecConfig() defaults (default)")
    ap.add_argument("--no-adaptive", dest="adaptive", action="store_false")
    ap.add_argument("--no-upstream", action="store_true", help="only mtpllama")
    ap.add_argument("--fresh", dest="fresh", action="store_true", default=True,
                    help="also run mtpllama's plain decoding in a new process per run, next to upstream's plain run "
                         "(upstream always runs that way; default)")
    ap.add_argument("--no-fresh", dest="fresh", action="store_false")
    ap.add_argument("--confirm", type=int, default=6,
                    help="rounds of adaptive against the two best fixed settings of the main rounds, back to back "
                         "(0: none)")
    ap.add_argument("--prompt", default=fixtures.PROMPT)
    ap.add_argument("--timeout", type=float, default=600.0, help="seconds per upstream run")
    ap.add_argument("--busy-threshold", type=float, default=0.15,
                    help="fraction of the machine's CPU used by other processes that marks a run as contended")
    ap.add_argument("--retries", type=int, default=2, help="rerun a contended run up to this many times")
    ap.add_argument("--wait-idle", type=float, default=30.0,
                    help="before each run, wait up to this many seconds for other processes to go quiet (0: never)")
    ap.add_argument("--json", type=Path, default=None,
                    help="default: ~/.cache/mtpllama/bench-results/results-DATE.json (outside the repository)")
    ap.add_argument("--render", type=Path, metavar="JSON",
                    help="only rewrite the tables and RESULTS.md from a JSON file of an earlier run")
    ap.add_argument("--results-md", default=str(HERE / "RESULTS.md"), help="'' to skip")
    return ap.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    a = parse_args(argv)
    if a.render:
        return render(a.render, a.results_md)
    now = dt.datetime.now(dt.timezone.utc)
    if a.json is None:
        a.json = fixtures.cache_root() / "bench-results" / f"results-{now.strftime('%Y%m%d-%H%M')}.json"
    a.json.parent.mkdir(parents=True, exist_ok=True)
    machine = describe_machine()  # the commit and engine build at the start of the run
    tools = None
    if not a.no_upstream:
        tools, machine.warning = upstream_tools(machine.engine)
    run = BenchRun(now.strftime("%Y-%m-%d %H:%M"),
                   "python3 benchmarks/bench.py " + shlex.join(sys.argv[1:] if argv is None else argv),
                   Conditions(a.tokens, a.repeats, a.threads, a.ctx, a.prompt, a.load, a.busy_threshold),
                   machine, tools, [])
    results = []
    for name in a.models:
        run.models.append(bench_model(*fixtures.resolve_model(name), a, tools))
        results.append(analysis.analyse(run.models[-1], a.busy_threshold))
        report.print_tables(results[-1:], run.conditions)
        sys.stdout.flush()
    report.print_overview(results)
    if tools:
        ex = Upstream(tools, Path("MODEL.gguf"), a.threads, a.ctx, a.timeout, a.load)
        tools.commands = [ex.command(s, "PROMPT", a.tokens) for s in (PLAIN, Setting("fixed", 3, 0.85))]
    analysis.save(run, a.json)
    print(f"\n[bench] wrote {a.json}", file=sys.stderr)
    if a.results_md:
        report.write_md(Path(a.results_md), run, results, a.json)
        print(f"[bench] wrote {a.results_md}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
