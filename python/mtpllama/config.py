"""Small frozen configuration records for models, sessions and speculative decoding."""
from __future__ import annotations

import os
from dataclasses import dataclass

from ._lib import MAX_DRAFT, VERIFY_MODES

READ_INTO_MEMORY_FRACTION = 0.75
"""use_mmap=None reads a file into memory when it is at most this fraction of the available memory."""


def _check_int(name: str, value: object, lo: int, hi: int | None = None) -> None:
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{name} must be an int, got {type(value).__name__}")
    if value < lo or (hi is not None and value > hi):
        rng = f">= {lo}" if hi is None else f"in [{lo}, {hi}]"
        raise ValueError(f"{name} must be {rng}, got {value}")


@dataclass(frozen=True)
class ModelConfig:
    """How to load a GGUF file."""

    path: str
    """Path of the GGUF file (an architecture mtpllama supports: see mtpllama.inspect)."""
    mtp: bool = True
    """Load the NextN (MTP) block.  False skips its tensors entirely: plain decoding only."""
    n_gpu_layers: int = 0
    """Layers to offload to the GPU (-1: all).  Ignored by a CPU-only build."""
    tensor_overrides: tuple[str, ...] = ()
    """llama.cpp ``-ot`` rules, "REGEX=DEVICE", e.g. ``"exps=CPU"`` to keep the routed experts in RAM."""
    use_mmap: bool | None = None
    """True: memory-map the file (llama.cpp's default).  False: read it into memory.  None (default):
    read it when it takes at most 3/4 of the memory available now (Linux's MemAvailable), map it
    otherwise, or where that cannot be read.  A decode step streams every weight once, which runs
    faster from memory read in (on huge pages, see set_huge_pages) than from a mapped file; a
    mapping loads at once and lets the kernel page a file out under pressure.
    Model.info.use_mmap says which was used."""
    mtp_path: str | None = None
    """An MTP-only GGUF holding the NextN block, when `path` is trunk-only (or to use another
    head with a full file): same architecture, hyperparameters and vocabulary, its NextN block
    right after the trunk's layers, else MtpMismatchError.  ``mtpllama extract-mtp`` writes one
    from a full file."""
    mtp_device: str | None = None
    """Where the NextN block runs: "CPU", "CUDA0", "RPC0", or an RPC worker's "HOST:PORT" (a device
    of this build; unknown names raise InvalidArgumentError listing them).  Its KV cache and compute go there; on a GPU its weights too,
    ahead of tensor_overrides, so the GLM recipe ``n_gpu_layers=-1, tensor_overrides=("exps=CPU",),
    mtp_device="CUDA0"`` keeps the trunk's routed experts in RAM and the whole head on the GPU.  On
    the CPU its weights keep the CPU's own (repacked) buffer types unless an override moves them.
    None: the block is placed by n_gpu_layers, as the layer after the last trunk layer; with
    rpc_servers, on this machine (its first GPU, else the CPU), where a drafted token costs no round
    trip."""
    rpc_servers: tuple[str, ...] = ()
    """"HOST:PORT" of ``mtpllama-rpc-server`` workers (docs/rpc.md).  Their devices (RPC0, RPC1, ...
    in this order) take layers before this machine's GPUs, split by their free memory as llama.cpp
    splits layers (n_gpu_layers counts them; tensor_overrides and mtp_device take their names).  A
    worker that cannot be reached raises ModelLoadError naming it; one that dies or stalls (see
    mtpllama.set_rpc_timeout) ends the generation with DecodeError, and the model must be closed."""

    def __post_init__(self) -> None:
        if not isinstance(self.path, str) or not self.path:
            raise TypeError("path must be a non-empty str")
        if self.mtp_path is not None:
            if not isinstance(self.mtp_path, str) or not self.mtp_path:
                raise TypeError("mtp_path must be a non-empty str or None")
            if not self.mtp:
                raise ValueError("mtp_path is given but mtp is False")
        _check_int("n_gpu_layers", self.n_gpu_layers, -1)
        if self.use_mmap is not None and not isinstance(self.use_mmap, bool):
            raise TypeError(f"use_mmap must be True, False or None, got {self.use_mmap!r}")
        for rule in self.tensor_overrides:
            if not isinstance(rule, str) or "=" not in rule or "\n" in rule:
                raise ValueError(f"tensor override {rule!r} is not of the form 'REGEX=DEVICE'")
        if isinstance(self.rpc_servers, str):
            raise TypeError("rpc_servers must be a sequence of 'HOST:PORT' strings, not one string")
        for ep in self.rpc_servers:
            host, _, port = ep.rpartition(":") if isinstance(ep, str) else ("", "", "")
            if not host or not port.isdigit() or not 0 < int(port) < 65536 or "\n" in ep:
                raise ValueError(f"RPC worker {ep!r} is not 'HOST:PORT'")
        if self.mtp_device is not None:
            if not isinstance(self.mtp_device, str) or not self.mtp_device or "\0" in self.mtp_device:
                raise TypeError("mtp_device must be a device name such as 'CPU' or 'CUDA0', or None")
            if not self.mtp:
                raise ValueError("mtp_device is given but mtp is False")


def mem_available() -> int | None:
    """Bytes of memory available to a new allocation without swapping (MemAvailable), or None."""
    try:
        with open("/proc/meminfo", encoding="ascii") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return None


def resolve_use_mmap(config: ModelConfig, available: int | None) -> bool:
    """Whether loading config.path maps the file: config.use_mmap, or for None the size rule above
    (available: the memory available in bytes, mem_available(); None: unknown)."""
    if config.use_mmap is not None:
        return config.use_mmap
    try:
        size = os.path.getsize(config.path)
    except OSError:
        return True   # the load itself reports the missing or unreadable file
    return available is None or size > READ_INTO_MEMORY_FRACTION * available


@dataclass(frozen=True)
class SessionConfig:
    """Resources of one session (a trunk context and, with MTP, an MTP context)."""

    n_ctx: int = 0
    """Context window in tokens; 0 = min(4096, the model's training context)."""
    n_batch: int = 0
    """Tokens evaluated per call while processing a prompt; 0 = 512."""
    n_threads: int = 0
    """CPU threads; 0 = all cores."""

    def __post_init__(self) -> None:
        _check_int("n_ctx", self.n_ctx, 0)
        _check_int("n_batch", self.n_batch, 0)
        _check_int("n_threads", self.n_threads, 0)


def _check_float(name: str, value: object, lo: float, hi: float, lo_open: bool = False) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"{name} must be a float, got {type(value).__name__}")
    v = float(value)
    if not (lo < v if lo_open else lo <= v) or not v <= hi:
        raise ValueError(f"{name} must be in {'(' if lo_open else '['}{lo}, {hi}], got {value}")


@dataclass(frozen=True)
class SpecConfig:
    """Speculative decoding with the MTP head."""

    draft_max: int = 6
    """Most tokens drafted per step (0 = plain decoding); the upper bound of the adaptive controller."""
    draft_p_min: float = 0.0
    """A floor on the MTP head's confidence: stop drafting where the probability of the head's most
    likely token is below this (the full softmax; after the sampling transforms when sampling: the
    floor looks at the head's distribution, never at the drawn draft, so that sampled output keeps
    its distribution).  0: none; the adaptive controller learns where the head's confidence stops
    paying (its calibration shows in GenerationStats)."""
    verify: str = "rejection"
    """How sampled drafts are checked.
    "rejection": rejection sampling; the output has exactly plain sampling's distribution and it
    accepts the most drafts.  Runs with one seed repeat exactly only with adaptive=False (the
    adaptive decisions follow measured timings).
    "coupled": drafts and trunk share Gumbel noise keyed by (seed, position): the output is
    token-for-token the output of plain sampling with the same seed, whatever the draft lengths
    (reproducible with adaptive=True); accepts a little less than "rejection".
    "exact": sample the trunk and compare with the arg-max draft (upstream llama.cpp's way).
    Greedy decoding ignores it: drafts are kept when they equal the trunk's arg-max."""
    adaptive: bool = True
    """Decide draft by draft how deep each step drafts (0..draft_max), from the head's confidence,
    the acceptance measured at that confidence and the measured cost of every draft length,
    drafting less or not at all where it does not pay; with sampling, also choose the draft
    distribution (see draft_temperature).  How close that comes to plain speed and to the best
    fixed setting is measured in benchmarks/RESULTS.md.  False: draft_max drafts every step."""
    draft_temperature: float | None = None
    """Rejection sampling: temperature of the MTP head's draft distribution q (0: arg-max drafts).
    None: the sampling temperature, mixed toward the head's arg-max as far as the controller finds
    that the trunk accepts more (adaptive=True).  Any q keeps the output distribution exact."""

    def __post_init__(self) -> None:
        _check_int("draft_max", self.draft_max, 0, MAX_DRAFT)
        _check_float("draft_p_min", self.draft_p_min, 0.0, 1.0)
        if self.draft_temperature is not None:
            _check_float("draft_temperature", self.draft_temperature, 0.0, 100.0)
        if not isinstance(self.adaptive, bool):
            raise TypeError("adaptive must be a bool")
        if self.verify not in VERIFY_MODES:
            raise ValueError(f"verify must be one of {sorted(VERIFY_MODES)}, got {self.verify!r}")


@dataclass(frozen=True)
class SamplingConfig:
    """Token selection, with llama.cpp's semantics and order:
    penalties -> top-k -> top-p -> min-p -> temperature -> sample.
    (top-p and min-p see the penalised distribution before temperature, as upstream's default chain.)"""

    temperature: float = 0.0
    """0 = greedy (arg-max), the default; llama.cpp's command-line default is 0.8."""
    top_k: int = 0
    """Keep the k most likely tokens (0 = off)."""
    top_p: float = 1.0
    """Keep the smallest set of tokens holding this much probability (1 = off)."""
    min_p: float = 0.0
    """Drop tokens less likely than min_p times the most likely one (0 = off)."""
    repeat_penalty: float = 1.0
    """Divide positive / multiply negative logits of tokens in the penalty window (1 = off)."""
    presence_penalty: float = 0.0
    frequency_penalty: float = 0.0
    penalty_last_n: int = 64
    """Tokens of context (prompt included) the penalties look at; 0 = off, -1 = the whole context."""
    seed: int = 0
    """Seed of the session's random generator; the same seed and settings give the same output."""

    def __post_init__(self) -> None:
        _check_float("temperature", self.temperature, 0.0, 100.0)
        _check_int("top_k", self.top_k, 0)
        _check_float("top_p", self.top_p, 0.0, 1.0, lo_open=True)
        _check_float("min_p", self.min_p, 0.0, 1.0)
        _check_float("repeat_penalty", self.repeat_penalty, 0.0, 100.0, lo_open=True)
        _check_float("presence_penalty", self.presence_penalty, -100.0, 100.0)
        _check_float("frequency_penalty", self.frequency_penalty, -100.0, 100.0)
        _check_int("penalty_last_n", self.penalty_last_n, -1)
        _check_int("seed", self.seed, 0, 2**64 - 1)

    @property
    def greedy(self) -> bool:
        return self.temperature <= 0.0


GREEDY = SamplingConfig()


PLAIN = SpecConfig(draft_max=0, draft_p_min=0.0, adaptive=False)
