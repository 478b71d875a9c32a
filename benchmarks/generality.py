#!/usr/bin/env python3
"""Do the defaults find the best setting on files they were never tuned on?

    python3 benchmarks/generality.py                     # the whole set (~1.5 h on 2 cores)
    python3 benchmarks/generality.py --files dense-q4-unsure --no-sampled --rounds 1

A fractional design of eleven synthetic files that between them vary what a tuned controller would
get wrong -- the MTP head's calibration (sharp; right but unsure: as often right, less sure;
wrong but sure), its agreement with the trunk (high, medium, low), dense or MoE, the
quantisation (Q4_0, Q8_0, Q4_K, f16) and the architecture (glm4moe; deepseek2 with MLA; qwen35moe
with a recurrent trunk) -- plus
the shipped default model.

Protocol, per file and decoding mode (greedy; sampled at T 0.5 / 0.8 / 1.2 with llama.cpp's
default chain, top-k 40, top-p 0.95, min-p 0.05, on three files):
1. Selection rounds: every setting (plain, a grid of fixed settings, the defaults ``SpecConfig()``)
   on each prompt kind (code, prose, chat-formatted), interleaved; the best fixed setting is the
   one with the highest speed (per prompt kind the median over rounds, then the geometric mean).
2. Confirmation rounds: plain, the defaults and the two best fixed settings back to back on each
   prompt; a ratio is, per prompt kind, the median over rounds of the back-to-back runs' ratios,
   then the geometric mean over the kinds (each kind counts once).  The maximum of many
   noisy medians overstates the best fixed setting, so the headline takes these rounds.
Every setting keeps one session (and so its controller) across the rounds, as a user's
``Model.generate`` does.  The headline is the worst case over the set: defaults / best fixed and
defaults / plain.  ``--acceptance`` also measures sampled first-position acceptance (6 seeds x 512
tokens, steps after the first 32): defaults against exact-match and rejection sampling at the
sampling temperature (``--acceptance-only``: that alone).  The JSON is saved after every case;
``--render A.json B.json`` rebuilds the table from one or more runs.

Results: a table on stdout, the JSON of every run (--json) and the "Generality" section of
benchmarks/RESULTS.md (--results-md).
"""
from __future__ import annotations

import argparse
import datetime as dt
import json
import platform
import random
import statistics
import sys
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import mtpllama
from fixtures import SHAPES, NOISE, cache_dir, generate, spec_hash
from mtpllama import SamplingConfig, SessionConfig, SpecConfig
from runners import describe_machine

HERE = Path(__file__).resolve().parent

PROMPTS = {
    "code": "def merge_sorted(a, b):\n    \"\"\"Merge two sorted lists into one sorted list.\"\"\"\n",
    "prose": "The quick brown fox jumps over the lazy dog. When the draft is right, the trunk accepts it",
    "chat": "<|user|>\nWrite a function that returns the n-th Fibonacci number.\n<|assistant|>\n",
}

# head_scale: the NextN head's logits are multiplied by it (SyntheticSpec.head_scale)
HEADS = {"sharp": 1.0, "unsure": 0.2, "wrong-sure": 2.5}
# a smaller dense shape for f16, whose weights are twice as wide as Q8_0's
DENSE_SMALL = replace(SHAPES["dense"], n_embd=1536, n_layer=8, n_dense_lead=7, n_head=12, n_head_kv=4, n_ff=6144,
                      name="mtpllama-bench-dense-small")


@dataclass(frozen=True)
class FileDesign:
    shape: str
    dtype: str
    agreement: str      # hi, mid, lo (benchmarks/fixtures.py NOISE)
    head: str           # a key of HEADS
    sampled: bool = False

    @property
    def name(self) -> str:
        return f"{self.shape}-{self.dtype}-{self.agreement}-{self.head}"

    def spec(self):
        base = DENSE_SMALL if self.shape == "dense-small" else SHAPES[self.shape]
        noise = NOISE["dense" if self.shape == "dense-small" else self.shape][self.agreement]
        return replace(base, dtype=self.dtype, noise=noise, head_scale=HEADS[self.head],
                       name=f"mtpllama-generality-{self.name}")


# every level of each factor at least once; no two files share more than two levels
DESIGN = [
    FileDesign("dense", "q4_0", "hi", "unsure", sampled=True),
    FileDesign("air", "q8_0", "hi", "unsure"),
    FileDesign("dense", "q8_0", "hi", "sharp", sampled=True),
    FileDesign("moe", "q8_0", "mid", "sharp"),
    FileDesign("dense", "q4_k", "lo", "wrong-sure"),
    FileDesign("air", "q4_k", "mid", "unsure", sampled=True),
    FileDesign("dense-small", "f16", "mid", "sharp"),
    FileDesign("moe", "q4_0", "lo", "wrong-sure"),
    # another architecture: GLM-4.7-Flash-shaped (deepseek2, MLA), never tuned on
    FileDesign("flash", "q8_0", "hi", "unsure"),
    # and a recurrent one: Qwen3.6-35B-A3B-shaped (qwen35moe: a rollback restores a state snapshot)
    FileDesign("qwen36", "q8_0", "lo", "sharp"),
    FileDesign("qwen36", "q4_0", "hi", "unsure"),
]

TEMPERATURES = (0.5, 0.8, 1.2)
CHAIN = dict(top_k=40, top_p=0.95, min_p=0.05)


@dataclass(frozen=True)
class Setting:
    label: str
    spec: SpecConfig | None     # None: plain decoding

    @property
    def fixed(self) -> bool:
        return self.spec is not None and not self.spec.adaptive


PLAIN = Setting("plain", None)
DEFAULTS = Setting("defaults", SpecConfig())


def greedy_settings() -> list[Setting]:
    fixed = [Setting(f"k={k} p={p:g}", SpecConfig(k, p, adaptive=False)) for p in (0.0, 0.5) for k in (1, 2, 3, 4, 6)]
    return [PLAIN, *fixed, DEFAULTS]


def sampled_settings() -> list[Setting]:
    fixed = []
    for k in (1, 3):
        fixed += [Setting(f"k={k} rejection", SpecConfig(k, 0.0, adaptive=False)),
                  Setting(f"k={k} rejection-argmax", SpecConfig(k, 0.0, adaptive=False, draft_temperature=0.0)),
                  Setting(f"k={k} exact", SpecConfig(k, 0.0, adaptive=False, verify="exact"))]
    return [PLAIN, *fixed, DEFAULTS]


@dataclass
class Run:
    setting: str
    prompt: str
    phase: str                  # "select" or "confirm"
    round: int
    tps: float                  # decode tokens per second
    acceptance: list[float]
    tokens: list[int]


@dataclass
class Case:
    file: str
    mode: str                   # "greedy" or "T=0.8" ...
    runs: list[Run] = field(default_factory=list)


def ensure_file(d: FileDesign) -> Path:
    spec = d.spec()
    path = cache_dir() / f"generality-{d.name}-{spec_hash(spec)}.gguf"
    if not path.exists():
        print(f"[generality] generating {d.name} -> {path}", file=sys.stderr, flush=True)
        generate(spec, path)
    return path


class Bench:
    """One model, one session per (setting, mode) kept across rounds."""

    def __init__(self, path: Path, threads: int, n_ctx: int) -> None:
        self.model = mtpllama.Model(str(path), session_defaults=SessionConfig(n_threads=threads, n_ctx=n_ctx))
        self.sessions: dict[tuple[str, str], mtpllama.Session] = {}

    def run(self, s: Setting, mode: str, sampling: SamplingConfig, prompt: str, n: int) -> mtpllama.GenerationResult:
        key = (s.label, mode)
        if key not in self.sessions:
            self.sessions[key] = self.model.session(mtp=s.spec is not None)
        sess = self.sessions[key]
        sess.reset()
        return sess.generate(prompt, n, spec=s.spec or mtpllama.config.PLAIN, sampling=sampling)

    def close(self) -> None:
        for s in self.sessions.values():
            s.close()
        self.model.close()


def median_by(runs: list[Run], phase: str) -> dict[str, float]:
    """Per setting: the geometric mean over prompt kinds of the median speed over rounds."""
    out: dict[str, dict[str, list[float]]] = {}
    for r in runs:
        if r.phase == phase:
            out.setdefault(r.setting, {}).setdefault(r.prompt, []).append(r.tps)
    return {k: statistics.geometric_mean([statistics.median(v) for v in by_prompt.values()])
            for k, by_prompt in out.items()}


def paired(runs: list[Run], a: str, b: str) -> float | None:
    """a / b over the confirmation rounds: per prompt kind the median over rounds of the ratios of
    back-to-back runs, then the geometric mean over the prompt kinds (each kind counts once)."""
    by = {(r.setting, r.round, r.prompt): r.tps for r in runs if r.phase == "confirm"}
    per_prompt = []
    for kind in PROMPTS:
        ratios = [by[(a, rd, p)] / by[(b, rd, p)] for (s, rd, p) in by if s == a and p == kind and (b, rd, p) in by]
        if ratios:
            per_prompt.append(statistics.median(ratios))
    return statistics.geometric_mean(per_prompt) if per_prompt else None


def run_case(b: Bench, case: Case, settings: list[Setting], sampling: SamplingConfig, a) -> None:
    n = a.tokens_default if case.file == "default" else a.tokens
    order = list(settings)
    rng = random.Random(hash((case.file, case.mode)) & 0xFFFF)

    def one(s: Setting, prompt_kind: str, phase: str, rd: int) -> None:
        r = b.run(s, case.mode, replace(sampling, seed=rd * 7 + len(prompt_kind)), PROMPTS[prompt_kind], n)
        case.runs.append(Run(s.label, prompt_kind, phase, rd, r.stats.decode_tokens_per_second, r.stats.acceptance,
                             r.tokens))

    for rd in range(a.rounds):
        rng.shuffle(order)
        for prompt_kind in PROMPTS:
            for s in order:
                one(s, prompt_kind, "select", rd)
    med = median_by(case.runs, "select")
    fixed = sorted((s for s in settings if s.fixed), key=lambda s: -med[s.label])
    group = [PLAIN, DEFAULTS, *fixed[:2]]
    for rd in range(a.confirm):
        for prompt_kind in PROMPTS:
            for s in (group if rd % 2 == 0 else group[::-1]):
                one(s, prompt_kind, "confirm", rd)


def summarise(case: Case) -> dict:
    med = median_by(case.runs, "select")
    conf = median_by(case.runs, "confirm")
    fixed = [s for s in conf if s not in ("plain", "defaults")]
    best = max(fixed, key=lambda s: conf[s])
    plain_tokens = {(r.round, r.prompt, r.phase): r.tokens for r in case.runs if r.setting == "plain"}
    same = all(r.tokens == plain_tokens[(r.round, r.prompt, r.phase)] for r in case.runs
               if case.mode == "greedy" and (r.round, r.prompt, r.phase) in plain_tokens)
    acc = [r.acceptance for r in case.runs if r.setting == "k=3 p=0" or r.setting == "k=3 rejection"]
    return {
        "file": case.file, "mode": case.mode, "plain_tps": conf["plain"], "best_fixed": best,
        "defaults_x_best": paired(case.runs, "defaults", best), "defaults_x_plain": paired(case.runs, "defaults", "plain"),
        "best_x_plain": paired(case.runs, best, "plain"),
        "select_defaults_x_best": med["defaults"] / max(med[s] for s in med if s not in ("plain", "defaults")),
        "acceptance_k3": [round(statistics.mean(x), 3) for x in zip(*acc)] if acc else [],
        "greedy_identical": same if case.mode == "greedy" else None,
    }


def first_position_acceptance(b: Bench, spec: SpecConfig, t: float, seeds: int, n: int,
                              skip: int) -> tuple[float, int, dict]:
    """First-position acceptance over `seeds` generations of n tokens, each in a new session, counted
    over the steps after the first `skip`, the first drafts behind it, and (where the mixture is
    learnt: GenerationStats.first_paired) each verifier's acceptance chance on those same rows."""
    acc = drafted = 0
    paired = [0.0] * mtpllama._lib.N_MIX
    drawn = 0.0
    n_paired = 0
    for seed in range(seeds):
        with b.model.session() as s:
            it = s._run(PROMPTS[list(PROMPTS)[seed % 3]], n, spec,
                        SamplingConfig(temperature=t, seed=1000 + seed, **CHAIN), ())
            before = None
            for step, _ in enumerate(it):
                if step == skip:
                    before = s.stats()
            st = s.stats()
            first = (st.accepted[0] if st.accepted else 0) - (before.accepted[0] if before and before.accepted else 0)
            made = (st.drafted[0] if st.drafted else 0) - (before.drafted[0] if before and before.drafted else 0)
            acc += first
            drafted += made
            base = before or st.__class__()
            paired = [p + x - (base.first_paired[j] if base.first_paired else 0.0)
                      for j, (p, x) in enumerate(zip(paired, st.first_paired))]
            drawn += st.first_paired_drawn - base.first_paired_drawn
            n_paired += st.first_paired_drafts - base.first_paired_drafts
    pair = {}
    if n_paired:
        pair = {"paired exact": paired[-1] / n_paired, "paired rejection": paired[0] / n_paired,
                "paired defaults": drawn / n_paired, "paired drafts": n_paired}
        pair["paired defaults - max"] = pair["paired defaults"] - max(pair["paired exact"], pair["paired rejection"])
    return (acc / drafted if drafted else float("nan")), drafted, pair


def acceptance_rows(b: Bench, name: str, a) -> list[dict]:
    rows = []
    for t in TEMPERATURES:
        row = {"file": name, "T": t, "seeds": a.seeds, "tokens": a.accept_tokens}
        for label, spec in (("exact", SpecConfig(3, 0.0, adaptive=False, verify="exact")),
                            ("rejection", SpecConfig(3, 0.0, adaptive=False)), ("defaults", SpecConfig())):
            row[label], row[f"{label} drafts"], pair = first_position_acceptance(b, spec, t, a.seeds, a.accept_tokens, 32)
            if label == "defaults":
                row.update(pair)
        row["defaults - max"] = row["defaults"] - max(row["exact"], row["rejection"])
        rows.append(row)
        print(f"[generality] acceptance {name} T={t}: " + ", ".join(f"{k} {v:.3f}" for k, v in row.items()
                                                                     if isinstance(v, float) and k != "T"),
              file=sys.stderr, flush=True)
    return rows


def machine() -> dict:
    """The CPU, its flags, and the commit and build the run measures."""
    m = describe_machine()
    info = {}
    for line in Path("/proc/cpuinfo").read_text().splitlines() if Path("/proc/cpuinfo").exists() else []:
        key, _, value = line.partition(":")
        info.setdefault(key.strip(), value.strip())
    flags = " ".join(f for f in info.get("flags", "").split() if any(x in f for x in ("avx", "amx", "fma", "f16c", "vnni", "bf16")))
    return {"cpu": info.get("model name", platform.processor()), "flags": flags, "nproc": m.nproc,
            "platform": m.platform, "commit": m.git_commit, "dirty": m.git_dirty}


def fmt(x, f="{:.2f}") -> str:
    return "-" if x is None else f.format(x)


def markdown(summaries: list[dict], accept: list[dict], docs: list[dict]) -> str:
    """docs: the runs (command, started, machine); a summary's or acceptance row's "run" indexes them."""
    lines = []
    for i, d in enumerate(docs, 1):
        m = d["machine"]
        lines += [f"Run {i}, {d.get('started', '?')} UTC, at {m['commit']}{' (modified)' if m['dirty'] else ''}: "
                  f"`{d['command']}`", ""]
    m = docs[0]["machine"]
    lines += [f"Machine: {m['cpu']}, {m['nproc']} cores; flags: {m['flags']}", "",
              "| file | mode | run | plain t/s | best fixed | best / plain | defaults / best (confirm) | defaults / plain "
              "(confirm) | defaults / best (select) | acceptance at k=3 | greedy = plain |",
              "|---|---|---|---|---|---|---|---|---|---|---|"]
    for s in summaries:
        lines.append(f"| {s['file']} | {s['mode']} | {s.get('run', 1)} | {s['plain_tps']:.1f} | {s['best_fixed']} | "
                     f"{fmt(s['best_x_plain'])} | "
                     f"{fmt(s['defaults_x_best'])} | {fmt(s['defaults_x_plain'])} | {fmt(s['select_defaults_x_best'])} | "
                     f"{' '.join(f'{x:.2f}' for x in s['acceptance_k3'][:4])} | "
                     f"{'' if s['greedy_identical'] is None else 'yes' if s['greedy_identical'] else 'NO'} |")
    worst_best = min((s["defaults_x_best"] for s in summaries if s["defaults_x_best"]), default=None)
    worst_plain = min((s["defaults_x_plain"] for s in summaries if s["defaults_x_plain"]), default=None)
    lines += ["", f"Worst case over the set (confirmation rounds): defaults / best fixed {fmt(worst_best)}, "
                  f"defaults / plain {fmt(worst_plain)}."]
    if accept:
        lines += ["", "Sampled first-position acceptance (new session per seed, steps after the first 32; fixed runs "
                      "draft 3; the defaults draft where it pays, their first drafts counted in brackets):", "",
                  "| file | T | run | seeds x tokens | exact | rejection | defaults | defaults - max |",
                  "|---|---|---|---|---|---|---|---|"]
        for r in accept:
            lines.append(f"| {r['file']} | {r['T']} | {r.get('run', 1)} | {r.get('seeds', 6)} x {r.get('tokens', 512)} | "
                         f"{r['exact']:.3f} | "
                         f"{r['rejection']:.3f} | {r['defaults']:.3f}"
                         f"{' (%d)' % r['defaults drafts'] if 'defaults drafts' in r else ''} | "
                         f"{r['defaults - max']:+.3f} |")
        paired = [r for r in accept if "paired defaults" in r]
        if paired:
            lines += ["", "The same, paired: on the rows where the defaults' first drafts were verified, each "
                          "verifier's acceptance chance (exact-match: the trunk's probability of the head's arg-max; "
                          "rejection: the overlap of the trunk's and the head's distributions; the defaults: that of "
                          "the mixture drawn from), so that all three see the same contexts:", "",
                      "| file | T | run | first drafts | exact | rejection | defaults | defaults - max |",
                      "|---|---|---|---|---|---|---|---|"]
            for r in paired:
                lines.append(f"| {r['file']} | {r['T']} | {r.get('run', 1)} | {r['paired drafts']} | "
                             f"{r['paired exact']:.3f} | {r['paired rejection']:.3f} | {r['paired defaults']:.3f} | "
                             f"{r['paired defaults - max']:+.3f} |")
    return "\n".join(lines)


def write_results(path: Path, body: str) -> None:
    start, end = "<!-- generality:start -->", "<!-- generality:end -->"
    text = path.read_text() if path.exists() else ""
    section = f"{start}\n## Generality: the defaults on files they were not tuned on\n\n{body}\n{end}"
    if start in text and end in text:
        text = text[:text.index(start)] + section + text[text.index(end) + len(end):]
    else:
        text = text.rstrip("\n") + "\n\n" + section + "\n"
    path.write_text(text)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], epilog=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--files", nargs="*", default=[d.name for d in DESIGN] + ["default"],
                    help="design names (see DESIGN) and/or 'default' (the shipped model)")
    ap.add_argument("--tokens", type=int, default=256)
    ap.add_argument("--tokens-default", type=int, default=96, help="tokens per run on the default model")
    ap.add_argument("--rounds", type=int, default=1, help="selection rounds")
    ap.add_argument("--confirm", type=int, default=3, help="confirmation rounds (greedy)")
    ap.add_argument("--confirm-sampled", type=int, default=2, help="confirmation rounds (sampled)")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--no-sampled", action="store_true")
    ap.add_argument("--acceptance", action="store_true", help="also measure sampled first-position acceptance")
    ap.add_argument("--acceptance-only", action="store_true", help="only the acceptance (sampled files)")
    ap.add_argument("--seeds", type=int, default=6)
    ap.add_argument("--accept-tokens", type=int, default=512)
    ap.add_argument("--json", type=Path, default=None)
    ap.add_argument("--results-md", default=str(HERE / "RESULTS.md"), help="'' to skip")
    ap.add_argument("--render", type=Path, nargs="+", metavar="JSON",
                    help="only analyse earlier runs' JSON again (several: one table; a later run's case replaces an "
                         "earlier one's of the same file and mode)")
    a = ap.parse_args(argv)
    if a.render:
        docs = [json.loads(p.read_text()) for p in a.render]
        # a later run's case replaces an earlier one's of the same file and mode (a rerun)
        by_case = {(c["file"], c["mode"]): (i, c) for i, d in enumerate(docs, 1) for c in d["cases"]}
        summaries = [dict(summarise(Case(c["file"], c["mode"], [Run(**r) for r in c["runs"]])), run=i)
                     for i, c in by_case.values()]
        by_row = {(r["file"], r["T"]): dict(r, run=i) for i, d in enumerate(docs, 1) for r in d["acceptance"]}
        body = markdown(summaries, list(by_row.values()), docs)
        print(body)
        if a.results_md:
            write_results(Path(a.results_md), body)
        return 0
    started = dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%d %H:%M")
    cmd = "python3 benchmarks/generality.py " + " ".join(sys.argv[1:] if argv is None else argv)
    mach = machine()
    designs = {d.name: d for d in DESIGN}
    summaries, accept, cases = [], [], []
    out = a.json or cache_dir().parent / "bench-results" / f"generality-{started.replace(' ', '-').replace(':', '')}.json"
    out.parent.mkdir(parents=True, exist_ok=True)

    def save() -> None:  # after every case: a run cut short keeps what it measured (--render reads it)
        out.write_text(json.dumps({"command": cmd, "started": started, "machine": mach, "summaries": summaries,
                                   "acceptance": accept, "cases": [asdict(c) for c in cases]}, default=str))

    for name in a.files:
        if name == "default":
            path, d = Path(mtpllama.__file__).parent / "models" / "default.gguf", None
        else:
            d = designs[name]
            path = ensure_file(d)
        b = Bench(path, a.threads, 512 if d is None else 2048)
        try:
            modes = [] if a.acceptance_only else [("greedy", SamplingConfig(), greedy_settings(), a.confirm)]
            if d is not None and d.sampled and not a.no_sampled and not a.acceptance_only:
                modes += [(f"T={t}", SamplingConfig(temperature=t, **CHAIN), sampled_settings(), a.confirm_sampled)
                          for t in TEMPERATURES]
            for mode, sampling, settings, confirm in modes:
                case = Case(name, mode)
                run_case(b, case, settings, sampling, _with(a, confirm))
                cases.append(case)
                s = summarise(case)
                summaries.append(s)
                print(f"[generality] {name} {mode}: best fixed {s['best_fixed']} {fmt(s['best_x_plain'])}x plain; "
                      f"defaults {fmt(s['defaults_x_best'])}x best, {fmt(s['defaults_x_plain'])}x plain",
                      file=sys.stderr, flush=True)
                save()
            if (a.acceptance or a.acceptance_only) and d is not None and d.sampled:
                accept += acceptance_rows(b, name, a)
                save()
        finally:
            b.close()
    body = markdown(summaries, accept, [{"command": cmd, "started": started, "machine": mach}])
    print(body)
    save()
    print(f"[generality] wrote {out}", file=sys.stderr)
    if a.results_md:
        write_results(Path(a.results_md), body)
    return 0


def _with(a, confirm: int):
    b = argparse.Namespace(**vars(a))
    b.confirm = confirm
    return b


if __name__ == "__main__":
    sys.exit(main())
