#!/usr/bin/env python3
"""Side-by-side decode-speed benchmark: mtpllama against upstream llama.cpp's own tools.

    python3 benchmarks/bench.py --models dense-hi moe-lo --tokens 128 --repeats 3 --threads 2

Per model, in INTERLEAVED rounds (every configuration once per round, the mtpllama and upstream
runs of one setting next to each other, the order reversed every other round):

* mtpllama plain: ``Model.generate(prompt, n, mtp=False)``
* mtpllama plain, fresh process (--fresh, default): the same in a new Python process per run,
  as every upstream run is, placed next to upstream's plain run
* mtpllama fixed k: ``SpecConfig(draft_max=k, draft_p_min=p, adaptive=False)``, k in --ks, p in --p-mins
* mtpllama adaptive: ``SpecConfig()`` (the defaults: the adaptive controller), if SpecConfig has
  an ``adaptive`` field (skipped with a note otherwise)
* upstream plain: ``llama-completion`` (``eval time`` of its perf report: single-token decodes)
* upstream draft-mtp: ``llama-speculative-simple --spec-type draft-mtp --spec-draft-n-max k
  --spec-draft-p-min p`` (its ``decoded N tokens in S seconds``: the loop after the prompt)

all on the same GGUF file, thread count, context size, prompt and token count, greedy.  Both
upstream tools are built from the package's own pinned, patched tree (build_upstream.py).
Each engine holds the weights its own default way (--load default): mtpllama reads a file that
fits into memory, on transparent huge pages (ModelConfig.use_mmap, patches/0007, 0010), upstream maps
the file.  --load memory (both read, upstream with glibc advising huge pages) and --load mmap
(both map) compare the engines like for like.

Speeds are decode speeds, prompt processing excluded: for mtpllama ``(generated - 1) /
(t_draft + t_verify + t_other)`` (the first token comes out of the prompt pass, whose time is
t_prefill; upstream's numbers count tokens the same way), for upstream the tools' own printed
timing.  Reported: min and median tokens/s over the repeats, acceptance per draft position
(the fraction of decode steps whose draft token at that position was kept: upstream's
``#acc rate/pos``), mean tokens per decode step, ratios against plain decoding of the same
engine and against upstream at the same setting.  Greedy outputs are compared (reported,
never fatal).  mtpllama runs in this one long-lived process (but for the fresh-process plain
row), upstream in a new process per run.  Plain decoding in this process, which also runs the
MTP sessions, measured 1-8% slower than in a new process (median 3.5% over the 8 default models;
outside the harness 0.96-1.03x paired, and a process running only plain decoding is not slower),
so both plain rows are reported; the ratios against plain use the
long-lived row, as they compare runs in one process.  After the rounds, --confirm rounds run
adaptive back to back with the rounds' two best fixed settings and plain decoding (see
confirm_adaptive).

Outputs: a table on stdout, a JSON file with every run (--json, default
~/.cache/mtpllama/bench-results/results-DATE.json, outside the repository) and
benchmarks/RESULTS.md (--results-md) with the tables, the command and the machine.
``--render JSON`` rewrites the tables and RESULTS.md from an earlier run's JSON.

Needs the engine: ``MTPLLAMA_LIBRARY=build/dev/libmtpllama.so PYTHONPATH=python`` in a checkout
(or the installed package).  A full run (the 8 default models, 20 configurations, 4 rounds, 128
tokens, 6 confirmation rounds) takes about 50 minutes on the 2-core machines (the dense Q8_0
files ~7 minutes each, the others ~5), plus ~4-7 minutes to build the upstream tools and ~5
minutes to generate the models the first time.
Models: names from models.py (generated and cached on demand) or paths of GGUF files.
"""
from __future__ import annotations

import argparse
import dataclasses
import datetime as dt
import json
import os
import platform
import re
import resource
import shlex
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
sys.path.insert(0, str(REPO / "python"))
sys.path.insert(0, str(HERE))

import build_upstream  # noqa: E402
import models as bench_models  # noqa: E402

DEFAULT_PROMPT = bench_models.PROMPT


# --- configurations -------------------------------------------------------------------

@dataclass(frozen=True)
class Setting:
    mode: str            # "plain", "fresh" (plain in a new process per run), "fixed", "adaptive"
    k: int = 0
    p: float = 0.0

    @property
    def label(self) -> str:
        if self.mode == "fixed":
            return f"k={self.k} p={self.p:g}"
        if self.mode == "fresh":
            return "plain, fresh process"
        return self.mode


@dataclass
class Sample:
    engine: str
    setting: Setting
    tps: float
    tokens: int
    steps: int
    acc_pos: list[float]
    tok_per_step: float
    text: str = ""
    extra: dict = field(default_factory=dict)


def has_adaptive() -> bool:
    import mtpllama

    return "adaptive" in {f.name for f in dataclasses.fields(mtpllama.SpecConfig)}


# --- mtpllama -------------------------------------------------------------------------

# One plain generation in a new interpreter; prints decode tokens/s as Ours.run computes them, then
# the token ids.  Written out rather than imported: the point is a cold process (importing numpy
# and the model generator before the run was itself measured to slow plain decoding a little).
FRESH_PLAIN = """
import json, sys
sys.path.insert(0, {python!r})
import mtpllama
cfg = mtpllama.SessionConfig(n_threads={threads}, n_ctx={ctx})
with mtpllama.Model({path!r}, mtp=False, use_mmap={use_mmap!r}, session_defaults=cfg) as m:
    r = m.generate({prompt!r}, {tokens})
st = r.stats
print((st.generated_tokens - 1) / (st.t_draft + st.t_verify + st.t_other))
print(json.dumps([st.generated_tokens, st.prompt_tokens, list(r.tokens)]))
"""


# --load: how each engine holds the file's weights: mtpllama's use_mmap, upstream's extra arguments
# and environment.  "default" is each engine's own default: mtpllama reads a file that fits into
# memory (ModelConfig.use_mmap=None) on huge pages (patches/0007, 0010), upstream maps it.  "memory" gives
# upstream huge pages too: glibc then advises its large blocks as mtpllama advises its buffers.
LOADS = {"default": (None, [], {}), "mmap": (True, ["-lm", "mmap"], {}),
         "memory": (False, ["-lm", "none"], {"GLIBC_TUNABLES": "glibc.malloc.hugetlb=1"})}


LOAD_NOTES = {
    "default": "each engine's default (--load default): mtpllama reads a file that fits into memory "
               "(`ModelConfig.use_mmap=None`) on transparent huge pages (patches/0007, 0010), upstream maps it.",
    "mmap": "both engines map the file (--load mmap; upstream `-lm mmap`).",
    "memory": "both engines read the file into memory on huge pages (--load memory; upstream `-lm none` with "
              "`GLIBC_TUNABLES=glibc.malloc.hugetlb=1`).",
}


def fresh_plain(path: Path, threads: int, ctx: int, prompt: str, tokens: int,
                load: str = "default") -> tuple[float, dict]:
    """mtpllama plain decoding in a new Python process (as every upstream run is): tokens/s and
    what else the process printed (generated and prompt token counts, the token ids)."""
    code = FRESH_PLAIN.format(python=str(REPO / "python"), threads=threads, ctx=ctx, path=str(path), prompt=prompt,
                              tokens=tokens, use_mmap=LOADS[load][0])
    p = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=600)
    if p.returncode != 0:
        raise RuntimeError(f"mtpllama run in a new process failed:\n{p.stderr[-2000:]}")
    lines = p.stdout.strip().splitlines()
    n_gen, n_prompt, ids = json.loads(lines[-1])
    return float(lines[-2]), {"generated_tokens": n_gen, "prompt_tokens": n_prompt, "token_ids": ids}


class Ours:
    def __init__(self, path: Path, threads: int, n_ctx: int, load: str = "default") -> None:
        import mtpllama

        self.mtpllama = mtpllama
        self.path, self.threads, self.n_ctx, self.load = path, threads, n_ctx, load
        self.model = mtpllama.Model(str(path), use_mmap=LOADS[load][0],
                                    session_defaults=mtpllama.SessionConfig(n_threads=threads, n_ctx=n_ctx))
        self.adaptive = has_adaptive()
        self.sessions: dict = {}

    def close(self) -> None:
        for sess in self.sessions.values():
            sess.close()
        self.model.close()

    def spec(self, s: Setting):
        SpecConfig = self.mtpllama.SpecConfig
        if s.mode == "fixed":
            return bench_models.fixed_spec(s.k, s.p)
        if s.mode == "adaptive":
            return SpecConfig()
        raise ValueError(s)

    def warmup(self, prompt: str) -> None:
        self.model.generate(prompt, 8, mtp=False)
        self.model.generate(prompt, 8, spec=bench_models.fixed_spec(2, 0.0))
        if self.adaptive:
            self.model.generate(prompt, 8)

    def session(self, s: Setting):
        """One session per setting, kept across rounds, as a user running that setting has: what the
        adaptive controller learns in its session is not mixed with other settings' steps."""
        if s not in self.sessions:
            self.sessions[s] = self.model.session(mtp=s.mode != "plain")
        sess = self.sessions[s]
        sess.reset()
        return sess

    def run(self, s: Setting, prompt: str, n: int) -> Sample:
        if s.mode == "fresh":
            tps, out = fresh_plain(self.path, self.threads, self.n_ctx, prompt, n, self.load)
            return Sample("mtpllama", s, tps, out["generated_tokens"], out["generated_tokens"], [], 1.0, "",
                          {"prompt_tokens": out["prompt_tokens"], "token_ids": out["token_ids"]})
        sess = self.session(s)
        if s.mode == "plain":
            r = sess.generate(prompt, n)
        else:
            r = sess.generate(prompt, n, spec=self.spec(s))
        st = r.stats
        t_dec = st.t_draft + st.t_verify + st.t_other
        dec_tokens = st.generated_tokens - 1          # the first token came from the prompt pass
        dec_steps = max(1, st.steps - 1)
        extra = {"prompt_tokens": st.prompt_tokens, "t_prefill": st.t_prefill, "t_draft": st.t_draft,
                 "t_verify": st.t_verify, "t_other": st.t_other, "wall": st.wall,
                 "drafted": list(st.drafted), "accepted": list(st.accepted),
                 "tps_engine_all_tokens": st.generated_tokens / t_dec if t_dec > 0 else 0.0,
                 "tps_wall_minus_prefill": dec_tokens / (st.wall - st.t_prefill) if st.wall > st.t_prefill else 0.0,
                 "token_ids": list(r.tokens),
                 "graphs": [getattr(st, "trunk_graphs_reused", 0), st.trunk_calls,
                            getattr(st, "mtp_graphs_reused", 0), st.mtp_calls]}
        if s.mode != "plain":
            sp = self.spec(s)
            extra["spec"] = {f.name: getattr(sp, f.name) for f in dataclasses.fields(sp)}
        for name in ("k_chosen", "est_accept", "est_made", "est_step", "est_verify", "est_draft"):
            if hasattr(st, name):
                v = getattr(st, name)
                extra[name] = {str(a): b for a, b in v.items()} if isinstance(v, dict) else v
        return Sample("mtpllama", s, dec_tokens / t_dec if t_dec > 0 else 0.0, st.generated_tokens, st.steps,
                      [a / dec_steps for a in st.accepted], dec_tokens / dec_steps, r.text, extra)


# --- upstream -------------------------------------------------------------------------

_RE_EVAL = re.compile(r"common_perf_print:\s+eval time =\s*([\d.]+) ms /\s*(\d+) runs")
_RE_PEVAL = re.compile(r"common_perf_print: prompt eval time =\s*([\d.]+) ms /\s*(\d+) tokens")
_RE_DECODED = re.compile(r"decoded\s+(\d+) tokens in\s+([\d.]+) seconds, speed:\s*([\d.]+) t/s")
_RE_ENCODED = re.compile(r"encoded\s+(\d+) tokens in\s+([\d.]+) seconds")
_RE_NDRAFTED = re.compile(r"n_drafted\s*=\s*(\d+)")
_RE_NACCEPT = re.compile(r"n_accept\s*=\s*(\d+)")
_RE_STATS = re.compile(r"#calls\(b,g,a\) =\s*(\d+)\s+(\d+)\s+(\d+).*?#mean acc len = ([\d.]+), #acc rate/pos = \(([^)]*)\)")
_RE_CALLS = re.compile(r"#calls\(b,g,a\) =\s*(\d+)\s+(\d+)\s+(\d+)")


class Upstream:
    def __init__(self, bins: dict[str, str], path: Path, threads: int, n_ctx: int, timeout: float,
                 load: str = "default") -> None:
        self.bins, self.path, self.threads, self.n_ctx, self.timeout = bins, path, threads, n_ctx, timeout
        self.load = load

    def common_args(self, prompt: str, n: int) -> list[str]:
        t = str(self.threads)
        return ["-m", str(self.path), "-p", prompt, "-n", str(n), "-t", t, "-tb", t, "-c", str(self.n_ctx),
                "--temp", "0", "-s", "0", *LOADS[self.load][1]]

    def command(self, s: Setting, prompt: str, n: int) -> list[str]:
        if s.mode == "plain":
            return [self.bins["COMPLETION"], *self.common_args(prompt, n), "-no-cnv"]
        if s.mode == "fixed":
            return [self.bins["SPECULATIVE"], *self.common_args(prompt, n), "--spec-type", "draft-mtp",
                    "--spec-draft-n-max", str(s.k), "--spec-draft-p-min", str(s.p), "-lv", "4"]
        raise ValueError(s)

    def run(self, s: Setting, prompt: str, n: int) -> Sample:
        cmd = self.command(s, prompt, n)
        p = subprocess.run(cmd, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                           env={**os.environ, **LOADS[self.load][2]},
                           timeout=self.timeout)
        out = p.stdout.decode("utf-8", errors="replace")
        err = p.stderr.decode("utf-8", errors="replace")
        if p.returncode != 0:
            raise RuntimeError(f"{shlex.join(cmd[:1])} exited {p.returncode}:\n{err[-3000:]}")
        text = _generated_text(out, prompt)
        if s.mode == "plain":
            m = _RE_EVAL.search(err)
            if not m:
                raise RuntimeError(f"no 'eval time' in llama-completion's output:\n{err[-2000:]}")
            ms, runs = float(m.group(1)), int(m.group(2))
            mp = _RE_PEVAL.search(err)
            extra = {"eval_ms": ms, "eval_runs": runs, "prompt_tokens": int(mp.group(2)) if mp else None}
            return Sample("upstream", s, runs / (ms / 1e3), runs + 1, runs + 1, [], 1.0, text, extra)
        m = _RE_DECODED.search(err)
        if not m:
            raise RuntimeError(f"no 'decoded N tokens' in llama-speculative-simple's output:\n{err[-2000:]}")
        n_dec, secs = int(m.group(1)), float(m.group(2))
        me = _RE_ENCODED.search(err)
        extra = {"decoded": n_dec, "seconds": secs, "prompt_tokens": int(me.group(1)) if me else None}
        acc_pos: list[float] = []
        tok_per_step = float("nan")
        steps = 0
        ms = _RE_STATS.search(err)
        if ms:
            steps = int(ms.group(3))
            tok_per_step = float(ms.group(4))
            acc_pos = [float(x) for x in ms.group(5).split(",") if x.strip()]
        else:
            mc = _RE_CALLS.search(err)
            if mc:
                steps = int(mc.group(3))
        nd, na = _RE_NDRAFTED.search(err), _RE_NACCEPT.search(err)
        if nd and na:
            extra.update(n_drafted=int(nd.group(1)), n_accept=int(na.group(1)))
            if steps and tok_per_step != tok_per_step:
                tok_per_step = 1 + int(na.group(1)) / steps
        return Sample("upstream", s, n_dec / secs if secs > 0 else 0.0, n_dec, steps, acc_pos, tok_per_step, text, extra)


def _generated_text(stdout: str, prompt: str) -> str:
    """The generated text in a tool's stdout: what follows the echoed prompt."""
    i = stdout.find(prompt)
    rest = stdout[i + len(prompt):] if i >= 0 else stdout
    return rest.rstrip("\n").replace(" [end of text]", "")


# --- running ----------------------------------------------------------------------------

def resolve_model(name: str) -> tuple[str, Path]:
    p = Path(name).expanduser()
    if p.suffix == ".gguf" or p.exists():
        if not p.exists():
            raise SystemExit(f"no such model file: {p}")
        return p.stem, p
    return name, bench_models.ensure(name)


def settings(ks: list[int], p_mins: list[float], adaptive: bool, fresh: bool = False) -> list[Setting]:
    out = [Setting("plain")] + ([Setting("fresh")] if fresh else []) + [Setting("fixed", k, p) for p in p_mins for k in ks]
    if adaptive:
        out.append(Setting("adaptive"))
    return out


class CpuMeter:
    """CPU time used by OTHER processes while a run goes on: the machine's busy time (/proc/stat)
    minus this process's and its children's.  ``foreign`` is that as a fraction of all cores."""

    HZ = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100
    NCPU = os.cpu_count() or 1

    @staticmethod
    def snap() -> tuple[float, float, float]:
        try:
            with open("/proc/stat") as f:
                v = [int(x) for x in f.readline().split()[1:9]]
            busy = (sum(v) - v[3] - v[4]) / CpuMeter.HZ
        except (OSError, ValueError):
            busy = float("nan")
        own = 0.0
        for who in (resource.RUSAGE_SELF, resource.RUSAGE_CHILDREN):
            ru = resource.getrusage(who)
            own += ru.ru_utime + ru.ru_stime
        return time.monotonic(), busy, own

    @staticmethod
    def foreign(a, b) -> float:
        wall = b[0] - a[0]
        if wall <= 0:
            return 0.0
        return max(0.0, ((b[1] - a[1]) - (b[2] - a[2])) / (wall * CpuMeter.NCPU))

    @classmethod
    def wait_idle(cls, threshold: float, max_wait: float) -> float:
        """Wait (at most max_wait seconds) until other processes use < threshold of the machine
        over half a second; returns the last measured fraction."""
        t_end = time.monotonic() + max_wait
        while True:
            a = cls.snap()
            time.sleep(0.5)
            f = cls.foreign(a, cls.snap())
            if f < threshold or time.monotonic() >= t_end:
                return f
            time.sleep(2.0)


def loadavg() -> float:
    try:
        return os.getloadavg()[0]
    except OSError:
        return float("nan")


def measure(ours: Ours, up: Upstream | None, engine: str, s: Setting, a, tag: str, loads: list[float]) -> Sample:
    """One run, on a quiet machine if it gets quiet: rerun (up to --retries times) while other
    processes used more than --busy-threshold of the machine during it."""
    for attempt in range(a.retries + 1):
        if a.wait_idle > 0:
            CpuMeter.wait_idle(a.busy_threshold, a.wait_idle)
        loads.append(loadavg())
        c0 = CpuMeter.snap()
        smp = ours.run(s, a.prompt, a.tokens) if engine == "mtpllama" else up.run(s, a.prompt, a.tokens)
        smp.extra["foreign_cpu"] = CpuMeter.foreign(c0, CpuMeter.snap())
        smp.extra["attempt"] = attempt
        busy = smp.extra["foreign_cpu"] >= a.busy_threshold
        print(f"  {tag} {engine:8s} {s.label:12s} {smp.tps:8.2f} t/s  {smp.tok_per_step:5.2f} tok/step  "
              f"acc {' '.join(f'{x:.2f}' for x in smp.acc_pos):24s} other processes {smp.extra['foreign_cpu']:.0%}"
              f"{'  (busy machine: retrying)' if busy and attempt < a.retries else ''}",
              file=sys.stderr, flush=True)
        if not busy:
            break
    return smp


def confirm_adaptive(ours: Ours, samples: list[Sample], a, loads: list[float]) -> dict:
    """Adaptive against the best fixed settings, on fresh runs side by side.

    The main rounds run ~20 configurations one after another, a minute or more per round, and the
    best fixed setting is the maximum of their noisy medians: selected and measured on the same
    samples, it is biased upwards (two settings doing identical work differed by up to 30% in one
    round, 8% in their medians, on these machines).  So the rounds only *select* the candidates (the best fixed
    setting, and the best one at another draft length), and then --confirm rounds run adaptive
    and the candidates back to back, the order rotating.  Reported: each candidate's median
    over those rounds and the median over rounds of adaptive's speed over the candidate's; and the
    same against plain decoding, which runs in those rounds too."""
    fixed = {}
    for smp in samples:
        if smp.engine == "mtpllama" and smp.setting.mode == "fixed":
            fixed.setdefault(smp.setting, []).append(smp.tps)
    ranked = sorted(fixed, key=lambda s: statistics.median(fixed[s]), reverse=True)
    if not ranked:
        return {}
    cands = [ranked[0]] + [s for s in ranked if s.k != ranked[0].k][:1]
    # plain decoding runs alongside too: at low acceptance plain is the one to beat, and the main
    # rounds run ~20 configurations between adaptive and plain, so drift moves them apart
    plain = Setting("plain")
    group = [Setting("adaptive")] + cands + [plain]
    out: list[Sample] = []
    for r in range(a.confirm):
        order = group[r % len(group):] + group[:r % len(group)]
        rnd = {s: measure(ours, None, "mtpllama", s, a, f"confirm {r + 1}", loads) for s in order}
        out += [rnd[s] for s in group]
    tps = {s.label: [x.tps for x in out if x.setting == s] for s in group}
    ad = tps["adaptive"]
    paired = {s.label: statistics.median(x / y for x, y in zip(ad, tps[s.label])) for s in cands}
    best = max(cands, key=lambda s: statistics.median(tps[s.label]))
    return {"candidates": [s.label for s in cands], "rounds": a.confirm, "tps": tps,
            "median": {k: statistics.median(v) for k, v in tps.items()}, "paired": paired,
            "best": best.label, "x_best": statistics.median(ad) / statistics.median(tps[best.label]),
            "x_best_paired": min(paired.values()),
            "x_plain": statistics.median(ad) / statistics.median(tps[plain.label]),
            "x_plain_paired": statistics.median(x / y for x, y in zip(ad, tps[plain.label])), "samples": out}


def bench_model(name: str, path: Path, a, bins: dict[str, str] | None) -> dict:
    ours = Ours(path, a.threads, a.ctx, a.load)
    up = Upstream(bins, path, a.threads, a.ctx, a.timeout, a.load) if bins else None
    want_adaptive = a.adaptive and ours.adaptive
    sets = settings(a.ks, a.p_mins, want_adaptive, a.fresh)
    jobs: list[tuple[str, Setting]] = []
    for s in sets:
        jobs.append(("mtpllama", s))
        if up and s.mode not in ("adaptive", "fresh"):
            jobs.append(("upstream", s))
    info = ours.model.info
    print(f"\n== {name}: {path} ({info.n_params / 1e9:.2f}B params, {info.model_bytes / 2**30:.2f} GiB), "
          f"{len(jobs)} runs x {a.repeats} rounds", file=sys.stderr, flush=True)
    ours.warmup(a.prompt)
    samples: list[Sample] = []
    loads: list[float] = []
    t0 = time.perf_counter()
    for r in range(a.repeats):
        order = jobs if r % 2 == 0 else list(reversed(jobs))
        for engine, s in order:
            samples.append(measure(ours, up, engine, s, a, f"round {r + 1}", loads))
    confirm = confirm_adaptive(ours, samples, a, loads) if want_adaptive and a.confirm > 0 else None
    every = samples + (confirm or {}).get("samples", [])
    elapsed = time.perf_counter() - t0
    ours.close()
    res = summarise(name, path, info, sets, samples, a)
    if confirm:
        res["confirm"] = confirm
    res["elapsed_s"] = elapsed
    res["loadavg_max"] = max(loads) if loads else None
    res["loadavg_median"] = statistics.median(loads) if loads else None
    fc = [x.extra["foreign_cpu"] for x in every]
    res["foreign_cpu_max"] = max(fc) if fc else None
    res["contended_samples"] = sum(f >= a.busy_threshold for f in fc)
    res["retried_samples"] = sum(x.extra["attempt"] > 0 for x in every)
    res["n_samples"] = len(every)
    if confirm:
        confirm["samples"] = [{"setting": x.setting.label, "tps": x.tps, "k_chosen": x.extra.get("k_chosen")}
                              for x in confirm["samples"]]
    if a.adaptive and not ours.adaptive:
        res["notes"].append("adaptive skipped: this mtpllama's SpecConfig has no 'adaptive' field")
    return res


def _agg(ss: list[Sample]) -> dict:
    tps = [s.tps for s in ss]
    n_pos = max((len(s.acc_pos) for s in ss), default=0)
    acc = [statistics.mean(s.acc_pos[i] if i < len(s.acc_pos) else 0.0 for s in ss) for i in range(n_pos)]
    tps_sorted = sorted(tps)
    graphs = [s.extra["graphs"] for s in ss if "graphs" in s.extra]
    return {"graphs": [sum(g[i] for g in graphs) for i in range(4)] if graphs else None,"tps": tps, "min": min(tps), "median": statistics.median(tps), "max": max(tps),
            "acc_pos": acc, "tok_per_step": statistics.mean(s.tok_per_step for s in ss),
            "tokens": [s.tokens for s in ss], "steps": [s.steps for s in ss],
            "extra": [{k: v for k, v in s.extra.items() if k != "token_ids"} for s in ss], "_sorted": tps_sorted}


def summarise(name: str, path: Path, info, sets: list[Setting], samples: list[Sample], a) -> dict:
    rows = []
    by = {}
    for smp in samples:
        by.setdefault((smp.engine, smp.setting), []).append(smp)
    ours_plain = by.get(("mtpllama", Setting("plain")))
    up_plain = by.get(("upstream", Setting("plain")))
    notes: list[str] = []
    for s in sets:
        row = {"setting": s.label, "mode": s.mode, "k": s.k, "p_min": s.p}
        for eng in ("mtpllama", "upstream"):
            ss = by.get((eng, s))
            if not ss:
                continue
            g = _agg(ss)
            g.pop("_sorted")
            if s.mode == "fixed":   # positions nobody accepted are missing from upstream's list
                g["acc_pos"] = (g["acc_pos"] + [0.0] * s.k)[:s.k]
            plain = ours_plain if eng == "mtpllama" else up_plain
            if plain:
                g["x_plain"] = g["median"] / statistics.median(x.tps for x in plain)
            row[eng] = g
        if "mtpllama" in row and "upstream" in row:
            row["x_upstream"] = row["mtpllama"]["median"] / row["upstream"]["median"]
            row["x_upstream_paired"] = paired_ratio(row)
        elif s.mode == "fresh" and "mtpllama" in row and up_plain:  # against upstream plain, run next to it
            pl = {"mtpllama": row["mtpllama"], "upstream": _agg(up_plain)}
            row["x_upstream"] = row["mtpllama"]["median"] / pl["upstream"]["median"]
            row["x_upstream_paired"] = paired_ratio(pl)
        rows.append(row)
    # best fixed settings, and adaptive against them
    fixed = [r for r in rows if r["mode"] == "fixed"]
    best = {}
    for eng in ("mtpllama", "upstream"):
        cand = [r for r in fixed if eng in r]
        if cand:
            b = max(cand, key=lambda r: r[eng]["median"])
            best[eng] = {"setting": b["setting"], "median": b[eng]["median"], "x_plain": b[eng].get("x_plain")}
    ad = next((r for r in rows if r["mode"] == "adaptive"), None)
    if ad and "mtpllama" in ad:
        for eng in best:
            ad["mtpllama"][f"x_best_fixed_{eng}"] = ad["mtpllama"]["median"] / best[eng]["median"]
        ad_samples = by[("mtpllama", Setting("adaptive"))]
        if "k_chosen" in ad_samples[0].extra:
            tot = [sum(x.extra["k_chosen"][i] for x in ad_samples) for i in range(len(ad_samples[0].extra["k_chosen"]))]
            while tot and tot[-1] == 0:
                tot.pop()
            ad["mtpllama"]["k_chosen_total"] = tot
        ad["mtpllama"]["spec"] = ad_samples[0].extra.get("spec")
    # greedy output agreement
    agree = {}
    if ours_plain:
        ref_tokens = ours_plain[0].extra["token_ids"]
        lossless = all(x.extra["token_ids"] == ref_tokens for k2, v in by.items() if k2[0] == "mtpllama" for x in v)
        agree["mtpllama_all_settings_same_tokens"] = lossless
        if not lossless:
            notes.append("mtpllama: some MTP run's greedy tokens differ from plain decoding's")
        ref = ours_plain[0].text
        for (eng, s), v in by.items():
            if eng != "upstream":
                continue
            t = v[0].text
            n = min(len(ref), len(t))
            pre = _common_prefix(ref, t)
            agree[f"upstream {s.label}"] = {"same_text_on_common_length": pre >= n, "common_prefix_chars": pre,
                                            "ours_chars": len(ref), "upstream_chars": len(t)}
            if pre < n:
                notes.append(f"greedy text differs from mtpllama plain: upstream {s.label} after {pre} characters "
                             f"(ours {ref[pre:pre + 20]!r} vs upstream {t[pre:pre + 20]!r})")
    pt_ours = ours_plain[0].extra["prompt_tokens"] if ours_plain else None
    pt_up = {f"{s.label}": v[0].extra.get("prompt_tokens") for (e, s), v in by.items() if e == "upstream"}
    return {"model": name, "path": str(path), "n_params": info.n_params, "model_bytes": info.model_bytes,
            "ours_use_mmap": info.use_mmap,
            "prompt_tokens_ours": pt_ours, "prompt_tokens_upstream": pt_up, "rows": rows, "best_fixed": best,
            "greedy_agreement": agree, "notes": notes,
            "sample_text": (ours_plain[0].text[:80] if ours_plain else "")}


def paired_ratio(row: dict) -> float | None:
    """Median over rounds of ours / upstream (a row's tokens/s lists are in round order, and the
    two runs of a round are back to back).  The machine's speed drifts by up to 10% within a
    minute; a ratio of runs seconds apart cancels most of it, a ratio of whole-run medians not."""
    o, u = row["mtpllama"]["tps"], row["upstream"]["tps"]
    pairs = [a / b for a, b in zip(o, u) if b > 0]
    return statistics.median(pairs) if pairs and len(o) == len(u) else None


def _common_prefix(a: str, b: str) -> int:
    n = min(len(a), len(b))
    i = 0
    while i < n and a[i] == b[i]:
        i += 1
    return i


# --- reporting ----------------------------------------------------------------------------

def _f(x, fmt="{:.2f}", none="-"):
    return none if x is None else fmt.format(x)


def table(res: dict) -> list[list[str]]:
    head = ["setting", "ours t/s min / med", "ours acc/pos", "ours tok/step", "ours x plain",
            "upstream t/s min / med", "upstream acc/pos", "upstream tok/step", "upstream x plain", "ours / upstream",
            "paired"]
    out = [head]
    for r in res["rows"]:
        o, u = r.get("mtpllama"), r.get("upstream")
        cells = [r["setting"]]
        for g in (o, u):
            if g is None:
                cells += ["-"] * 4
                continue
            cells += [f"{g['min']:.1f} / {g['median']:.1f}",
                      " ".join(f"{x:.2f}" for x in g["acc_pos"]) or "-",
                      _f(g["tok_per_step"]), _f(g.get("x_plain"), "{:.2f}x")]
        cells.append(_f(r.get("x_upstream"), "{:.3f}x"))
        cells.append(_f(r.get("x_upstream_paired"), "{:.3f}x"))
        out.append(cells)
    return out


def overview(results: list[dict]) -> list[list[str]]:
    """One line per model: the numbers issue 7's acceptance criteria are about."""
    head = ["model", "plain: ours / upstream t/s", "plain ratio (paired)", "fixed k: ours / upstream (min .. max)",
            "plain, fresh process: ratio (paired)", "fixed k, paired: median (min .. max)", "best fixed, ours", "best fixed, upstream", "adaptive x plain",
            "adaptive x best fixed (ours)", "confirmation: adaptive x best fixed (paired)",
            "confirmation: adaptive x plain (paired)"]
    out = [head]
    for res in results:
        rows = {r["setting"]: r for r in res["rows"]}
        pl = rows.get("plain", {})
        fr = rows.get(Setting("fresh").label, {})
        o, u = pl.get("mtpllama"), pl.get("upstream")
        fx = [r["x_upstream"] for r in res["rows"] if r["mode"] == "fixed" and "x_upstream" in r]
        fxp = [r["x_upstream_paired"] for r in res["rows"] if r["mode"] == "fixed" and r.get("x_upstream_paired")]
        cf = res.get("confirm")
        bf = res["best_fixed"]
        ad = rows.get("adaptive", {}).get("mtpllama")

        def best(eng):
            b = bf.get(eng)
            return f"{b['setting']}: {_f(b['x_plain'], '{:.2f}x')}" if b else "-"
        out.append([res["model"], f"{_f(o and o['median'], '{:.1f}')} / {_f(u and u['median'], '{:.1f}')}",
                    f"{_f(pl.get('x_upstream'), '{:.3f}x')} ({_f(pl.get('x_upstream_paired'), '{:.3f}x')})",
                    f"{min(fx):.2f}x .. {max(fx):.2f}x" if fx else "-",
                    f"{_f(fr.get('x_upstream'), '{:.3f}x')} ({_f(fr.get('x_upstream_paired'), '{:.3f}x')})" if fr else "-",
                    f"{statistics.median(fxp):.2f}x ({min(fxp):.2f}x .. {max(fxp):.2f}x)" if fxp else "-",
                    best("mtpllama"), best("upstream"),
                    _f(ad and ad.get("x_plain"), "{:.2f}x"), _f(ad and ad.get("x_best_fixed_mtpllama"), "{:.2f}x"),
                    f"{cf['x_best']:.2f}x ({cf['x_best_paired']:.2f}x)" if cf else "-",
                    f"{cf['x_plain']:.2f}x ({cf['x_plain_paired']:.2f}x)" if cf and "x_plain" in cf else "-"])
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


def summary_lines(res: dict) -> list[str]:
    out = []
    bf = res["best_fixed"]
    for eng, b in bf.items():
        out.append(f"best fixed ({eng}): {b['setting']} at {b['median']:.1f} t/s = {_f(b['x_plain'], '{:.2f}x')} plain")
    ad = next((r for r in res["rows"] if r["mode"] == "adaptive"), None)
    if ad and "mtpllama" in ad:
        g = ad["mtpllama"]
        s = f"adaptive ({_spec_str(g.get('spec'))}): {g['median']:.1f} t/s = {_f(g.get('x_plain'), '{:.2f}x')} plain"
        for eng in bf:
            s += f", {_f(g.get(f'x_best_fixed_{eng}'), '{:.2f}x')} best fixed {eng}"
        if g.get("k_chosen_total"):
            s += f"; draft lengths chosen (k=0,1,..), all rounds: {g['k_chosen_total']}"
        out.append(s)
        last = (g.get("extra") or [{}])[-1]
        if last.get("est_verify"):
            ev = ", ".join(f"{n}: {1e3 * v:.1f}" for n, v in sorted(last["est_verify"].items(), key=lambda kv: int(kv[0])))
            out.append(f"controller's estimates after the last adaptive run: trunk pass ms by tokens {{{ev}}}, "
                       f"draft step {1e3 * last.get('est_draft', 0):.2f} ms, acceptance by position "
                       f"{' '.join(f'{x:.2f}' for x in last.get('est_accept', [])[:4])}"
                       + (f", drafts made by position {' '.join(f'{x:.2f}' for x in last['est_made'][:4])}"
                          if last.get("est_made") else "")
                       + (", step ms by k asked for {" + ", ".join(
                           f"{k}: {1e3 * v:.1f}" for k, v in sorted(last["est_step"].items(), key=lambda kv: int(kv[0])))
                          + "}" if last.get("est_step") else ""))
    cf = res.get("confirm")
    if cf:
        med = ", ".join(f"{k} {v:.1f}" for k, v in cf["median"].items())
        pr = ", ".join(f"{k} {v:.2f}x" for k, v in cf["paired"].items())
        pl = (f"; adaptive x plain: {cf['x_plain']:.2f}x, paired by round {cf['x_plain_paired']:.2f}x"
              if "x_plain" in cf else "")
        out.append(f"confirmation ({cf['rounds']} rounds of adaptive and the main rounds' best fixed settings"
                   f"{', and plain' if pl else ''}, back to back): medians t/s {med}; adaptive over each fixed setting, "
                   f"paired by round: {pr}; adaptive x best of them ({cf['best']}): {cf['x_best']:.2f}x{pl}")
    reuse = []
    for r in res["rows"]:
        g = (r.get("mtpllama") or {}).get("graphs")
        if g and (r["mode"] != "fixed" or r["p_min"] == 0.0):
            reuse.append(f"{r['setting']} {g[0]}/{g[1]}" + (f" + MTP {g[2]}/{g[3]}" if g[3] else ""))
    if reuse:
        out.append("compute graphs reused by mtpllama (trunk, MTP; reused/evaluations, all rounds): " + "; ".join(reuse))
    pu = res["prompt_tokens_upstream"]
    out.append(f"prompt tokens: ours {res['prompt_tokens_ours']}, upstream {sorted(set(pu.values()))}; "
               f"load average during the runs: median {_f(res['loadavg_median'])}, max {_f(res['loadavg_max'])}; "
               f"other processes' CPU during a run: max {_f(res['foreign_cpu_max'], '{:.0%}')} of the machine, "
               f"{res['contended_samples']}/{res['n_samples']} runs kept above the busy threshold "
               f"({res['retried_samples']} retried)")
    ag = res["greedy_agreement"]
    if ag:
        ok = [k for k, v in ag.items() if isinstance(v, dict) and v["same_text_on_common_length"]]
        bad = [k for k, v in ag.items() if isinstance(v, dict) and not v["same_text_on_common_length"]]
        out.append(f"greedy output: mtpllama settings all identical to plain: {ag.get('mtpllama_all_settings_same_tokens')}; "
                   f"upstream runs with the same text as mtpllama plain: {len(ok)}/{len(ok) + len(bad)}")
    out += res["notes"]
    return out


def model_line(res: dict) -> str:
    s = f"`{Path(res['path']).name}`: {res['n_params'] / 1e9:.2f}B parameters, {res['model_bytes'] / 2**30:.2f} GiB"
    pl = next((r for r in res["rows"] if r["mode"] == "plain"), {}).get("mtpllama")
    if pl:
        s += f"; plain decode step {1e3 / pl['median']:.1f} ms"
    try:
        sp = bench_models.spec_of(res["model"])
    except KeyError:
        return s + "."
    return (s + f". Synthetic: {sp.n_layer} trunk layers ({sp.n_dense_lead} dense, n_ff {sp.n_ff}), n_embd {sp.n_embd}, "
            f"MoE {sp.n_expert} experts / {sp.n_expert_used} active / {sp.n_expert_shared} shared (n_ff_exp "
            f"{sp.n_ff_exp}), {sp.dtype.upper()}, noise {sp.noise}.")


def _spec_str(spec: dict | None) -> str:
    if not spec:
        return "defaults"
    return ", ".join(f"{k}={spec[k]}" for k in ("draft_max", "draft_p_min", "adaptive") if k in spec)


def engine_info() -> dict:
    """The mtpllama build this process runs (taken at start: the others may rebuild it meanwhile)."""
    import hashlib

    from mtpllama import _lib

    path = _lib._find_library()
    info = {"library": str(path), "library_mtime": dt.datetime.fromtimestamp(path.stat().st_mtime).isoformat(timespec="seconds"),
            "library_sha256": hashlib.sha256(path.read_bytes()).hexdigest()[:12]}
    try:
        info["upstream_commit"] = _lib.ffi.string(_lib.lib.mtpl_upstream_commit()).decode()
        info["patches_hash"] = _lib.ffi.string(_lib.lib.mtpl_patches_hash()).decode()
    except AttributeError:
        pass
    return info


def machine() -> dict:
    def sh(cmd: str) -> str:
        try:
            return subprocess.run(cmd, shell=True, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
                                  timeout=10).stdout.strip()
        except Exception:
            return ""
    return {"nproc": sh("nproc"), "lscpu": sh("lscpu | head"), "mem": sh("free -g | head -2"),
            "platform": platform.platform(), "python": platform.python_version(),
            "git_commit": sh(f"git -C {shlex.quote(str(REPO))} rev-parse --short HEAD"),
            "git_dirty": bool(sh(f"git -C {shlex.quote(str(REPO))} status --porcelain -- csrc python CMakeLists.txt"))}


def write_md(path: Path, results: list[dict], a, cmdline: str, mach: dict, upstream: dict | None, started: str,
             json_path: Path | None = None) -> None:
    L = ["# Benchmark results", "",
         f"Latest run of `benchmarks/bench.py`, {started} (UTC), {sum(r['elapsed_s'] for r in results) / 60:.1f} min.", "",
         "```", cmdline, "```", "",
         f"(Raw data: `{json_path}` on the machine that ran it; `bench.py --render JSON` rewrites this file from it.)"
         if json_path else "", "",
         f"Settings: {a.tokens} tokens, {a.repeats} interleaved rounds, {a.threads} threads, context {a.ctx}, greedy, "
         f"prompt {a.prompt!r}; mtpllama runs each setting in its own session, kept across the rounds "
         f"(the adaptive controller learns from its own steps only). Weights: {LOAD_NOTES[getattr(a, 'load', 'default')]}", ""]
    L += ["Columns: tokens/s are decode speeds (prompt excluded), min / median over the rounds; "
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
          "is (run next to upstream's plain run; its ratio and paired ratio are against upstream plain).", ""]
    L += ["## Overview", "", "Medians. *plain ratio*, *fixed k*: mtpllama's speed over upstream's at the same setting (in brackets: "
          "paired by round; for fixed k, the lowest and highest over the 8 settings); *fixed k, paired*: the median, min and max over the fixed settings of their paired ratios; "
          "*best fixed*: the fastest fixed setting of each engine, against that engine's plain decoding; *adaptive*: "
          "`SpecConfig()` defaults; *confirmation*: after the rounds, adaptive and the two fastest fixed settings of "
          "the rounds (the fastest, and the fastest at another k) run back to back for --confirm more rounds: "
          "adaptive's median over the faster one's, and (in brackets) the lower of its paired medians against the two; "
          "plain decoding runs in those rounds too, and *confirmation: adaptive x plain* is adaptive's median over "
          "plain's there (in brackets: paired by round). "
          "A maximum over ~16 noisy medians is biased upwards; fresh runs side by side are not.", "",
          render_md(overview(results)), ""]
    for res in results:
        L += [f"## {res['model']}", "", model_line(res), "",
              render_md(table(res)), ""]
        L += [f"- {x}" for x in summary_lines(res)]
        L.append("")
    eng = mach.get("engine", {})
    L += ["## Machine", "", f"nproc: {mach['nproc']}; {mach['platform']}; Python {mach['python']}; "
          f"mtpllama commit {mach['git_commit']}{' (engine sources modified)' if mach['git_dirty'] else ''} at the start "
          f"of the run" + (f"; engine `{eng['library']}` built {eng['library_mtime']} (sha256 {eng['library_sha256']}, "
                           f"llama.cpp patch set {eng.get('patches_hash', '?')})" if eng else "") + ".", ""]
    if mach.get("warning"):
        L += [f"**Warning**: {mach['warning']}.", ""]
    L += ["```", "\n".join(mach["lscpu"].splitlines()[:10]), "```", ""]
    if upstream:
        L += [f"Upstream: llama.cpp {upstream.get('UPSTREAM_COMMIT', '?')[:12]} (patch set {upstream.get('PATCHES_HASH', '?')}) "
              f"built by `benchmarks/build_upstream.py` (Release, GGML_NATIVE=ON, static, OpenMP).", "",
              "```", *[f"{shlex.join(c)}" for c in upstream.get("commands", [])], "```", ""]
    L += ["The machine is shared: other processes may run during a benchmark and timings are noisy. The harness "
          "measures the CPU time other processes used during each run (/proc/stat minus its own and its children's "
          "CPU time), waits for a quiet machine before each run (--wait-idle) and reruns a run during which others "
          f"used more than {a.busy_threshold:.0%} of the machine (--retries); the counts are given per model above. "
          "With as many threads as cores, any other busy process slows every run that waits on a thread barrier "
          "(OpenMP spin-waits): a single busy core can make a 2-thread decode step 10-50x slower.", ""]
    path.write_text("\n".join(L))


def print_tables(results: list[dict], a) -> None:
    for res in results:
        print(f"\n{res['model']}  ({res['n_params'] / 1e9:.2f}B params, {a.tokens} tokens, {a.threads} threads, "
              f"{a.repeats} rounds)")
        print(render_text(table(res)))
        for line in summary_lines(res):
            print("  " + line)
    if len(results) > 1:
        print("\nOverview (medians)")
        print(render_text(overview(results)))


def render_only(path: Path, results_md: str) -> int:
    doc = json.loads(path.read_text())
    a = argparse.Namespace(**doc["args"])
    for res in doc["results"]:  # runs from before the paired column
        for row in res["rows"]:
            if "x_upstream" in row and "x_upstream_paired" not in row:
                row["x_upstream_paired"] = paired_ratio(row)
    print_tables(doc["results"], a)
    if results_md:
        write_md(Path(results_md), doc["results"], a, doc["command"], doc["machine"], doc["upstream"],
                 doc["started_utc"], json_path=path)
        print(f"[bench] wrote {results_md}", file=sys.stderr)
    return 0


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    ap.add_argument("--models", nargs="+", default=bench_models.default_names(),
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
    ap.add_argument("--prompt", default=DEFAULT_PROMPT)
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
    a = ap.parse_args(argv)
    if a.render:
        return render_only(a.render, a.results_md)
    now = dt.datetime.now(dt.timezone.utc)
    started = now.strftime("%Y-%m-%d %H:%M")
    if a.json is None:
        a.json = bench_models.cache_dir().parent / "bench-results" / f"results-{now.strftime('%Y%m%d-%H%M')}.json"
    a.json.parent.mkdir(parents=True, exist_ok=True)
    cmdline = "python3 benchmarks/bench.py " + shlex.join(sys.argv[1:] if argv is None else argv)

    mach = machine()          # the commit and engine build at the start of the run
    mach["engine"] = engine_info()
    bins = None
    upstream = None
    if not a.no_upstream:
        upstream = build_upstream.build()
        bins = {k: upstream[k] for k in ("SPECULATIVE", "COMPLETION")}
        print(f"[bench] upstream tools: {bins['COMPLETION']}, {bins['SPECULATIVE']} "
              f"(build step {upstream['BUILD_SECONDS']} s)", file=sys.stderr)
        eng = mach["engine"]
        if eng.get("patches_hash") and eng["patches_hash"] != upstream.get("PATCHES_HASH"):
            msg = (f"the engine ({eng['library']}) was built with patch set {eng['patches_hash']}, the upstream tools "
                   f"with {upstream.get('PATCHES_HASH')}: rebuild the engine so that both run the same llama.cpp")
            print(f"[bench] WARNING: {msg}", file=sys.stderr)
            mach["warning"] = msg
    if a.adaptive and not has_adaptive():
        print("[bench] note: SpecConfig has no 'adaptive' field yet: the adaptive rows are skipped", file=sys.stderr)

    results = []
    for name in a.models:
        mname, path = resolve_model(name)
        res = bench_model(mname, path, a, bins)
        results.append(res)
        print_tables([res], a)
        sys.stdout.flush()
    if len(results) > 1:
        print("\nOverview (medians)")
        print(render_text(overview(results)))
    if upstream is not None:
        ex = Upstream(bins, Path("MODEL.gguf"), a.threads, a.ctx, a.timeout, a.load)
        upstream["commands"] = [ex.command(Setting("plain"), "PROMPT", a.tokens),
                                ex.command(Setting("fixed", 3, 0.85), "PROMPT", a.tokens)]
    doc = {"started_utc": started, "command": cmdline, "args": {k: (str(v) if isinstance(v, Path) else v)
                                                               for k, v in vars(a).items()},
           "machine": mach, "upstream": upstream, "results": results}
    a.json.write_text(json.dumps(doc, indent=1, default=str))
    print(f"\n[bench] wrote {a.json}", file=sys.stderr)
    if a.results_md:
        write_md(Path(a.results_md), results, a, cmdline, mach, upstream, started, json_path=a.json)
        print(f"[bench] wrote {a.results_md}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
