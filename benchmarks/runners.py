"""The engines as the benchmarks run them (mtpllama in this process or in a new one, upstream
llama.cpp's tools in a new process per run), the meter of what other processes do meanwhile, and
a description of the machine and the builds."""
from __future__ import annotations

import datetime as dt
import hashlib
import json
import os
import platform
import re
import resource
import shlex
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import build_upstream
import mtpllama
from analysis import EngineBuild, Machine, Sample, UpstreamTools, from_json
from fixtures import FRESH, PLAIN, Setting, fixed_spec
from mtpllama import GenerationStats, _lib

REPO = Path(__file__).resolve().parent.parent
# where this process's mtpllama comes from: a new process imports the same one
PACKAGE_ROOT = str(Path(mtpllama.__file__).resolve().parent.parent)


@dataclass
class Load:
    """How the engines hold a file's weights (--load)."""

    use_mmap: bool | None      # mtpllama's ModelConfig.use_mmap
    upstream_args: list[str] = field(default_factory=list)
    upstream_env: dict[str, str] = field(default_factory=dict)


# "default" is each engine's own: mtpllama reads a file that fits into memory (use_mmap=None) on
# huge pages (patches/0007, 0010), upstream maps it.  "memory" gives upstream huge pages too: glibc
# then advises its large blocks as mtpllama advises its buffers.
LOADS = {"default": Load(None), "mmap": Load(True, ["-lm", "mmap"]),
         "memory": Load(False, ["-lm", "none"], {"GLIBC_TUNABLES": "glibc.malloc.hugetlb=1"})}


def _sample(setting: Setting, st: GenerationStats, token_ids: list[int], text: str) -> Sample:
    steps = max(1, st.steps - 1)  # decode steps: the prompt pass emitted the first token
    return Sample("mtpllama", setting, st.decode_tokens_per_second, st.generated_tokens, st.steps,
                  [a / steps for a in st.accepted], (st.generated_tokens - 1) / steps, st.prompt_tokens, text,
                  token_ids, st)


# --- mtpllama ---------------------------------------------------------------------------

# One plain generation in a new interpreter; prints its stats, token ids and text.  Written out
# rather than imported: the point is a cold process (importing numpy and the model generator
# before the run was itself measured to slow plain decoding a little).
FRESH_PLAIN = """
import dataclasses, json, sys
sys.path.insert(0, {package_root!r})
import mtpllama
cfg = mtpllama.SessionConfig(n_threads={threads}, n_ctx={ctx})
with mtpllama.Model({path!r}, mtp=False, use_mmap={use_mmap!r}, session_defaults=cfg) as m:
    r = m.generate({prompt!r}, {tokens})
print(json.dumps([dataclasses.asdict(r.stats), list(r.tokens), r.text]))
"""


def fresh_plain(path: Path, threads: int, ctx: int, prompt: str, tokens: int, load: str = "default") -> Sample:
    """mtpllama plain decoding in a new Python process, as every upstream run is."""
    code = FRESH_PLAIN.format(package_root=PACKAGE_ROOT, threads=threads, ctx=ctx, path=str(path), prompt=prompt,
                              tokens=tokens, use_mmap=LOADS[load].use_mmap)
    p = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=600)
    if p.returncode != 0:
        raise RuntimeError(f"mtpllama run in a new process failed:\n{p.stderr[-2000:]}")
    stats, ids, text = json.loads(p.stdout.strip().splitlines()[-1])
    return _sample(FRESH, from_json(GenerationStats, stats), ids, text)


class InProcess:
    """mtpllama in this long-lived process, one session per setting kept across the rounds, as a
    user running that setting has: what the adaptive controller learns in its session is not
    mixed with other settings' steps.  The "fresh" setting runs in a new process."""

    def __init__(self, path: Path, threads: int, n_ctx: int, load: str = "default") -> None:
        self.path, self.threads, self.n_ctx, self.load = path, threads, n_ctx, load
        self.model = mtpllama.Model(str(path), use_mmap=LOADS[load].use_mmap,
                                    session_defaults=mtpllama.SessionConfig(n_threads=threads, n_ctx=n_ctx))
        self.sessions: dict[Setting, mtpllama.Session] = {}

    def close(self) -> None:
        for sess in self.sessions.values():
            sess.close()
        self.model.close()

    def warmup(self, prompt: str) -> None:
        self.model.generate(prompt, 8, mtp=False)
        self.model.generate(prompt, 8, spec=fixed_spec(2, 0.0))
        self.model.generate(prompt, 8)

    def run(self, s: Setting, prompt: str, n: int) -> Sample:
        if s == FRESH:
            return fresh_plain(self.path, self.threads, self.n_ctx, prompt, n, self.load)
        if s not in self.sessions:
            self.sessions[s] = self.model.session(mtp=s != PLAIN)
        sess = self.sessions[s]
        sess.reset()
        r = sess.generate(prompt, n, spec=s.spec())
        return _sample(s, r.stats, list(r.tokens), r.text)


# --- upstream ---------------------------------------------------------------------------

def build_upstream_tools() -> UpstreamTools:
    kv = build_upstream.build()
    return UpstreamTools(kv["COMPLETION"], kv["SPECULATIVE"], kv["UPSTREAM_COMMIT"], kv["PATCHES_HASH"],
                         float(kv["BUILD_SECONDS"]))


_RE_EVAL = re.compile(r"common_perf_print:\s+eval time =\s*([\d.]+) ms /\s*(\d+) runs")
_RE_PEVAL = re.compile(r"common_perf_print: prompt eval time =\s*([\d.]+) ms /\s*(\d+) tokens")
_RE_DECODED = re.compile(r"decoded\s+(\d+) tokens in\s+([\d.]+) seconds, speed:\s*([\d.]+) t/s")
_RE_ENCODED = re.compile(r"encoded\s+(\d+) tokens in\s+([\d.]+) seconds")
_RE_NACCEPT = re.compile(r"n_accept\s*=\s*(\d+)")
_RE_STATS = re.compile(r"#calls\(b,g,a\) =\s*(\d+)\s+(\d+)\s+(\d+)"
                       r".*?#mean acc len = ([\d.]+), #acc rate/pos = \(([^)]*)\)")
_RE_CALLS = re.compile(r"#calls\(b,g,a\) =\s*(\d+)\s+(\d+)\s+(\d+)")


class Upstream:
    """llama.cpp's tools, a new process per run: ``llama-completion`` for plain decoding (its
    ``eval time``: single-token decodes), ``llama-speculative-simple --spec-type draft-mtp`` for
    fixed k (its ``decoded N tokens in S seconds``: the loop after the prompt)."""

    def __init__(self, tools: UpstreamTools, path: Path, threads: int, n_ctx: int, timeout: float,
                 load: str = "default") -> None:
        self.tools, self.path, self.threads, self.n_ctx, self.timeout = tools, path, threads, n_ctx, timeout
        self.load = LOADS[load]

    def command(self, s: Setting, prompt: str, n: int) -> list[str]:
        t = str(self.threads)
        common = ["-m", str(self.path), "-p", prompt, "-n", str(n), "-t", t, "-tb", t, "-c", str(self.n_ctx),
                  "--temp", "0", "-s", "0", *self.load.upstream_args]
        if s == PLAIN:
            return [self.tools.completion, *common, "-no-cnv"]
        if s.mode == "fixed":
            return [self.tools.speculative, *common, "--spec-type", "draft-mtp", "--spec-draft-n-max", str(s.k),
                    "--spec-draft-p-min", str(s.p), "-lv", "4"]
        raise ValueError(s)

    def run(self, s: Setting, prompt: str, n: int) -> Sample:
        cmd = self.command(s, prompt, n)
        for attempt in range(3):
            p = subprocess.run(cmd, stdin=subprocess.DEVNULL, capture_output=True,
                               env={**os.environ, **self.load.upstream_env}, timeout=self.timeout)
            out = p.stdout.decode("utf-8", errors="replace")
            err = p.stderr.decode("utf-8", errors="replace")
            if p.returncode != 0:
                raise RuntimeError(f"{shlex.join(cmd[:1])} exited {p.returncode}:\n{err[-3000:]}")
            text = _generated_text(out, prompt)
            try:
                return _plain_sample(s, err, text) if s == PLAIN else _spec_sample(s, err, text)
            except _NoReport:
                # the tools log through an asynchronous queue that can lose its tail at exit: run again
                if attempt == 2:
                    raise
        raise AssertionError("unreachable")


class _NoReport(RuntimeError):
    """A tool's output lacks its timing report."""


def _plain_sample(s: Setting, err: str, text: str) -> Sample:
    m = _RE_EVAL.search(err)
    if not m:
        raise _NoReport(f"no 'eval time' in llama-completion's output:\n{err[-2000:]}")
    ms, runs = float(m.group(1)), int(m.group(2))
    mp = _RE_PEVAL.search(err)
    return Sample("upstream", s, runs / (ms / 1e3), runs + 1, runs + 1, [], 1.0, int(mp.group(2)) if mp else None,
                  text)


def _spec_sample(s: Setting, err: str, text: str) -> Sample:
    m = _RE_DECODED.search(err)
    if not m:
        raise _NoReport(f"no 'decoded N tokens' in llama-speculative-simple's output:\n{err[-2000:]}")
    n_dec, secs = int(m.group(1)), float(m.group(2))
    me = _RE_ENCODED.search(err)
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
        na = _RE_NACCEPT.search(err)
        if mc:
            steps = int(mc.group(3))
        if steps and na:
            tok_per_step = 1 + int(na.group(1)) / steps
    return Sample("upstream", s, n_dec / secs if secs > 0 else 0.0, n_dec, steps, acc_pos, tok_per_step,
                  int(me.group(1)) if me else None, text)


def _generated_text(stdout: str, prompt: str) -> str:
    """The generated text in a tool's stdout: what follows the echoed prompt."""
    i = stdout.find(prompt)
    rest = stdout[i + len(prompt):] if i >= 0 else stdout
    return rest.rstrip("\n").replace(" [end of text]", "")


# --- other processes --------------------------------------------------------------------

_HZ = os.sysconf("SC_CLK_TCK")
_NCPU = os.cpu_count() or 1


def _snap() -> tuple[float, float, float]:
    """(monotonic seconds, the machine's busy CPU seconds, this process's and its children's)."""
    try:
        with open("/proc/stat") as f:
            v = [int(x) for x in f.readline().split()[1:9]]
        busy = (sum(v) - v[3] - v[4]) / _HZ  # all but idle and iowait
    except (OSError, ValueError):
        busy = float("nan")
    own = 0.0
    for who in (resource.RUSAGE_SELF, resource.RUSAGE_CHILDREN):
        ru = resource.getrusage(who)
        own += ru.ru_utime + ru.ru_stime
    return time.monotonic(), busy, own


def _foreign(a: tuple[float, float, float], b: tuple[float, float, float]) -> float:
    """The share of all cores that other processes used between two snaps."""
    wall = b[0] - a[0]
    if wall <= 0:
        return 0.0
    return max(0.0, ((b[1] - a[1]) - (b[2] - a[2])) / (wall * _NCPU))


def _loadavg() -> float:
    try:
        return os.getloadavg()[0]
    except OSError:
        return float("nan")


class NoiseMeter:
    """Runs on a quiet machine if it gets quiet: waits (up to wait_idle seconds) for other
    processes to go below busy_threshold of the machine, measures what they used during the run
    and reruns it (up to retries times) when that was above the threshold."""

    def __init__(self, busy_threshold: float, retries: int, wait_idle: float) -> None:
        self.busy_threshold, self.retries, self.wait_idle = busy_threshold, retries, wait_idle
        self.loadavg: list[float] = []

    def _wait_idle(self) -> None:
        t_end = time.monotonic() + self.wait_idle
        while True:
            a = _snap()
            time.sleep(0.5)
            if _foreign(a, _snap()) < self.busy_threshold or time.monotonic() >= t_end:
                return
            time.sleep(2.0)

    def measure(self, run: Callable[[], Sample], tag: str) -> Sample:
        for attempt in range(self.retries + 1):
            if self.wait_idle > 0:
                self._wait_idle()
            self.loadavg.append(_loadavg())
            c0 = _snap()
            smp = run()
            smp.foreign_cpu = _foreign(c0, _snap())
            smp.attempt = attempt
            busy = smp.foreign_cpu >= self.busy_threshold
            print(f"  {tag} {smp.engine:8s} {smp.setting.label:12s} {smp.tps:8.2f} t/s  "
                  f"{smp.tok_per_step:5.2f} tok/step  acc {' '.join(f'{x:.2f}' for x in smp.acc_pos):24s} other processes {smp.foreign_cpu:.0%}"
                  f"{'  (busy machine: retrying)' if busy and attempt < self.retries else ''}",
                  file=sys.stderr, flush=True)
            if not busy:
                break
        return smp


# --- the machine and the builds ---------------------------------------------------------

def _sh(cmd: str) -> str:
    try:
        return subprocess.run(cmd, shell=True, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
                              timeout=10).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return ""


def engine_build() -> EngineBuild:
    """The mtpllama build this process runs (taken at the start: it may be rebuilt meanwhile)."""
    path = _lib._find_library()
    return EngineBuild(str(path), dt.datetime.fromtimestamp(path.stat().st_mtime).isoformat(timespec="seconds"),
                       hashlib.sha256(path.read_bytes()).hexdigest()[:12],
                       _lib.ffi.string(_lib.lib.mtpl_upstream_commit()).decode(),
                       _lib.ffi.string(_lib.lib.mtpl_patches_hash()).decode())


def describe_machine() -> Machine:
    """The machine, and the commit and engine build at the start of the run."""
    git = f"git -C {shlex.quote(str(REPO))}"
    return Machine(_sh("nproc"), _sh("lscpu | head"), _sh("free -g | head -2"), platform.platform(),
                   platform.python_version(), _sh(f"{git} rev-parse --short HEAD"),
                   bool(_sh(f"{git} status --porcelain -- csrc python CMakeLists.txt")), engine_build())
