"""Model and Session: the Python face of the native engine.

A reader following one token: Session.generate -> Session._steps -> one
lib.mtpl_session_step call per verification step (csrc/api.cpp ->
csrc/session.cpp -> csrc/verify.cpp) -> tokens back here -> text pieces.
"""
from __future__ import annotations

import codecs
import os
import threading
import time
import weakref
from collections.abc import Iterator, Sequence
from typing import TYPE_CHECKING
from dataclasses import dataclass, field, replace

from . import _lib
from ._lib import _Closeable, CANCELLED, CONF_BUCKETS, MAX_DRAFT, N_MIX, STOP_REASONS, VERIFY_MODES_ALL, ffi, lib
from .chat import ChatPrompt, ChatResult, ChatStream, build_request
from .config import (GREEDY, PLAIN, ModelConfig, SamplingConfig, SessionConfig, SpecConfig, mem_available,
                     resolve_use_mmap)
from .errors import MtpllamaError, SessionBusyError

if TYPE_CHECKING:
    from .group import Group


@dataclass(frozen=True)
class ModelInfo:
    arch: str
    name: str
    n_vocab: int
    n_embd: int
    n_embd_state: int
    """Floats in a trunk state handed to the MTP head: n_embd, or 4 x n_embd with DeepSeek-V4's
    hyper-connection lanes."""
    n_layer: int
    """Trunk layers, without NextN blocks."""
    n_layer_nextn: int
    n_ctx_train: int
    file_has_mtp: bool
    """The file holds a usable NextN block."""
    mtp_loaded: bool
    n_tensors_file: int
    n_tensors_nextn_file: int
    token_eos: int
    model_bytes: int
    """Bytes of the file's tensors (llama.cpp's model size; see Session.memory() for what was loaded)."""
    nextn_bytes_file: int
    n_params: int
    use_mmap: bool
    """The file is memory-mapped (False: its tensors were read into memory); see ModelConfig.use_mmap."""
    mtp_separate: bool = False
    """The NextN block came from ModelConfig.mtp_path (its counts above are that file's)."""
    mtp_device: str = ""
    recurrent: bool = False
    """The trunk keeps a recurrent state (delta-net, Mamba-2, ...): groups do not support it yet."""
    """The device the NextN block runs on ("CPU", "CUDA0", ...; "" when it is not loaded)."""


@dataclass(frozen=True)
class MemoryUse:
    """Bytes llama.cpp allocated in one buffer type for one context (Session.memory_by_buffer)."""
    weights: int
    kv: int
    compute: int


@dataclass
class GenerationStats:
    prompt_tokens: int = 0
    generated_tokens: int = 0
    steps: int = 0
    """Trunk passes whose tokens were emitted (the prompt pass counts once): generated = steps + sum(accepted)."""
    drafted: list[int] = field(default_factory=list)
    """Drafts proposed at each draft position (index 0 = first draft after the pending token)."""
    accepted: list[int] = field(default_factory=list)
    trunk_calls: int = 0
    mtp_calls: int = 0
    t_prefill: float = 0.0
    t_draft: float = 0.0
    t_verify: float = 0.0
    t_other: float = 0.0
    wall: float = 0.0
    """Seconds measured around the whole call in Python."""
    drafts_per_step: list[int] = field(default_factory=list)
    """Verification steps that verified k drafts, by k = 0..MAX_DRAFT (the adaptive controller's
    draft-by-draft decisions show here)."""
    est_accept: list[float] = field(default_factory=list)
    """Controller's estimate of the acceptance at each draft position, over the head's confidences."""
    est_verify: dict[int, float] = field(default_factory=dict)
    """Controller's estimate of the seconds of a trunk pass over k drafts (k + 1 rows), by k (measured ones)."""
    est_head: float = 0.0
    """Controller's estimate of the seconds of a step's first MTP evaluation."""
    est_catch_up: float = 0.0
    """... and of the seconds it adds per position it catches up after plain steps."""
    est_rebuild: float = 0.0
    """Controller's estimate of the seconds a trunk pass adds when llama.cpp builds its compute graph
    anew (its row count differs from the pass before); est_verify excludes it."""
    est_draft: float = 0.0
    """Controller's estimate of the seconds of each further MTP evaluation."""
    est_other: float = 0.0
    """Controller's estimate of the rest of a step's seconds (the time between steps included)."""
    est_rate: float = 0.0
    """Tokens per second of the best fixed draft length, as the controller estimates it."""
    calibration: list[tuple[float, float, float]] = field(default_factory=list)
    """The head's calibration as the controller learnt it: (lowest confidence of the bucket, first-draft
    acceptance there, aged drafts behind it) per confidence bucket."""
    draft_mix: list[float] = field(default_factory=list)
    """Sampled decoding: the mixture toward the head's arg-max of each position's draft distribution
    (0: the head's distribution at the sampling temperature; 1: its arg-max)."""
    trunk_graphs_reused: int = 0
    """Trunk evaluations that reused llama.cpp's previous compute graph (of trunk_calls)."""
    mtp_graphs_reused: int = 0
    """MTP evaluations that reused the previous compute graph (of mtp_calls)."""
    reevaluated_tokens: int = 0
    """Context tokens evaluated again to roll the context back (a stop string's cut, or keeping a
    prompt's cached prefix: the last kept token, whose logits and state the next token needs)."""
    stateless_passes: int = 0
    """Verification passes that left out the trunk states the MTP head drafts from: the adaptive
    controller had stopped drafting (over RPC the states are read back from a worker)."""
    first_paired: list[float] = field(default_factory=list)
    """Rejection sampling with the learnt draft mixture: over the verified first drafts (first_paired_drafts),
    the summed chance that each mixture would have accepted on the same rows; index 0 drafts from the
    head's distribution (rejection sampling at the sampling temperature), the last its arg-max (as
    often accepted as exact-match verification).  Divided by first_paired_drafts: each one's
    first-position acceptance, paired with the others on one generation."""
    first_paired_drawn: float = 0.0
    """... and the summed chance of the mixtures the first drafts were drawn from."""
    first_paired_drafts: int = 0
    """The verified first drafts those sums are over."""
    cached_tokens: int = 0
    """Prompt tokens the session's caches already held (reuse_prefix=True, chat): not evaluated again.
    prompt_tokens counts the rest, the tokens fed."""

    @property
    def t_total(self) -> float:
        """Seconds spent in the engine (prefill + draft + verify + other)."""
        return self.t_prefill + self.t_draft + self.t_verify + self.t_other

    @property
    def acceptance(self) -> list[float]:
        """Accepted / drafted at each draft position."""
        return [a / d if d else 0.0 for a, d in zip(self.accepted, self.drafted)]

    @property
    def mean_tokens_per_step(self) -> float:
        return self.generated_tokens / self.steps if self.steps else 0.0

    @property
    def decode_tokens_per_second(self) -> float:
        """Decode speed: the tokens decoding steps emitted (the first generated token comes out of
        the prompt pass and is not counted) over the seconds of those steps.  The one definition
        used by the CLI and the benchmarks."""
        t = self.t_draft + self.t_verify + self.t_other
        return max(0, self.generated_tokens - 1) / t if t > 0 else 0.0

    @classmethod
    def _from_native(cls, st) -> "GenerationStats":
        n = MAX_DRAFT
        drafted = [int(st.drafted[i]) for i in range(n)]
        while drafted and drafted[-1] == 0:
            drafted.pop()
        return cls(
            prompt_tokens=int(st.n_prompt_tokens), generated_tokens=int(st.n_generated), steps=int(st.n_steps),
            drafted=drafted, accepted=[int(st.accepted[i]) for i in range(len(drafted))],
            trunk_calls=int(st.n_trunk_calls), mtp_calls=int(st.n_mtp_calls),
            t_prefill=st.t_prefill_s, t_draft=st.t_draft_s, t_verify=st.t_verify_s, t_other=st.t_other_s,
            drafts_per_step=[int(st.drafts_per_step[k]) for k in range(n + 1)],
            est_accept=[float(st.est_accept[i]) for i in range(n)],
            est_verify={k: float(st.est_verify_s[k]) for k in range(n + 1) if st.est_verify_s[k] > 0},
            est_head=float(st.est_head_s), est_catch_up=float(st.est_catch_up_s), est_rebuild=float(st.est_rebuild_s), est_draft=float(st.est_draft_s), est_other=float(st.est_other_s),
            est_rate=float(st.est_rate),
            calibration=[(float(st.calib_conf_lo[b]), float(st.calib_accept[b]), float(st.calib_weight[b]))
                         for b in range(CONF_BUCKETS)],
            draft_mix=[float(st.draft_mix[i]) for i in range(n)],
            trunk_graphs_reused=int(st.n_trunk_graphs_reused),
            mtp_graphs_reused=int(st.n_mtp_graphs_reused),
            reevaluated_tokens=int(st.n_reevaluated), stateless_passes=int(st.n_stateless_passes),
            first_paired=[float(st.first_paired[j]) for j in range(N_MIX)],
            first_paired_drawn=float(st.first_paired_drawn), first_paired_drafts=int(st.n_first_paired))


@dataclass
class GenerationResult:
    text: str
    tokens: list[int]
    stop_reason: str
    """'eos', 'length', 'stop' (a stop string), 'context' (the context window is full), or
    'cancelled' (Session.cancel() was called; the tokens produced so far are returned)."""
    stats: GenerationStats


class Model(_Closeable):
    """A loaded GGUF model.  Use as a context manager or call close()."""

    def __init__(self, path: str | os.PathLike | None = None, *, mtp: bool = True, n_gpu_layers: int = 0,
                 tensor_overrides: Sequence[str] = (), use_mmap: bool | None = None,
                 mtp_path: str | os.PathLike | None = None, mtp_device: str | None = None,
                 rpc_servers: Sequence[str] = (), config: ModelConfig | None = None, session_defaults: SessionConfig | None = None) -> None:
        """session_defaults: the SessionConfig of sessions opened by generate()/stream() and by
        session() without arguments (e.g. SessionConfig(n_threads=4, n_ctx=8192))."""
        self._handle = ffi.NULL
        self.session_defaults = session_defaults or SessionConfig()
        if config is not None and (path is not None or mtp is not True or n_gpu_layers != 0 or tensor_overrides
                                   or use_mmap is not None or mtp_path is not None or mtp_device is not None
                                   or rpc_servers):
            raise TypeError("pass either a ModelConfig or a path with keyword arguments, not both")
        if config is None:
            if path is None:
                raise TypeError("Model() needs a path or a config")
            if not isinstance(path, (str, os.PathLike)):
                raise TypeError(f"path must be a str or os.PathLike, got {type(path).__name__}")
            if mtp_path is not None and not isinstance(mtp_path, (str, os.PathLike)):
                raise TypeError(f"mtp_path must be a str or os.PathLike, got {type(mtp_path).__name__}")
            config = ModelConfig(os.fspath(path), mtp=mtp, n_gpu_layers=n_gpu_layers,
                                 tensor_overrides=tuple(tensor_overrides), use_mmap=use_mmap,
                                 mtp_path=None if mtp_path is None else os.fspath(mtp_path), mtp_device=mtp_device,
                                 rpc_servers=rpc_servers if isinstance(rpc_servers, str) else tuple(rpc_servers))
        self.config = config
        self._sessions: weakref.WeakSet[Session] = weakref.WeakSet()
        self._groups: weakref.WeakSet = weakref.WeakSet()
        self._default: dict[bool, Session] = {}
        self._pieces: list[bytes] | None = None
        self._lock = threading.Lock()
        path_b = ffi.new("char[]", config.path.encode())
        ot_b = ffi.new("char[]", "\n".join(config.tensor_overrides).encode()) if config.tensor_overrides else ffi.NULL
        head_b = ffi.new("char[]", config.mtp_path.encode()) if config.mtp_path else ffi.NULL
        dev_b = ffi.new("char[]", config.mtp_device.encode()) if config.mtp_device else ffi.NULL
        rpc_b = ffi.new("char[]", "\n".join(config.rpc_servers).encode()) if config.rpc_servers else ffi.NULL
        use_mmap = resolve_use_mmap(config, mem_available())
        params = ffi.new("mtpl_model_params *", {
            "path": path_b, "mtp": int(config.mtp), "n_gpu_layers": config.n_gpu_layers,
            "tensor_overrides": ot_b, "use_mmap": int(use_mmap), "mtp_path": head_b, "mtp_device": dev_b,
            "rpc_servers": rpc_b})
        out = ffi.new("mtpl_model **")
        _lib.check(lib.mtpl_model_load(params, out))
        self._handle = out[0]
        info = ffi.new("mtpl_model_info *")
        _lib.check(lib.mtpl_model_get_info(self._handle, info))
        self.info = ModelInfo(
            arch=ffi.string(info.arch).decode(), name=ffi.string(info.name).decode(errors="replace"),
            n_vocab=info.n_vocab, n_embd=info.n_embd, n_embd_state=info.n_embd_state,
            n_layer=info.n_layer, n_layer_nextn=info.n_layer_nextn,
            n_ctx_train=info.n_ctx_train, file_has_mtp=bool(info.file_has_mtp), mtp_loaded=bool(info.mtp_loaded),
            n_tensors_file=info.n_tensors_file, n_tensors_nextn_file=info.n_tensors_nextn_file,
            token_eos=info.token_eos, model_bytes=info.model_bytes, nextn_bytes_file=info.nextn_bytes_file,
            n_params=info.n_params, use_mmap=use_mmap, mtp_separate=bool(info.mtp_separate),
            mtp_device=ffi.string(info.mtp_device).decode(), recurrent=bool(info.recurrent))

    # -- lifetime ---------------------------------------------------------------
    def _ptr(self):
        if self._handle == ffi.NULL:
            raise MtpllamaError("the model is closed")
        return self._handle

    @property
    def closed(self) -> bool:
        return self._handle == ffi.NULL

    def close(self) -> None:
        """Free the model and every session opened on it.  Safe to call twice."""
        if self._handle == ffi.NULL:
            return
        for s in list(self._sessions):
            s.close()
        for g in list(self._groups):
            g.close()
        self._default.clear()
        _lib.check(lib.mtpl_model_free(self._handle))
        self._handle = ffi.NULL

    # -- text -------------------------------------------------------------------
    def tokenize(self, text: str, *, add_special: bool = False, parse_special: bool = False) -> list[int]:
        if not isinstance(text, str):
            raise TypeError(f"text must be str, got {type(text).__name__}")
        data = text.encode("utf-8")
        cap = len(data) + 8
        n = ffi.new("int32_t *")
        for _ in range(2):
            buf = ffi.new("int32_t[]", cap)
            st = lib.mtpl_tokenize(self._ptr(), data, len(data), int(add_special), int(parse_special), buf, cap, n)
            if st == _lib.BUFFER_TOO_SMALL:
                cap = n[0]
                continue
            _lib.check(st, "tokenize")
            return list(ffi.unpack(buf, n[0]))
        raise MtpllamaError("tokenize: buffer size negotiation failed")

    def detokenize(self, tokens: Sequence[int]) -> str:
        return self.token_bytes(tokens).decode("utf-8", errors="replace")

    def token_bytes(self, tokens: Sequence[int]) -> bytes:
        """The bytes of tokens (special tokens render empty)."""
        pieces = self.pieces
        try:
            return b"".join(pieces[t] if t >= 0 else _bad_token(t, len(pieces)) for t in tokens)
        except IndexError:
            bad = next(t for t in tokens if not 0 <= t < len(pieces))
            _bad_token(bad, len(pieces))
            raise

    @property
    def pieces(self) -> list[bytes]:
        """Bytes of every token, fetched from the engine in one call and cached."""
        if self._pieces is None:
            n_vocab = self.info.n_vocab
            offsets = ffi.new("int64_t[]", n_vocab + 1)
            need = ffi.new("int64_t *")
            st = lib.mtpl_vocab_pieces(self._ptr(), ffi.NULL, 0, ffi.NULL, need)
            if st not in (0, _lib.BUFFER_TOO_SMALL):
                _lib.raise_for(st, "vocab")
            buf = ffi.new("char[]", max(1, need[0]))
            _lib.check(lib.mtpl_vocab_pieces(self._ptr(), buf, need[0], offsets, need), "vocab")
            raw = ffi.buffer(buf, need[0])[:]
            self._pieces = [raw[offsets[i]:offsets[i + 1]] for i in range(n_vocab)]
        return self._pieces

    def meta(self, key: str) -> str | None:
        """A string metadata value of the file, or None."""
        n = ffi.new("int32_t *")
        st = lib.mtpl_model_meta(self._ptr(), key.encode(), ffi.NULL, 0, n)
        if n[0] < 0:
            return None
        if st not in (0, _lib.BUFFER_TOO_SMALL):
            _lib.raise_for(st, "meta")
        buf = ffi.new("char[]", n[0] + 1)
        _lib.check(lib.mtpl_model_meta(self._ptr(), key.encode(), buf, n[0] + 1, n), "meta")
        return ffi.string(buf).decode("utf-8", "replace")

    @property
    def chat_template(self) -> str | None:
        return self.meta("tokenizer.chat_template")

    # -- sessions and generation -------------------------------------------------
    def session(self, config: SessionConfig | None = None, *, mtp: bool | None = None, **kwargs) -> "Session":
        """Open a session.  mtp defaults to whether the model was loaded with MTP."""
        if config is None:
            config = replace(self.session_defaults, **kwargs) if kwargs else self.session_defaults
        elif kwargs:
            raise TypeError("pass either a SessionConfig or keyword arguments")
        return Session(self, config, self.config.mtp if mtp is None else mtp)

    def group(self, n: int, config: SessionConfig | None = None, *, mtp: bool | None = None,
              exact: bool = True, cap_drafts: bool = True) -> "Group":
        """n sessions that share one trunk context and verify their drafts in one trunk pass per
        step (mtpllama.group.Group): drive each from a thread of its own, or use generate_many."""
        from .group import Group

        return Group(self, n, config, mtp=mtp, exact=exact, cap_drafts=cap_drafts)

    def generate_many(self, prompts: Sequence[str | Sequence[int]], max_tokens: int | Sequence[int] = 128, *,
                      spec: SpecConfig | None = None,
                      sampling: SamplingConfig | Sequence[SamplingConfig] | None = None,
                      stop: Sequence[str] = (), mtp: bool | None = None, exact: bool = True,
                      config: SessionConfig | None = None) -> list[GenerationResult]:
        """Complete several prompts at once, each from a fresh context, with one trunk pass per
        step for all of them (a temporary Group); results in the prompts' order.  In the exact mode
        (default) each result equals what generate() returns for that prompt alone."""
        if not prompts:
            return []
        with self.group(len(prompts), config, mtp=mtp, exact=exact) as g:
            return g.generate_many(prompts, max_tokens, spec=spec, sampling=sampling, stop=stop)

    def _default_session(self, mtp: bool) -> "Session":
        s = self._default.get(mtp)
        if s is None or s.closed:
            s = self.session(mtp=mtp)
            self._default[mtp] = s
        return s

    def generate(self, prompt: str | Sequence[int], max_tokens: int = 128, *, spec: SpecConfig | None = None,
                 sampling: SamplingConfig | None = None, draft_max: int | None = None,
                 draft_p_min: float | None = None, temperature: float | None = None, seed: int | None = None,
                 stop: Sequence[str] = (), mtp: bool | None = None) -> GenerationResult:
        """Complete prompt from a fresh context.  mtp=False (or draft_max=0) decodes plainly.
        temperature/seed are shortcuts for a SamplingConfig; greedy by default."""
        use_mtp = self.config.mtp if mtp is None else mtp
        s = self._default_session(use_mtp)
        s.reset()
        return s.generate(prompt, max_tokens, spec=_spec(spec, draft_max, draft_p_min, use_mtp),
                          sampling=_sampling(sampling, temperature, seed), stop=stop)

    def stream(self, prompt: str | Sequence[int], max_tokens: int = 128, *, spec: SpecConfig | None = None,
               sampling: SamplingConfig | None = None, draft_max: int | None = None,
               draft_p_min: float | None = None, temperature: float | None = None, seed: int | None = None,
               stop: Sequence[str] = (), mtp: bool | None = None) -> Iterator[str]:
        """Like generate(), yielding text pieces as the trunk accepts them."""
        use_mtp = self.config.mtp if mtp is None else mtp
        s = self._default_session(use_mtp)
        s.reset()
        return s.stream(prompt, max_tokens, spec=_spec(spec, draft_max, draft_p_min, use_mtp),
                        sampling=_sampling(sampling, temperature, seed), stop=stop)

    # -- chat ---------------------------------------------------------------------------
    def chat_prompt(self, messages: Sequence[dict], *, tools: Sequence[dict] | None = None, tool_choice: str = "auto",
                    thinking: bool | None = None, chat_template_kwargs: dict | None = None,
                    reasoning_effort: str | None = None, parallel_tool_calls: bool | None = None,
                    add_generation_prompt: bool = True, reasoning_format: str | None = None) -> ChatPrompt:
        """Render OpenAI-style messages (and tools) with the model's chat template, as llama-server
        does (llama.cpp's own chat code, run by the engine).  The ChatPrompt holds the prompt text
        and the parser of the reply; close it when done.  thinking: None is the template's default
        (on where it can think); chat_template_kwargs are the template's extra variables;
        reasoning_format: see mtpllama.chat.REASONING_FORMATS (default "deepseek", llama-server's).
        Raises NoChatTemplateError for a file without a template, InvalidArgumentError for malformed
        messages, ChatTemplateError where the template fails on them."""
        req = build_request(messages, tools=tools, tool_choice=tool_choice, thinking=thinking,
                            chat_template_kwargs=chat_template_kwargs, reasoning_effort=reasoning_effort,
                            parallel_tool_calls=parallel_tool_calls, add_generation_prompt=add_generation_prompt,
                            reasoning_format=reasoning_format)
        return ChatPrompt(self._ptr(), req)

    def chat(self, messages: Sequence[dict], max_tokens: int | None = None, *, mtp: bool | None = None,
             spec: SpecConfig | None = None, draft_max: int | None = None, draft_p_min: float | None = None,
             **options) -> ChatResult:
        """The assistant's reply to messages (Session.chat, whose options this takes), in the model's
        default session: a conversation that grows turn by turn evaluates only its new part."""
        use_mtp = self.config.mtp if mtp is None else mtp
        return self._default_session(use_mtp).chat(messages, max_tokens,
                                                    spec=_spec(spec, draft_max, draft_p_min, use_mtp), **options)

    def chat_stream(self, messages: Sequence[dict], max_tokens: int | None = None, *, mtp: bool | None = None,
                    spec: SpecConfig | None = None, draft_max: int | None = None, draft_p_min: float | None = None,
                    **options) -> ChatStream:
        """Like chat(), as a stream of ChatDelta events (Session.chat_stream)."""
        use_mtp = self.config.mtp if mtp is None else mtp
        return self._default_session(use_mtp).chat_stream(messages, max_tokens,
                                                           spec=_spec(spec, draft_max, draft_p_min, use_mtp), **options)


def set_batch_invariant(enabled: bool) -> None:
    """Process-wide: compute verification batches with the kernels of a lone row (the default).

    On, greedy MTP output equals plain greedy output token for token.  Off, verification may use
    llama.cpp's faster batched CPU kernels; their results differ in the last bits, and where two
    tokens (or two experts) are within rounding of each other, MTP output can differ from plain
    output.  Only the CPU backend is affected."""
    _lib.check(lib.mtpl_set_batch_invariant(1 if enabled else 0), "set_batch_invariant")


def batch_invariant() -> bool:
    """Whether verification batches are computed with the kernels of a lone row."""
    return bool(lib.mtpl_get_batch_invariant())


def set_huge_pages(enabled: bool) -> None:
    """Process-wide: advise CPU buffers of 2 MiB and more, allocated from now on, as transparent huge
    pages (on by default; Linux, where /sys/kernel/mm/transparent_hugepage/enabled is not "never").

    Decoding reads every weight once per step: fewer TLB misses, and the prefetchers are not
    stopped every 4 KiB.  It covers weights read into memory (see ModelConfig.use_mmap), KV caches and compute
    buffers, not a memory-mapped file."""
    _lib.check(lib.mtpl_set_huge_pages(1 if enabled else 0), "set_huge_pages")


def huge_pages() -> bool:
    """Whether new CPU buffers are advised as transparent huge pages."""
    return bool(lib.mtpl_get_huge_pages())


@dataclass(frozen=True)
class Device:
    """A device of this build and machine (mtpllama.devices())."""
    name: str
    """What tensor_overrides and mtp_device take: "CPU", "CUDA0", ..."""
    description: str
    kind: str
    """"cpu", "gpu", "igpu" or "accel"."""
    memory_free: int
    memory_total: int


def _text_call(fn, *args) -> str:
    """Call an engine function that writes NUL-terminated text (buf, cap, n_out), growing buf as told."""
    cap = 4096
    n = ffi.new("int64_t *")
    while True:
        buf = ffi.new("char[]", cap)
        st = fn(*args, buf, cap, n)
        if st == lib.MTPL_ERR_BUFFER_TOO_SMALL and n[0] + 1 > cap:
            cap = n[0] + 1
            continue
        _lib.check(st)
        return ffi.string(buf).decode(errors="replace")


def devices() -> list[Device]:
    """The devices llama.cpp can place layers and tensors on in this build (the CPU first)."""
    out = []
    for line in _text_call(lib.mtpl_devices).splitlines():
        name, desc, kind, free, total = line.split("\t")
        out.append(Device(name, desc, kind, int(free), int(total)))
    return out


def set_rpc_timeout(seconds: float) -> None:
    """Process-wide: a call to an RPC worker that waits longer than this fails the generation with
    DecodeError naming the worker (default 60 s; 0 waits forever).  Applies to connections made
    afterwards, i.e. to models loaded afterwards."""
    if isinstance(seconds, bool) or not isinstance(seconds, (int, float)) or not 0 <= seconds < 2**31 / 1000:
        raise ValueError(f"the RPC timeout must be a number of seconds >= 0, got {seconds!r}")
    _lib.check(lib.mtpl_set_rpc_timeout(int(round(seconds * 1000))), "set_rpc_timeout")


def rpc_timeout() -> float:
    """The RPC timeout in seconds (0: none)."""
    ms = ffi.new("int32_t *")
    _lib.check(lib.mtpl_get_rpc_timeout(ms))
    return ms[0] / 1000


def cuda_graph_counts() -> dict[str, int]:
    """Process-wide CUDA graph computations so far: {'reused', 'captured', 'direct'} (launched from a
    reused CUDA graph, captured into a new one, evaluated kernel by kernel).  NoBackendError in a
    build without CUDA."""
    r, c, d = ffi.new("int64_t *"), ffi.new("int64_t *"), ffi.new("int64_t *")
    _lib.check(lib.mtpl_cuda_graph_counts(r, c, d), "cuda_graph_counts")
    return {"reused": r[0], "captured": c[0], "direct": d[0]}


def gen_params(spec: SpecConfig, sampling: SamplingConfig):
    """The engine's mtpl_gen_params for a generation with these settings."""
    sm = sampling
    return ffi.new("mtpl_gen_params *", {
        "draft_max": spec.draft_max, "draft_p_min": float(spec.draft_p_min), "verify": VERIFY_MODES_ALL[spec.verify],
        "draft_temperature": -1.0 if spec.draft_temperature is None else float(spec.draft_temperature),
        "adaptive": int(spec.adaptive),
        "temperature": float(sm.temperature), "top_k": sm.top_k, "top_p": float(sm.top_p),
        "min_p": float(sm.min_p), "repeat_penalty": float(sm.repeat_penalty),
        "presence_penalty": float(sm.presence_penalty), "frequency_penalty": float(sm.frequency_penalty),
        "penalty_last_n": sm.penalty_last_n, "seed": sm.seed})


def _bad_token(t: int, n_vocab: int) -> bytes:
    raise ValueError(f"token id {t} is outside the vocabulary [0, {n_vocab})")


def _sampling(sampling: SamplingConfig | None, temperature: float | None, seed: int | None,
              top_p: float | None = None, top_k: int | None = None, min_p: float | None = None) -> SamplingConfig | None:
    """sampling (greedy when None) with the shortcuts that are not None put in."""
    over = {k: v for k, v in (("temperature", temperature), ("seed", seed), ("top_p", top_p), ("top_k", top_k),
                              ("min_p", min_p)) if v is not None}
    if not over:
        return sampling
    if sampling is not None and not isinstance(sampling, SamplingConfig):
        raise TypeError("sampling must be a SamplingConfig")
    return replace(sampling or GREEDY, **over)


def _spec(spec: SpecConfig | None, draft_max: int | None, draft_p_min: float | None, mtp: bool) -> SpecConfig:
    if not mtp:
        if spec is not None and spec.draft_max > 0 or draft_max:
            raise ValueError("drafting needs mtp=True")
        return PLAIN
    base = spec or SpecConfig()
    if draft_max is None and draft_p_min is None:
        return base
    return replace(base, draft_max=base.draft_max if draft_max is None else draft_max,
                   draft_p_min=base.draft_p_min if draft_p_min is None else draft_p_min)


class Session(_Closeable):
    """A conversation with its own KV caches (trunk, and MTP when enabled).

    generate()/stream() continue the context: what you pass is appended to what
    is already there.  Call reset() to start over.  One thread at a time.
    """

    def __init__(self, model: Model, config: SessionConfig, mtp: bool, _group=None, _handle=None) -> None:
        self._handle = ffi.NULL
        self.model = model  # strong reference: the model outlives its sessions
        self.config = config
        self.mtp = bool(mtp)
        self._group = _group  # a Group's session: the group owns the handle and coordinates its steps
        if _group is None:
            params = ffi.new("mtpl_session_params *", {
                "n_ctx": config.n_ctx, "n_batch": config.n_batch, "n_threads": config.n_threads, "mtp": int(self.mtp)})
            out = ffi.new("mtpl_session **")
            _lib.check(lib.mtpl_session_new(model._ptr(), params, out), "session")
            self._handle = out[0]
            model._sessions.add(self)
        else:
            self._handle = _handle
        n = ffi.new("int32_t *")
        _lib.check(lib.mtpl_session_n_ctx(self._handle, n))
        self.n_ctx = n[0]
        self._out = ffi.new("int32_t[]", MAX_DRAFT + 2)
        self._result = ffi.new("mtpl_step_result *")
        self._busy = threading.Lock()  # one generation at a time
        self._cached = 0  # prompt tokens of the last generation found in the caches (reuse_prefix)
        self._native_error = ""  # a group's session: the last native error of its engine thread

    def _ptr(self):
        if self._handle == ffi.NULL:
            raise MtpllamaError("the session is closed")
        return self._handle

    @property
    def closed(self) -> bool:
        return self._handle == ffi.NULL

    def close(self) -> None:
        """Free the session's contexts.  Safe to call twice; raises SessionBusyError while a
        generation (or an unfinished stream) uses the session."""
        if self._handle == ffi.NULL:
            return
        if not self._busy.acquire(blocking=False):
            raise SessionBusyError("cannot close a session while it is generating (finish or close the stream)")
        try:
            if self._group is None:
                _lib.check(lib.mtpl_session_free(self._handle))
                self.model._sessions.discard(self)
            self._handle = ffi.NULL  # a group's session is freed with its group
        finally:
            self._busy.release()

    # -- state ----------------------------------------------------------------------
    def reset(self) -> None:
        """Empty the context (both KV caches)."""
        if not self._busy.acquire(blocking=False):
            raise SessionBusyError("cannot reset a session while it is generating")
        try:
            _lib.check(lib.mtpl_session_reset(self._ptr()), "reset")
        finally:
            self._busy.release()

    def cancel(self) -> None:
        """Stop a generation running in another thread (thread-safe): within one graph evaluation
        it ends with stop_reason 'cancelled' and returns what it produced; the session stays usable."""
        if self._handle != ffi.NULL:
            lib.mtpl_session_cancel(self._handle)

    @property
    def tokens(self) -> list[int]:
        """Tokens in the context, including the chosen next token."""
        n = ffi.new("int32_t *")
        lib.mtpl_session_tokens(self._ptr(), ffi.NULL, 0, n)
        buf = ffi.new("int32_t[]", max(1, n[0]))
        _lib.check(lib.mtpl_session_tokens(self._ptr(), buf, n[0], n))
        return list(ffi.unpack(buf, n[0]))

    def memory(self) -> dict[str, int]:
        """Bytes llama.cpp allocated: {'weights', 'kv', 'compute'} (weights are those actually loaded)."""
        w, kv, c = ffi.new("int64_t *"), ffi.new("int64_t *"), ffi.new("int64_t *")
        _lib.check(lib.mtpl_session_memory(self._ptr(), w, kv, c))
        return {"weights": w[0], "kv": kv[0], "compute": c[0]}

    def memory_by_buffer(self, mtp: bool = False) -> dict[str, MemoryUse]:
        """The same per buffer type ("CPU", "CUDA0", "CUDA_Host", ...) for the trunk context, or for the
        MTP context with mtp=True ({} in a session without MTP): where the model's weights, the
        context's KV cache and its compute buffer live (both contexts list the same weights)."""
        text = _text_call(lib.mtpl_session_memory_by_buffer, self._ptr(), int(mtp))
        out: dict[str, MemoryUse] = {}
        for line in text.splitlines():
            name, w, kv, c = line.rsplit("\t", 3)
            out[name] = MemoryUse(int(w), int(kv), int(c))
        return out

    # -- debugging (tests) ---------------------------------------------------------------
    def debug_record(self, enable: bool = True) -> None:
        """Start (clearing) or stop recording every row evaluated in either context."""
        _lib.check(lib.mtpl_session_debug(self._ptr(), int(enable)))

    def debug_events(self) -> list[dict]:
        """Recorded events: dicts with kind ('trunk', 'mtp', 'trunk_forget', 'mtp_forget', 'reset'),
        pos, token, call, and numpy arrays (or None) h_in, logits, h_out."""
        import numpy as np

        n = ffi.new("int32_t *")
        lib.mtpl_session_debug_events(self._ptr(), ffi.NULL, 0, n)
        ev = ffi.new("mtpl_debug_event[]", max(1, n[0]))
        _lib.check(lib.mtpl_session_debug_events(self._ptr(), ev, n[0], n))
        nf = ffi.new("int64_t *")
        lib.mtpl_session_debug_floats(self._ptr(), ffi.NULL, 0, nf)
        fl = np.zeros(max(1, nf[0]), dtype=np.float32)
        _lib.check(lib.mtpl_session_debug_floats(self._ptr(), ffi.cast("float *", fl.ctypes.data), nf[0], nf))
        d, v = self.model.info.n_embd_state, self.model.info.n_vocab
        kinds = {0: "trunk", 1: "mtp", 2: "trunk_forget", 3: "mtp_forget", 4: "reset"}

        def cut(off: int, size: int):
            return None if off < 0 else fl[off:off + size].copy()

        return [{"kind": kinds[e.kind], "pos": e.pos, "token": e.token, "call": e.call,
                 "h_in": cut(e.h_in, d), "logits": cut(e.logits, v), "h_out": cut(e.h_out, d)}
                for e in ev[0:n[0]]]

    def stats(self) -> GenerationStats:
        """Counters accumulated since the last generate() started."""
        st = ffi.new("mtpl_stats *")
        _lib.check(lib.mtpl_session_get_stats(self._ptr(), st))
        stats = GenerationStats._from_native(st)
        stats.cached_tokens = max(0, self._cached - stats.reevaluated_tokens)
        return stats

    # -- generation -------------------------------------------------------------------
    def _prepare(self, prompt: str | Sequence[int], max_tokens: int, spec: SpecConfig | None) -> tuple[list[int], SpecConfig]:
        if spec is not None and not isinstance(spec, SpecConfig):
            raise TypeError("spec must be a SpecConfig")
        if isinstance(max_tokens, bool) or not isinstance(max_tokens, int):
            raise TypeError("max_tokens must be an int")
        if not 1 <= max_tokens < 2**31:
            raise ValueError(f"max_tokens must be in [1, 2**31), got {max_tokens}")
        if isinstance(prompt, str):
            tokens = self.model.tokenize(prompt)
        elif isinstance(prompt, Sequence) and all(isinstance(t, int) and not isinstance(t, bool) for t in prompt):
            tokens = list(prompt)
        else:
            raise TypeError("prompt must be a str or a sequence of token ids")
        if not tokens:
            raise ValueError("the prompt is empty")
        if spec is None:
            spec = SpecConfig() if self.mtp else PLAIN
        if spec.draft_max > 0 and not self.mtp:
            raise ValueError("this session decodes plainly (mtp=False); use draft_max=0")
        return tokens, spec

    def _keep_prefix(self, h, tokens: list[int]) -> tuple[list[int], int]:
        """Roll the context back to the longest prefix it shares with tokens; (the tokens still to
        feed, the truncate status).  The context's last token is never kept (it may be a chosen next
        token that was never emitted), nor the prompt's last (the prompt is fed for its logits).  A
        group's session first takes a longer prefix from another session's cache where one holds it."""
        if self._group is not None and tokens:
            kept = ffi.new("int32_t *")
            st = self._native(lib.mtpl_session_adopt_prefix, h, ffi.new("int32_t[]", tokens), len(tokens), kept)
            if st or kept[0]:
                self._cached = kept[0]
                return tokens[kept[0]:], st
        ctx = self.tokens
        n, limit = 0, min(len(ctx), len(tokens)) - 1
        while n < limit and ctx[n] == tokens[n]:
            n += 1
        self._cached = n
        st = self._native(lib.mtpl_session_truncate, h, n) if n < len(ctx) else 0
        return tokens[n:], st

    def _steps(self, tokens: list[int], max_tokens: int, spec: SpecConfig,
               sampling: SamplingConfig, reuse: bool = False) -> Iterator[tuple[list[int], str]]:
        """Feed the prompt (reuse: the prompt is the whole context, and the caches keep what they
        share with it), then yield (tokens, stop) per verification step."""
        h = self._ptr()
        _lib.check(lib.mtpl_session_reset_stats(h))
        params = gen_params(spec, sampling)
        _lib.check(lib.mtpl_session_configure(h, params), "configure")
        self._cached = 0
        if reuse:
            tokens, st = self._keep_prefix(h, tokens)
            if st == CANCELLED:
                yield [], "cancelled"
                return
            self._check(st, "truncate")
            # configured again: the generator is reseeded as for a fresh context, whatever the rollback drew
            _lib.check(lib.mtpl_session_configure(h, params), "configure")
        # the prompt goes in chunks so that Ctrl-C (handled between foreign calls) stays responsive
        chunk = self.config.n_batch or 512
        for i in range(0, len(tokens), chunk):
            part = tokens[i:i + chunk]
            st = self._native(lib.mtpl_session_feed, h, ffi.new("int32_t[]", part), len(part))
            if st == CANCELLED:
                yield [], "cancelled"
                return
            self._check(st, "prompt")
        if self._group is not None:  # the group verifies its sessions' steps together
            yield from self._group._steps_of(self, max_tokens)
            return
        out, res, step = self._out, self._result, lib.mtpl_session_step
        remaining = max_tokens
        while remaining > 0:
            st = step(h, remaining, out, MAX_DRAFT + 2, res)  # the one foreign call per step
            if st == CANCELLED:
                yield [], "cancelled"
                return
            if st:
                _lib.raise_for(st, "generate")
            got = ffi.unpack(out, res.n_tokens)
            remaining -= res.n_tokens
            stop = STOP_REASONS[res.stop]
            yield got, stop
            if stop != "none":
                return

    def stream(self, prompt: str | Sequence[int], max_tokens: int = 128, *, spec: SpecConfig | None = None,
               sampling: SamplingConfig | None = None, stop: Sequence[str] = (),
               reuse_prefix: bool = False) -> Iterator[str]:
        """Yield text pieces as they are accepted."""
        for piece, _tok, _reason in self._run(prompt, max_tokens, spec, sampling, stop, reuse_prefix):
            if piece:
                yield piece

    def generate(self, prompt: str | Sequence[int], max_tokens: int = 128, *, spec: SpecConfig | None = None,
                 sampling: SamplingConfig | None = None, stop: Sequence[str] = (),
                 reuse_prefix: bool = False) -> GenerationResult:
        """Continue the context with prompt and generate.  reuse_prefix=True: the prompt is the
        whole context instead; the session keeps the longest prefix its caches share with it and
        evaluates only the rest (GenerationStats.cached_tokens)."""
        t0 = time.perf_counter()
        parts: list[str] = []
        tokens: list[int] = []
        reason = "length"
        for piece, toks, reason in self._run(prompt, max_tokens, spec, sampling, stop, reuse_prefix):
            parts.append(piece)
            tokens = list(toks) if reason == "stop" else tokens + toks
        stats = self.stats()
        stats.wall = time.perf_counter() - t0
        return GenerationResult("".join(parts), tokens, reason, stats)

    # -- chat -------------------------------------------------------------------------------
    def chat(self, messages: Sequence[dict], max_tokens: int | None = None, **options) -> ChatResult:
        """The assistant's reply to OpenAI-style messages: rendered with the model's chat template,
        generated, and parsed into content, reasoning and tool calls by llama.cpp's own chat code
        (see chat_stream for the options).  The messages are the whole conversation: the session's
        caches keep what they share with its rendering, so a conversation that grows turn by turn
        evaluates only its new part."""
        return self.chat_stream(messages, max_tokens, _incremental=False, **options).run()

    def chat_stream(self, messages: Sequence[dict], max_tokens: int | None = None, *,
                    tools: Sequence[dict] | None = None, tool_choice: str = "auto", thinking: bool | None = None,
                    chat_template_kwargs: dict | None = None, reasoning_effort: str | None = None,
                    parallel_tool_calls: bool | None = None, reasoning_format: str | None = None,
                    spec: SpecConfig | None = None,
                    sampling: SamplingConfig | None = None, temperature: float | None = None,
                    top_p: float | None = None, top_k: int | None = None, min_p: float | None = None,
                    seed: int | None = None, stop: str | Sequence[str] = (), _incremental: bool = True) -> ChatStream:
        """Like chat(), as a ChatStream of ChatDelta events (reasoning, content or tool-call pieces,
        as llama-server streams them); its .result is the ChatResult once the iteration ends.

        max_tokens: None runs to the end of the turn or of the context.  tools, tool_choice ("auto"
        or "none"), thinking (None: the template's default), chat_template_kwargs, reasoning_effort,
        parallel_tool_calls: see Model.chat_prompt.  spec, sampling and the shortcuts temperature,
        top_p, top_k, min_p and seed: as generate().  stop: strings that end the reply (the format's
        own extra stop strings are added)."""
        prompt = self.model.chat_prompt(messages, tools=tools, tool_choice=tool_choice, thinking=thinking,
                                        chat_template_kwargs=chat_template_kwargs, reasoning_effort=reasoning_effort,
                                        parallel_tool_calls=parallel_tool_calls, reasoning_format=reasoning_format)
        try:
            stops = [stop] if isinstance(stop, str) else list(stop)
            tokens = self.model.tokenize(prompt.prompt, add_special=True, parse_special=True)
            events = self._run(tokens, self.n_ctx if max_tokens is None else max_tokens, spec,
                               _sampling(sampling, temperature, seed, top_p, top_k, min_p),
                               [*stops, *prompt.additional_stops], True)
        except BaseException:
            prompt.close()
            raise
        return ChatStream(prompt, events, len(tokens), self.stats, _incremental)

    def _run(self, prompt, max_tokens, spec, sampling, stop, reuse=False) -> Iterator[tuple[str, list[int], str]]:
        """Yield (text piece, tokens, stop reason) per step, holding the session for the duration.
        The tokens are the step's, but with reason 'stop' every token kept since the start: tokens
        yielded before whose text lies past the stop string are dropped."""
        if not self._busy.acquire(blocking=False):
            raise SessionBusyError("this session is generating in another thread (or an unfinished stream "
                                   "holds it); use one session per thread")
        try:
            yield from self._run_locked(prompt, max_tokens, spec, sampling, stop, reuse)
        finally:
            self._busy.release()
            if self._group is None:  # a group evaluates on its engine thread, whose team stays
                lib.mtpl_release_threads()

    def _run_locked(self, prompt, max_tokens, spec, sampling, stop, reuse) -> Iterator[tuple[str, list[int], str]]:
        tokens, spec = self._prepare(prompt, max_tokens, spec)
        if sampling is None:
            sampling = GREEDY
        elif not isinstance(sampling, SamplingConfig):
            raise TypeError("sampling must be a SamplingConfig")
        stops = [s for s in stop if s]
        if any(not isinstance(s, str) for s in stop):
            raise TypeError("stop must be a sequence of str")
        pieces = self.model.pieces
        decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
        text = ""  # text emitted so far (only needed for stop strings)
        hold = max((len(s) for s in stops), default=1) - 1
        pending = ""
        emitted: list[int] = []
        for got, reason in self._steps(tokens, max_tokens, spec, sampling, reuse):
            new = decoder.decode(b"".join(pieces[t] for t in got), final=reason != "none")
            if not stops or reason == "cancelled":
                yield pending + new if stops else new, got, reason if reason != "none" else "length"
                if reason == "cancelled":
                    return
                continue
            emitted.extend(got)
            pending += new
            cut = _find_stop(text, pending, stops)
            if cut is not None:
                keep = self._trim_after_stop(emitted, text + pending[:cut])
                yield pending[:cut], emitted[:keep], "stop"
                return
            # hold back a tail that could start a stop string
            if reason != "none" or hold == 0:
                out, pending = pending, ""
            else:
                out, pending = pending[:-hold] if len(pending) > hold else "", pending[-hold:] if len(pending) > hold else pending
            text += out
            yield out, got, reason if reason != "none" else "length"
            if reason != "none":
                return

    def _trim_after_stop(self, emitted: list[int], text: str) -> int:
        """Drop from the context the tokens emitted after those that produce text
        (which ends where a stop string begins); returns how many are kept."""
        # count decoded characters as the stream decoded them (bytes that are not valid UTF-8
        # became one U+FFFD each), counting bytes the decoder still holds as flushed
        pieces = self.model.pieces
        decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
        keep, n_chars, held = 0, 0, 0
        while keep < len(emitted) and n_chars + held < len(text):
            n_chars += len(decoder.decode(pieces[emitted[keep]]))
            keep += 1
            state = decoder.getstate()
            held = len(decoder.decode(b"", final=True))
            decoder.setstate(state)
        ctx = len(self.tokens)  # the last emitted token is the context's last
        n_keep = ctx - len(emitted) + keep
        if n_keep < ctx:
            self._check(self._native(lib.mtpl_session_truncate, self._ptr(), n_keep), "truncate")
        return keep

    def _native(self, fn, *args) -> int:
        """A native call that evaluates: a group's session evaluates on the group's engine thread."""
        if self._group is None:
            return fn(*args)
        st, self._native_error = self._group._call(fn, *args)
        return st

    def _check(self, st: int, context: str) -> None:
        if st:
            _lib.raise_for(st, context, self._native_error if self._group is not None else None)


def _find_stop(done: str, pending: str, stops: list[str]) -> int | None:
    """Index in pending where the earliest stop string begins, if one is complete."""
    best = None
    window = done[-max(len(s) for s in stops):] + pending
    off = len(window) - len(pending)
    for s in stops:
        i = window.find(s)
        if i >= 0:
            cut = max(0, i - off)
            best = cut if best is None else min(best, cut)
    return best
