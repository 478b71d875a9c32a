"""What the HTTP layer asks of the engine: prepare a request (render, tokenize, check its length),
submit it, read its events, cancel it, count it.

SessionPool is the engine: N sessions on one model, each served by a worker thread, one request
per session at a time; a request goes to the idle session whose cache shares the longest prefix
with its prompt (prompt-prefix reuse across requests), or waits in a bounded queue.  With batching
"exact" or "batched" the N sessions are a Group's (mtpllama.group): the requests generating at a
time verify their drafts in one trunk pass per step, each still driven by its own worker thread.
"""
from __future__ import annotations

import asyncio
import threading
import time
from collections import deque
from collections.abc import Iterator
from dataclasses import dataclass, field

from ..chat import ChatPrompt, ChatStream
from ..config import SessionConfig, SpecConfig
from ..errors import (ChatTemplateError, ContextOverflowError, InvalidArgumentError, MtpllamaError,
                      NoChatTemplateError)
from ..model import Model, Session
from .metrics import Metrics
from .protocol import ApiError, ChatRequest, CompletionRequest


BATCHING = ("off", "exact", "batched")
"""off: a session per request, each with its own trunk passes; exact: one trunk pass per step for
every request generating, each row computed as alone (replies do not depend on the others);
batched: the same, with llama.cpp's batched kernels for passes of more than MAX_DRAFT + 1 rows."""


@dataclass
class Prepared:
    """A checked request, rendered and tokenized, ready to run."""

    request: ChatRequest | CompletionRequest
    tokens: list[int]
    prompt: ChatPrompt | None = None   # chat: the rendering and the reply's parser

    @property
    def kind(self) -> str:
        return "chat" if self.prompt is not None else "completion"


@dataclass
class CompletionResult:
    text: str
    tokens: list[int]
    stop_reason: str
    prompt_tokens: int
    stats: object


class Job:
    """One submitted request.  The worker puts events on its asyncio queue, from its own thread:
    ("delta", ChatDelta) or ("text", str) as the reply grows, then ("done", ChatResult or
    CompletionResult) or ("error", ApiError)."""

    def __init__(self, prepared: Prepared, loop: asyncio.AbstractEventLoop) -> None:
        self.prepared = prepared
        self.loop = loop
        self.events: asyncio.Queue = asyncio.Queue()
        self.t_submit = time.monotonic()
        self._lock = threading.Lock()
        self._cancelled = False
        self._session: Session | None = None

    @property
    def cancelled(self) -> bool:
        return self._cancelled

    def emit(self, kind: str, value) -> None:
        try:
            self.loop.call_soon_threadsafe(self.events.put_nowait, (kind, value))
        except RuntimeError:  # the event loop is gone (shutdown): nobody is listening
            pass

    def cancel(self) -> None:
        """Stop the request (thread-safe): a running one stops at the next step boundary."""
        with self._lock:
            self._cancelled = True
            if self._session is not None:
                self._session.cancel()

    def _attach(self, session: Session | None) -> None:
        with self._lock:
            self._session = session
            if session is not None and self._cancelled:
                session.cancel()


@dataclass
class _Worker:
    session: Session
    inbox: deque = field(default_factory=deque)
    wake: threading.Condition = field(default_factory=threading.Condition)
    tokens: list[int] = field(default_factory=list)    # the session's context after its last request
    last_used: float = 0.0
    thread: threading.Thread | None = None


def _common_prefix(a: list[int], b: list[int]) -> int:
    n = min(len(a), len(b))
    i = 0
    while i < n and a[i] == b[i]:
        i += 1
    return i


class SessionPool:
    """N sessions, one request each at a time, and a queue of at most max_queue waiting requests."""

    def __init__(self, model: Model, n_sessions: int = 1, *, session_config: SessionConfig | None = None,
                 spec: SpecConfig | None = None, mtp: bool | None = None, max_queue: int = 16,
                 step_delay: float = 0.0, batching: str = "off") -> None:
        if n_sessions < 1:
            raise ValueError("n_sessions must be >= 1")
        if batching not in BATCHING:
            raise ValueError(f"batching must be one of {', '.join(BATCHING)}, got {batching!r}")
        if max_queue < 0:
            raise ValueError("max_queue must be >= 0")
        self.model = model
        self.spec = spec
        self.max_queue = max_queue
        self.step_delay = step_delay   # test hook: seconds slept per step (cancellation tests)
        self.metrics = Metrics()
        self._lock = threading.Lock()
        self._pending: deque[Job] = deque()
        self._running: set[Job] = set()
        self._closing = False
        self._workers: list[_Worker] = []
        self.batching = batching
        self.group = None
        use_mtp = model.config.mtp if mtp is None else mtp
        if batching != "off":
            self.group = model.group(n_sessions, session_config, mtp=use_mtp, exact=batching == "exact")
            self._workers = [_Worker(s) for s in self.group.sessions]
        else:
            try:
                for _ in range(n_sessions):
                    self._workers.append(_Worker(model.session(session_config, mtp=use_mtp)))
            except BaseException:
                for w in self._workers:
                    w.session.close()
                raise
        self.n_ctx = self._workers[0].session.n_ctx
        self._idle: list[_Worker] = list(self._workers)
        for i, w in enumerate(self._workers):
            w.thread = threading.Thread(target=self._serve, args=(w,), name=f"mtpllama-session-{i}", daemon=True)
            w.thread.start()

    # -- preparing (in a thread of the web server's pool: rendering and tokenizing take time) ------
    def prepare_chat(self, req: ChatRequest) -> Prepared:
        try:
            prompt = self.model.chat_prompt(req.messages, tools=req.tools, tool_choice=req.tool_choice,
                                            chat_template_kwargs=req.chat_template_kwargs,
                                            reasoning_effort=req.reasoning_effort,
                                            parallel_tool_calls=req.parallel_tool_calls)
        except NoChatTemplateError as e:
            raise ApiError(400, f"{e} (this server's model has no chat template: use /v1/completions)",
                           code="no_chat_template") from e
        except (InvalidArgumentError, ChatTemplateError, TypeError, ValueError) as e:
            raise ApiError(400, str(e), param="messages") from e
        try:
            tokens = self.model.tokenize(prompt.prompt, add_special=True, parse_special=True)
            self._check_length(tokens)
        except BaseException:
            prompt.close()
            raise
        return Prepared(req, tokens, prompt)

    def prepare_completion(self, req: CompletionRequest) -> Prepared:
        if isinstance(req.prompt, str):
            tokens = self.model.tokenize(req.prompt, add_special=True, parse_special=True)
        else:
            n_vocab = self.model.info.n_vocab
            bad = next((t for t in req.prompt if not 0 <= t < n_vocab), None)
            if bad is not None:
                raise ApiError(400, f"token id {bad} is outside the vocabulary [0, {n_vocab})", param="prompt")
            tokens = list(req.prompt)
        if not tokens:
            raise ApiError(400, "the prompt is empty after tokenization", param="prompt")
        self._check_length(tokens)
        return Prepared(req, tokens)

    def _check_length(self, tokens: list[int]) -> None:
        if len(tokens) >= self.n_ctx:
            raise ApiError(400, f"the prompt is {len(tokens)} tokens, the context holds {self.n_ctx} (with room for "
                                f"one generated token at least)", param="messages", code="context_length_exceeded",
                           type="exceed_context_size_error")

    # -- submitting and dispatching ------------------------------------------------------------------
    def submit(self, prepared: Prepared) -> Job:
        """Start the request on an idle session, queue it, or refuse it (ApiError 503) when the queue
        is full or the server is shutting down."""
        job = Job(prepared, asyncio.get_running_loop())
        with self._lock:
            if self._closing:
                raise ApiError(503, "the server is shutting down")
            if self._idle:
                self._start(self._pick(job), job)
            elif len(self._pending) < self.max_queue:
                self._pending.append(job)
            else:
                self.metrics.rejected()
                raise ApiError(503, f"all {len(self._workers)} sessions are busy and {len(self._pending)} requests "
                                    f"wait: try again later", code="server_busy")
        return job

    def _pick(self, job: Job) -> _Worker:
        """The idle session whose context shares the longest prefix with the prompt, then (in a
        group) the one that leaves the fewest idle sessions between busy ones, then the one used
        least recently; caller holds the lock.  In a group an idle session between busy ones gets
        filler rows in every shared pass (llama.cpp evaluates consecutive sequences only in one
        graph), and a session copies a prefix another one holds (mtpl_session_adopt_prefix): where
        the first choice leaves such a gap, an idle session that leaves none takes the request if
        every token it holds is held by another session too."""
        tokens = job.prepared.tokens
        busy = [i for i, w in enumerate(self._workers) if w not in self._idle] if self.group is not None else []

        def gaps(w: _Worker) -> int:  # idle sessions between busy ones, were w busy too
            if not busy:
                return 0
            i = self._workers.index(w)
            return max(busy + [i]) - min(busy + [i]) - len(busy)

        best = max(self._idle, key=lambda w: (_common_prefix(w.tokens, tokens), -gaps(w), -w.last_used))
        if self.group is not None and gaps(best) > 0:
            def spare(w: _Worker) -> bool:  # nothing it holds is lost when its context is replaced
                held = max((_common_prefix(o.tokens, w.tokens) for o in self._workers if o is not w), default=0)
                return held >= len(w.tokens) - 1
            fits = [w for w in self._idle if gaps(w) == 0 and spare(w)]
            if fits:
                best = max(fits, key=lambda w: (_common_prefix(w.tokens, tokens), -w.last_used))
        self._idle.remove(best)
        best.tokens = list(tokens)  # what its context starts with from now on
        return best

    def _start(self, w: _Worker, job: Job) -> None:
        self._running.add(job)
        with w.wake:
            w.inbox.append(job)
            w.wake.notify()

    def _finished(self, w: _Worker, job: Job) -> None:
        with self._lock:
            self._running.discard(job)
            w.last_used = time.monotonic()
            while self._pending and not self._closing:
                nxt = self._pending.popleft()
                if not nxt.cancelled:
                    self._start(w, nxt)
                    return
                nxt.emit("error", ApiError(499, "cancelled", type="cancelled"))
            self._idle.append(w)

    # -- the worker threads -------------------------------------------------------------------------
    def _serve(self, w: _Worker) -> None:
        while True:
            with w.wake:
                while not w.inbox:
                    w.wake.wait()
                job = w.inbox.popleft()
            if job is None:
                return
            try:
                self._run(w, job)
            finally:
                self._finished(w, job)

    def _run(self, w: _Worker, job: Job) -> None:
        p = job.prepared
        if job.cancelled:
            if p.prompt is not None:
                p.prompt.close()
            job.emit("error", ApiError(499, "cancelled", type="cancelled"))
            w.tokens = w.session.tokens  # _pick assumed the job's prompt
            return
        wait = time.monotonic() - job.t_submit
        job._attach(w.session)
        try:
            result = self._run_chat(w.session, job) if p.kind == "chat" else self._run_completion(w.session, job)
            self.metrics.finished(p.kind, result.stats, len(p.tokens), len(result.tokens), wait,
                                  cancelled=result.stop_reason == "cancelled")
            job.emit("done", result)
        except ContextOverflowError as e:
            job.emit("error", ApiError(400, str(e), type="exceed_context_size_error", code="context_length_exceeded"))
        except MtpllamaError as e:
            job.emit("error", ApiError(500, f"{type(e).__name__}: {e}"))
        except Exception as e:  # a worker thread never dies of a request
            job.emit("error", ApiError(500, f"internal error: {type(e).__name__}: {e}"))
        finally:
            job._attach(None)
            if p.prompt is not None:
                p.prompt.close()
            try:
                w.tokens = w.session.tokens
            except MtpllamaError:
                w.tokens = []

    def _events(self, session: Session, job: Job, stops: list[str]) -> Iterator[tuple[str, list[int], str]]:
        """The session's steps for the job (prompt-prefix reuse on); a cancelled job stops the
        session at the next step boundary."""
        r = job.prepared.request
        events = session._run(job.prepared.tokens, r.max_tokens or self.n_ctx, self.spec, r.sampling, stops, True)
        try:
            for ev in events:
                if self.step_delay:
                    time.sleep(self.step_delay)
                yield ev
                if job.cancelled:
                    session.cancel()
        finally:
            events.close()

    def _run_chat(self, session: Session, job: Job):
        p = job.prepared
        r = p.request
        stream = ChatStream(p.prompt, self._events(session, job, [*r.stop, *p.prompt.additional_stops]),
                            len(p.tokens), session.stats, incremental=r.stream)
        try:
            for delta in stream:
                job.emit("delta", delta)
        finally:
            stream.close()
        return stream.result

    def _run_completion(self, session: Session, job: Job) -> CompletionResult:
        p = job.prepared
        parts: list[str] = []
        tokens: list[int] = []
        reason = "length"
        for piece, toks, reason in self._events(session, job, p.request.stop):
            if piece:
                parts.append(piece)
                if p.request.stream:
                    job.emit("text", piece)
            tokens = list(toks) if reason == "stop" else tokens + list(toks)
        return CompletionResult("".join(parts), tokens, reason, len(p.tokens), session.stats())

    # -- observing and stopping ------------------------------------------------------------------------
    def snapshot(self) -> dict:
        with self._lock:
            snap = {"sessions": len(self._workers), "busy": len(self._workers) - len(self._idle),
                    "queue": len(self._pending), "max_queue": self.max_queue, "batching": self.batching}
        if self.group is not None and not self.group.closed:
            snap["group"] = self.group.stats()
        return snap

    def begin_shutdown(self) -> None:
        """Refuse new requests and cancel the running and waiting ones (thread-safe)."""
        with self._lock:
            self._closing = True
            pending, self._pending = list(self._pending), deque()
            running = list(self._running)
        for job in pending:
            job.cancel()
            if job.prepared.prompt is not None:
                job.prepared.prompt.close()
            job.emit("error", ApiError(503, "the server is shutting down"))
        for job in running:
            job.cancel()

    def close(self) -> None:
        """Stop the workers (after begin_shutdown) and free the sessions."""
        self.begin_shutdown()
        for w in self._workers:
            with w.wake:
                w.inbox.append(None)
                w.wake.notify()
        for w in self._workers:
            if w.thread is not None:
                w.thread.join(timeout=30)
        alive = [w for w in self._workers if w.thread is not None and w.thread.is_alive()]
        if self.group is not None:
            if not alive:
                self.group.close()
            return
        for w in self._workers:
            if w not in alive:
                w.session.close()
