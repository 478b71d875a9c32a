"""The benchmark's records (what --json keeps) and their statistics: per-setting summaries, paired
ratios, the best fixed settings, adaptive against them, and the confirmation rounds."""
from __future__ import annotations

import dataclasses
import json
import statistics
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path

from fixtures import ADAPTIVE, FRESH, PLAIN, Setting
from mtpllama import GenerationStats, SpecConfig

# --- records ----------------------------------------------------------------------------


@dataclass
class Sample:
    """One run of one engine at one setting."""

    engine: str                # "mtpllama" or "upstream"
    setting: Setting
    tps: float                 # decode tokens/s, the prompt pass excluded
    tokens: int                # tokens generated
    steps: int                 # trunk passes that emitted tokens, the prompt pass included
    acc_pos: list[float]       # per draft position: the fraction of decode steps that kept its draft
    tok_per_step: float        # tokens per decode step
    prompt_tokens: int | None
    text: str = ""
    token_ids: list[int] = field(default_factory=list)  # mtpllama's
    stats: GenerationStats | None = None                 # mtpllama's
    foreign_cpu: float = 0.0   # the share of the machine other processes used during the run
    attempt: int = 0           # reruns before this one, on a busy machine


@dataclass
class ModelRun:
    """Everything one model's benchmark measured."""

    model: str
    path: str
    n_params: int
    model_bytes: int
    use_mmap: bool             # how mtpllama held the weights
    settings: list[Setting]
    samples: list[Sample]      # the interleaved rounds, in the order they ran
    confirm: list[Sample]      # the confirmation rounds, round by round
    adaptive_spec: SpecConfig | None
    elapsed_s: float
    loadavg: list[float]       # the 1-minute load average before each run


@dataclass
class Conditions:
    """What every run of a benchmark shares."""

    tokens: int
    repeats: int
    threads: int
    ctx: int
    prompt: str
    load: str
    busy_threshold: float


@dataclass
class EngineBuild:
    library: str
    library_mtime: str
    library_sha256: str
    upstream_commit: str
    patches_hash: str


@dataclass
class Machine:
    nproc: str
    lscpu: str
    mem: str
    platform: str
    python: str
    git_commit: str
    git_dirty: bool            # engine sources modified
    engine: EngineBuild
    warning: str = ""


@dataclass
class UpstreamTools:
    """llama.cpp's own tools, as build_upstream.py built them."""

    completion: str
    speculative: str
    commit: str
    patches_hash: str
    build_seconds: float
    commands: list[list[str]] = field(default_factory=list)  # as run, with placeholders for the file and prompt


@dataclass
class BenchRun:
    """A whole benchmark run: what --json writes and --render reads."""

    started_utc: str
    command: str
    conditions: Conditions
    machine: Machine
    upstream: UpstreamTools | None
    models: list[ModelRun]


def save(run: BenchRun, path: Path) -> None:
    path.write_text(json.dumps(dataclasses.asdict(run), indent=1))


def load(path: Path) -> BenchRun:
    return from_json(BenchRun, json.loads(path.read_text()))


def from_json(tp, data):
    """data, parsed JSON, as tp: a dataclass, list, dict (JSON's keys are strings), optional or plain value."""
    if data is None:
        return None
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if origin in (typing.Union, types.UnionType):
        return from_json(next(a for a in args if a is not type(None)), data)
    if origin is list:
        return [from_json(args[0], x) for x in data]
    if origin is dict:
        return {args[0](k): from_json(args[1], v) for k, v in data.items()}
    if dataclasses.is_dataclass(tp):
        hints = typing.get_type_hints(tp)
        return tp(**{f.name: from_json(hints[f.name], data[f.name]) for f in dataclasses.fields(tp) if f.name in data})
    return data


# --- statistics -------------------------------------------------------------------------


def paired(a: list[float], b: list[float]) -> float | None:
    """Median over rounds of a / b, the two lists in round order and each round's two runs back to
    back.  The machine's speed drifts by up to 10% within a minute; a ratio of runs seconds apart
    cancels most of it, a ratio of whole-run medians not."""
    pairs = [x / y for x, y in zip(a, b) if y > 0]
    return statistics.median(pairs) if pairs and len(a) == len(b) else None


@dataclass
class EngineSummary:
    """One engine at one setting over the rounds."""

    tps: list[float]
    acc_pos: list[float]
    tok_per_step: float
    x_plain: float | None      # median over the same engine's plain decoding's
    graphs: list[int] | None   # mtpllama: trunk graphs reused, trunk evaluations, MTP reused, MTP evaluations

    @property
    def min(self) -> float:
        return min(self.tps)

    @property
    def median(self) -> float:
        return statistics.median(self.tps)


def _graphs(stats: list[GenerationStats]) -> list[int] | None:
    if not stats:
        return None
    return [sum(st.trunk_graphs_reused for st in stats), sum(st.trunk_calls for st in stats),
            sum(st.mtp_graphs_reused for st in stats), sum(st.mtp_calls for st in stats)]


def summarise(setting: Setting, samples: list[Sample], plain: list[Sample] | None) -> EngineSummary:
    n_pos = max(len(s.acc_pos) for s in samples)
    acc = [statistics.mean(s.acc_pos[i] if i < len(s.acc_pos) else 0.0 for s in samples) for i in range(n_pos)]
    if setting.mode == "fixed":  # positions nobody accepted are missing from upstream's list
        acc = (acc + [0.0] * setting.k)[:setting.k]
    tps = [s.tps for s in samples]
    x_plain = statistics.median(tps) / statistics.median(s.tps for s in plain) if plain else None
    return EngineSummary(tps, acc, statistics.mean(s.tok_per_step for s in samples), x_plain,
                         _graphs([s.stats for s in samples if s.stats]))


@dataclass
class Row:
    """One setting, both engines."""

    setting: Setting
    ours: EngineSummary | None
    upstream: EngineSummary | None
    x_upstream: float | None = None         # ours' median over upstream's (fresh: over upstream plain's)
    x_upstream_paired: float | None = None  # the same, paired by round


@dataclass
class BestFixed:
    setting: Setting
    median: float
    x_plain: float | None


@dataclass
class Adaptive:
    spec: SpecConfig
    summary: EngineSummary
    x_best_ours: float | None
    x_best_upstream: float | None
    drafts_per_step: list[int]  # steps that verified k = 0, 1, .. drafts, over all rounds
    last: GenerationStats      # the last run's, with the controller's estimates


@dataclass
class Confirmation:
    """Adaptive against the main rounds' best fixed settings, run back to back (see confirm_candidates)."""

    rounds: int
    medians: list[tuple[Setting, float]]  # adaptive, the candidates, plain
    paired: list[tuple[Setting, float]]   # adaptive over each candidate, by round
    best: Setting                         # the faster candidate
    x_best: float
    x_best_paired: float                  # the lower of the paired ratios
    x_plain: float
    x_plain_paired: float


@dataclass
class TextMatch:
    """An upstream setting's greedy text against mtpllama plain decoding's."""

    setting: Setting
    common_prefix: int
    ours: str
    upstream: str

    @property
    def same(self) -> bool:
        return self.common_prefix >= min(len(self.ours), len(self.upstream))


@dataclass
class Noise:
    loadavg_median: float | None
    loadavg_max: float | None
    foreign_max: float | None
    contended: int             # runs kept although other processes used more than the busy threshold
    retried: int
    n: int


@dataclass
class ModelResult:
    run: ModelRun
    rows: list[Row]
    best_ours: BestFixed | None
    best_upstream: BestFixed | None
    adaptive: Adaptive | None
    confirmation: Confirmation | None
    lossless: bool             # every mtpllama run's tokens equal plain decoding's
    texts: list[TextMatch]
    noise: Noise
    prompt_tokens_ours: int | None
    prompt_tokens_upstream: list[int]

    def row(self, setting: Setting) -> Row | None:
        return next((r for r in self.rows if r.setting == setting), None)


def _by(samples: list[Sample], engine: str) -> dict[Setting, list[Sample]]:
    out: dict[Setting, list[Sample]] = {}
    for s in samples:
        if s.engine == engine:
            out.setdefault(s.setting, []).append(s)
    return out


def _rows(run: ModelRun, ours: dict[Setting, list[Sample]], up: dict[Setting, list[Sample]]) -> list[Row]:
    rows = []
    for s in run.settings:
        o = summarise(s, ours[s], ours.get(PLAIN)) if s in ours else None
        u = summarise(s, up[s], up.get(PLAIN)) if s in up else None
        row = Row(s, o, u)
        # the fresh-process row is compared with upstream plain, which runs next to it (in a new process too)
        ref = up.get(PLAIN if s == FRESH else s)
        if o and ref:
            ref_tps = [x.tps for x in ref]
            row.x_upstream = o.median / statistics.median(ref_tps)
            row.x_upstream_paired = paired(o.tps, ref_tps)
        rows.append(row)
    return rows


def _best(rows: list[Row], engine: str) -> BestFixed | None:
    cand = [(r.setting, getattr(r, engine)) for r in rows if r.setting.mode == "fixed" and getattr(r, engine)]
    if not cand:
        return None
    s, g = max(cand, key=lambda c: c[1].median)
    return BestFixed(s, g.median, g.x_plain)


def _adaptive(run: ModelRun, row: Row | None, samples: list[Sample], best_ours: BestFixed | None,
              best_up: BestFixed | None) -> Adaptive | None:
    if not row or not row.ours:
        return None
    per_step = [sum(x) for x in zip(*(s.stats.drafts_per_step for s in samples))]
    while per_step and per_step[-1] == 0:
        per_step.pop()
    med = row.ours.median
    return Adaptive(run.adaptive_spec, row.ours, med / best_ours.median if best_ours else None,
                    med / best_up.median if best_up else None, per_step, samples[-1].stats)


def confirm_candidates(samples: list[Sample]) -> list[Setting]:
    """The fixed settings the confirmation rounds run adaptive against: the main rounds' fastest
    (by median), and the fastest at another draft length."""
    fixed = {s: [x.tps for x in v] for s, v in _by(samples, "mtpllama").items() if s.mode == "fixed"}
    ranked = sorted(fixed, key=lambda s: statistics.median(fixed[s]), reverse=True)
    return ranked[:1] + [s for s in ranked if s.k != ranked[0].k][:1]


def confirm_group(candidates: list[Setting]) -> list[Setting]:
    """What a confirmation round runs.  Plain decoding too: at low acceptance plain is the one to
    beat, and the main rounds run ~20 configurations between adaptive and plain, so drift moves
    them apart."""
    return [ADAPTIVE, *candidates, PLAIN]


def _confirmation(run: ModelRun) -> Confirmation | None:
    if not run.confirm:
        return None
    group = confirm_group(confirm_candidates(run.samples))
    tps = {s: [x.tps for x in run.confirm if x.setting == s] for s in group}
    ad = tps[ADAPTIVE]
    cands = group[1:-1]
    pr = [(s, paired(ad, tps[s])) for s in cands]
    best = max(cands, key=lambda s: statistics.median(tps[s]))
    return Confirmation(len(ad), [(s, statistics.median(v)) for s, v in tps.items()], pr, best,
                        statistics.median(ad) / statistics.median(tps[best]), min(p for _, p in pr),
                        statistics.median(ad) / statistics.median(tps[PLAIN]), paired(ad, tps[PLAIN]))


def _common_prefix(a: str, b: str) -> int:
    n = min(len(a), len(b))
    i = 0
    while i < n and a[i] == b[i]:
        i += 1
    return i


def _noise(run: ModelRun, busy_threshold: float) -> Noise:
    every = run.samples + run.confirm
    fc = [x.foreign_cpu for x in every]
    la = run.loadavg
    return Noise(statistics.median(la) if la else None, max(la) if la else None, max(fc) if fc else None,
                 sum(f >= busy_threshold for f in fc), sum(x.attempt > 0 for x in every), len(every))


def analyse(run: ModelRun, busy_threshold: float) -> ModelResult:
    ours, up = _by(run.samples, "mtpllama"), _by(run.samples, "upstream")
    rows = _rows(run, ours, up)
    best_ours, best_up = _best(rows, "ours"), _best(rows, "upstream")
    adaptive = _adaptive(run, next((r for r in rows if r.setting == ADAPTIVE), None), ours.get(ADAPTIVE, []),
                         best_ours, best_up)
    ref = ours[PLAIN][0]
    lossless = all(x.token_ids == ref.token_ids for v in ours.values() for x in v)
    texts = [TextMatch(s, _common_prefix(ref.text, v[0].text), ref.text, v[0].text) for s, v in up.items()]
    pt_up = sorted({x.prompt_tokens for v in up.values() for x in v if x.prompt_tokens is not None})
    return ModelResult(run, rows, best_ours, best_up, adaptive, _confirmation(run), lossless, texts,
                       _noise(run, busy_threshold), ref.prompt_tokens, pt_up)
