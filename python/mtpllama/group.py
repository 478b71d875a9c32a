"""Several sequences per step: a Group's sessions share one trunk context (a KV stream each) and
verify their drafts in one trunk pass per step, so the weights are read once for all of them.

Each session is driven as a lone one (generate, stream, chat, in a thread of its own); when its
generation reaches a step, it waits until every session of the group that is generating has
reached one, and the step is evaluated for all of them (mtpl_group_step: one foreign call per
step).  A session that is still evaluating its prompt does not hold the others up: it joins the
steps when its prompt is in.

Every evaluation of a group (prompts, truncations, steps) runs on the group's engine thread: ggml's
CPU threads are an OpenMP team per calling thread, and libgomp lets idle team threads spin only
briefly once the teams together hold more threads than there are cores, so evaluations from many
threads each wake their team from sleep (here 26 instead of 36 tokens/s for one stream).
"""
from __future__ import annotations

import queue
import threading
import time
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

from . import _lib
from ._lib import CANCELLED, MAX_DRAFT, STOP_REASONS, _Closeable, ffi, lib
from .config import SamplingConfig, SessionConfig, SpecConfig
from .errors import MtpllamaError, SessionBusyError

_CAP = MAX_DRAFT + 2  # tokens a step can emit
_STRAGGLE = 0.05      # seconds a step waits for sessions in their steps that have not come yet
_IDLE = 0.2           # seconds without calls after which the engine thread releases its CPU workers


@dataclass
class GroupStats:
    """Counters of a group's shared trunk passes since it was created."""

    passes: int          # trunk passes that verified group steps
    seq_steps: int       # session steps those passes verified
    rows: int            # rows evaluated for them (pending tokens and drafts)
    pad_rows: int        # filler rows, so that every sequence of a pass has as many
    graphs: int          # graph evaluations the passes took (one per pass when the sequences are consecutive)
    t_pass: float        # seconds in those passes
    capped: int = 0      # session steps whose draft length the group capped below their draft_max

    @property
    def sequences_per_pass(self) -> float:
        return self.seq_steps / self.passes if self.passes else 0.0


class Group(_Closeable):
    """n sessions on one trunk context (Model.group).  exact=True (the default): every row of a
    shared pass is computed as it would be alone, so a sequence's output does not depend on which
    others share its steps; exact=False lets llama.cpp's batched kernels take passes of more than
    MAX_DRAFT + 1 rows (faster on some weight types, and a sequence's output may then depend on
    its company in the last bits).  cap_drafts=True (the default): the group caps its sessions' draft
    lengths per step at what gives the most tokens per second for so many sessions (learned as it
    goes; a lone session is not capped); False: each drafts as its SpecConfig says.  Architectures
    with a recurrent trunk state are not supported."""

    def __init__(self, model, n: int, config: SessionConfig | None = None, *, mtp: bool | None = None,
                 exact: bool = True, cap_drafts: bool = True) -> None:
        from .model import Session

        self._handle = ffi.NULL
        if isinstance(n, bool) or not isinstance(n, int):
            raise TypeError("n must be an int")
        self.model = model
        self.config = config or model.session_defaults
        self.mtp = model.config.mtp if mtp is None else bool(mtp)
        self.exact = bool(exact)
        params = ffi.new("mtpl_group_params *")
        params.session.n_ctx = self.config.n_ctx
        params.session.n_batch = self.config.n_batch
        params.session.n_threads = self.config.n_threads
        params.session.mtp = int(self.mtp)
        params.n_seq = n
        params.exact = int(self.exact)
        params.no_cap = int(not cap_drafts)
        out = ffi.new("mtpl_group **")
        _lib.check(lib.mtpl_group_new(model._ptr(), params, out), "group")
        self._handle = out[0]
        model._groups.add(self)
        self.sessions: list[Session] = []
        for i in range(n):
            h = ffi.new("mtpl_session **")
            _lib.check(lib.mtpl_group_session(self._handle, i, h))
            self.sessions.append(Session(model, self.config, self.mtp, _group=self, _handle=h[0]))
        self._cond = threading.Condition()
        self._active: set = set()      # sessions in their steps
        self._waiting: dict = {}       # session -> tokens it may still emit
        self._results: dict = {}
        self._firing = False
        self._since = 0.0              # when the first session of the next step came
        self._hold: set = set()        # sessions about to join: steps wait for them (generate_many)
        self._calls: queue.SimpleQueue = queue.SimpleQueue()
        # the thread holds the queue, not the group: a group nobody closes is still collected (and closed)
        self._engine = threading.Thread(target=_serve_calls, args=(self._calls,), name="mtpllama-group-engine",
                                        daemon=True)
        self._engine.start()

    def _ptr(self):
        if self._handle == ffi.NULL:
            raise MtpllamaError("the group is closed")
        return self._handle

    @property
    def closed(self) -> bool:
        return self._handle == ffi.NULL

    def close(self) -> None:
        """Free the group and its sessions.  Safe to call twice; raises SessionBusyError while one
        of them generates."""
        if self._handle == ffi.NULL:
            return
        held = []
        try:
            for s in self.sessions:
                if not s._busy.acquire(blocking=False):
                    raise SessionBusyError("cannot close a group while one of its sessions is generating")
                held.append(s)
            _lib.check(lib.mtpl_group_free(self._handle))
            self._handle = ffi.NULL
            self._calls.put(None)
            for s in self.sessions:
                s._handle = ffi.NULL
            self.model._groups.discard(self)
        finally:
            for s in held:
                s._busy.release()

    def stats(self) -> GroupStats:
        st = ffi.new("mtpl_group_stats *")
        _lib.check(lib.mtpl_group_get_stats(self._ptr(), st))
        return GroupStats(st.n_passes, st.n_seq_steps, st.n_rows, st.n_pad_rows, st.n_ubatches, st.t_pass_s,
                          st.n_capped)

    # -- generation -------------------------------------------------------------------------
    def generate_many(self, prompts: Sequence[str | Sequence[int]], max_tokens: int | Sequence[int] = 128, *,
                      spec: SpecConfig | None = None,
                      sampling: SamplingConfig | Sequence[SamplingConfig] | None = None,
                      stop: Sequence[str] = ()) -> list:
        """Complete each prompt from a fresh context, on sessions 0..len(prompts)-1, all at once:
        a list of GenerationResult in the prompts' order.  max_tokens and sampling: one for all, or
        one per prompt (e.g. a seed each)."""
        prompts = list(prompts)
        if len(prompts) > len(self.sessions):
            raise ValueError(f"{len(prompts)} prompts for a group of {len(self.sessions)} sessions")
        limits = [max_tokens] * len(prompts) if isinstance(max_tokens, int) else list(max_tokens)
        if len(limits) != len(prompts):
            raise ValueError("max_tokens: one int, or one per prompt")
        samplings = [sampling] * len(prompts) if sampling is None or isinstance(sampling, SamplingConfig) \
            else list(sampling)
        if len(samplings) != len(prompts):
            raise ValueError("sampling: one SamplingConfig, or one per prompt")

        def run(i: int):
            s = self.sessions[i]
            try:
                s.reset()
                return s.generate(prompts[i], limits[i], spec=spec, sampling=samplings[i], stop=stop)
            finally:
                self._release(s)

        if not prompts:
            return []
        with self._cond:  # the first steps wait until every prompt is in
            self._hold.update(self.sessions[:len(prompts)])
        with ThreadPoolExecutor(max_workers=len(prompts), thread_name_prefix="mtpllama-group") as pool:
            return list(pool.map(run, range(len(prompts))))

    # -- the engine thread ------------------------------------------------------------------------
    def _on_engine(self, fn):
        """fn(), evaluated on the engine thread."""
        if threading.current_thread() is self._engine:
            return fn()
        box: list = []
        done = threading.Event()
        self._calls.put((fn, box, done))
        done.wait()
        ok, value = box[0]
        if not ok:
            raise value
        return value

    def _call(self, fn, *args) -> tuple[int, str]:
        """(status, native error text) of fn(*args), evaluated on the engine thread."""
        def run():
            st = fn(*args)
            return st, _lib.last_error() if st else ""
        return self._on_engine(run)

    # -- the steps (called from Session._steps, in each session's thread) ------------------------
    def _release(self, session) -> None:
        with self._cond:
            self._hold.discard(session)
            self._cond.notify_all()

    def _steps_of(self, session, max_tokens: int) -> Iterator[tuple[list[int], str]]:
        with self._cond:
            self._active.add(session)
            self._hold.discard(session)
        try:
            remaining = max_tokens
            while remaining > 0:
                st, got, stop = self._step(session, remaining)
                if st == CANCELLED:
                    yield [], "cancelled"
                    return
                if st:
                    raise st if isinstance(st, BaseException) else MtpllamaError(f"status {st}")
                remaining -= len(got)
                yield got, stop
                if stop != "none":
                    return
        finally:
            with self._cond:
                self._active.discard(session)
                self._waiting.pop(session, None)
                self._cond.notify_all()

    def _step(self, session, remaining: int):
        cond = self._cond
        with cond:
            if not self._waiting:
                self._since = time.monotonic()
            self._waiting[session] = remaining
            cond.notify_all()
            while session not in self._results:
                # every session in its steps has come, or the first came _STRAGGLE seconds ago (a
                # stream its reader left unread must not hold the others up)
                waited = time.monotonic() - self._since
                ready = not self._hold and all(a in self._waiting for a in self._active)
                if not self._firing and (ready or waited > _STRAGGLE):
                    batch, self._waiting = self._waiting, {}
                    self._firing = True
                    cond.release()
                    try:
                        results = self._on_engine(lambda: self._native_step(batch))
                    except BaseException as e:  # every session of the step gets the failure
                        results = {s: (e, [], "none") for s in batch}
                    finally:
                        cond.acquire()
                        self._firing = False
                        if self._waiting:
                            self._since = time.monotonic()
                    self._results.update(results)
                    cond.notify_all()
                else:
                    cond.wait(None if self._firing else max(0.001, _STRAGGLE - waited))
            return self._results.pop(session)

    def _native_step(self, batch: dict) -> dict:
        sessions = list(batch)
        n = len(sessions)
        handles = ffi.new("mtpl_session *[]", [s._ptr() for s in sessions])
        n_max = ffi.new("int32_t[]", [batch[s] for s in sessions])
        out = ffi.new("int32_t[]", n * _CAP)
        res = ffi.new("mtpl_step_result[]", n)
        status = ffi.new("int32_t[]", n)
        rc = lib.mtpl_group_step(self._ptr(), n, handles, n_max, out, _CAP, res, status)
        if rc and all(status[i] == 0 for i in range(n)):  # the call itself was refused
            _lib.raise_for(rc, "generate")
        results = {}
        for i, s in enumerate(sessions):
            st = status[i]
            if st and st != CANCELLED:
                try:
                    _lib.raise_for(st, "generate")
                except MtpllamaError as e:
                    st = e
            results[s] = (st, ffi.unpack(out + i * _CAP, res[i].n_tokens), STOP_REASONS[res[i].stop])
        return results


def _serve_calls(calls: queue.SimpleQueue) -> None:
    """A group's engine thread: run the calls handed to it until None arrives.  Idle for _IDLE
    seconds, it gives its CPU worker threads back (as a lone session's thread does after a
    generation): another thread's evaluations, another group's included, then run unthrottled."""
    busy = False
    while True:
        try:
            item = calls.get(timeout=_IDLE) if busy else calls.get()
        except queue.Empty:
            lib.mtpl_release_threads()
            busy = False
            continue
        busy = True
        if item is None:
            return
        fn, box, done = item
        try:
            box.append((True, fn()))
        except BaseException as e:  # raised again in the caller
            box.append((False, e))
        done.set()
        item = fn = box = done = None  # nothing here keeps the group alive between calls
