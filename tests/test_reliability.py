"""Fuzzed files, cancellation, threads, leaks."""
from __future__ import annotations

import _thread
import gc
import os
import threading
import time

import pytest

import mtpllama
from mtpllama.testing.fixtures import ONE_THREAD, PROMPTS
from mtpllama import SessionConfig, SpecConfig

FUZZ_CASES = int(os.environ.get("MTPLLAMA_FUZZ_CASES", "1500"))


@pytest.mark.slow
def test_fuzzed_files_never_crash_or_hang(model_files):
    import fuzz_gguf

    t0 = time.monotonic()
    failures = fuzz_gguf.run(model_files["glm45"], FUZZ_CASES, seed=1, batch=500, timeout_per_case=20.0)
    print(f"\n{FUZZ_CASES} fuzz cases in {time.monotonic() - t0:.1f}s, {len(failures)} crashes or hangs")
    assert not failures, failures[:5]


# --- bad arguments: one table for every public entry point --------------------------------------------------

def test_max_tokens_larger_than_context_stops_at_context(glm45):
    with glm45.session(n_ctx=64) as s:
        r = s.generate("def foo(x):", 10_000)
        assert r.stop_reason == "context"


# --- cancellation ---------------------------------------------------------------------------------------

def _cancel_after(session, delay):
    t = threading.Timer(delay, session.cancel)
    t.start()
    return t


def test_cancel_during_generation(glm45):
    with glm45.session(n_ctx=2048) as s:
        t0 = time.monotonic()
        timer = _cancel_after(s, 0.05)
        r = s.generate("def foo(x):", 1900, spec=SpecConfig(3, 0.0, adaptive=False))
        latency = time.monotonic() - t0 - 0.05
        timer.join()
        print(f"\ncancel during generation: returned {latency * 1000:.1f} ms after cancel()")
        assert r.stop_reason == "cancelled"
        assert 0 < len(r.tokens) < 1900
        assert latency < 0.5, latency
        # the context holds exactly the prompt and what was returned (plus the chosen next token)
        n_prompt = len(glm45.tokenize("def foo(x):"))
        assert s.tokens[:n_prompt + len(r.tokens)][n_prompt:] == r.tokens
        more = s.generate(" import os", 5)
        assert len(more.tokens) == 5 and more.stop_reason == "length"


def test_cancel_during_prompt_processing(model_files):
    # a bigger context and a long prompt: prompt processing takes a while
    with mtpllama.Model(model_files["glm45"], session_defaults=SessionConfig(n_threads=1, n_ctx=2048, n_batch=2048)) as m:
        with m.session() as s:
            toks = m.tokenize(" ".join(PROMPTS) * 20)[:2000]
            t0 = time.monotonic()
            s.generate(toks, 1)
            full = time.monotonic() - t0
            s.reset()
            timer = _cancel_after(s, full / 4)
            t0 = time.monotonic()
            r = s.generate(toks, 1)
            elapsed = time.monotonic() - t0
            timer.join()
            print(f"\ncancel during a {full * 1000:.0f} ms prompt pass: returned {(elapsed - full / 4) * 1000:.1f} ms "
                  f"after cancel()")
            assert r.stop_reason == "cancelled" and r.tokens == []
            assert elapsed < full * 0.9, (elapsed, full)
            s.reset()
            assert len(s.generate("x", 3).tokens) == 3


def test_keyboard_interrupt_leaves_session_usable(glm45):
    import signal

    # a background job (CI) may start with SIGINT ignored: install Python's handler for this test
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        with glm45.session(n_ctx=2048) as s:
            threading.Timer(0.01, _thread.interrupt_main).start()
            t0 = time.monotonic()
            with pytest.raises(KeyboardInterrupt):
                s.generate("def foo(x):", 2000, spec=SpecConfig(3, 0.0, adaptive=False))
            print(f"\nKeyboardInterrupt raised {(time.monotonic() - t0 - 0.01) * 1000:.1f} ms after the signal")
            n = len(s.tokens)
            assert n > len(glm45.tokenize("def foo(x):"))
            r = s.generate(" x", 4)
            assert len(r.tokens) == 4
    finally:
        signal.signal(signal.SIGINT, previous)


# --- threads --------------------------------------------------------------------------------------------

def test_two_sessions_in_two_threads(glm45):
    prompts = PROMPTS[:6]
    expected = {p: glm45.generate(p, 40, mtp=False).tokens for p in prompts}
    results: dict = {}
    errors: list = []

    def worker(idx):
        try:
            with glm45.session() as s:
                for p in prompts[idx::2]:
                    s.reset()
                    results[p] = s.generate(p, 40, spec=SpecConfig(3, 0.0)).tokens
        except Exception as e:  # pragma: no cover - reported below
            errors.append(e)

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    assert results == expected


def test_gil_is_released_during_native_calls(model_files):
    # one long native call (a 2000-token prompt in one chunk): a Python thread keeps running meanwhile
    ticks = 0
    stop = threading.Event()

    def spin():
        nonlocal ticks
        while not stop.is_set():
            ticks += 1

    with mtpllama.Model(model_files["glm45"], session_defaults=SessionConfig(n_threads=1, n_ctx=2048, n_batch=2048)) as m:
        toks = m.tokenize(" ".join(PROMPTS) * 20)[:2000]
        with m.session() as s:
            t = threading.Thread(target=spin)
            t.start()
            time.sleep(0.01)
            before = ticks
            t0 = time.monotonic()
            s.generate(toks, 1)
            during = ticks - before
            elapsed = time.monotonic() - t0
            stop.set()
            t.join()
    assert elapsed > 0.02
    assert during > 1000, (during, elapsed)


def test_one_session_from_two_threads_raises(glm45):
    with glm45.session(n_ctx=2048) as s:
        it = s.stream("def foo(x):", 1000)
        next(it)  # the stream holds the session
        with pytest.raises(mtpllama.SessionBusyError):
            s.generate("x", 3)
        with pytest.raises(mtpllama.SessionBusyError):
            s.close()
        err = []
        th = threading.Thread(target=lambda: err.append(pytest.raises(mtpllama.SessionBusyError, s.generate, "x", 2)))
        th.start()
        th.join()
        it.close()
        assert len(s.generate("x", 3).tokens) == 3


# --- leaks ----------------------------------------------------------------------------------------------

def _rss_mb() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def test_sessions_do_not_leak(glm45):
    for _ in range(20):  # warm up allocator pools
        with glm45.session(n_ctx=256) as s:
            s.generate("def foo(x):", 8, spec=SpecConfig(2, 0.0))
    gc.collect()
    before = _rss_mb()
    for i in range(200):
        with glm45.session(n_ctx=256) as s:
            s.generate(PROMPTS[i % len(PROMPTS)], 8, spec=SpecConfig(2, 0.0))
    gc.collect()
    growth = _rss_mb() - before
    print(f"\nRSS growth over 200 sessions: {growth:.1f} MiB")
    assert growth < 16, growth


def test_models_do_not_leak(model_files):
    def cycle():
        with mtpllama.Model(model_files["glm46"], session_defaults=ONE_THREAD) as m:
            m.generate("x", 4)

    for _ in range(5):
        cycle()
    gc.collect()
    before = _rss_mb()
    for _ in range(50):
        cycle()
    gc.collect()
    growth = _rss_mb() - before
    print(f"\nRSS growth over 50 model loads: {growth:.1f} MiB")
    assert growth < 16, growth
