"""Several sequences per step (mtpllama.Group): a group's sessions share one trunk context, a KV
stream each, and verify every sequence's drafts in one trunk pass.

In the exact mode a sequence's output must not depend on which others share its steps: every
test here compares a group's outputs (and, where it says so, its trunk logits bit for bit) with
the same prompts generated alone.  The batched mode's rows differ (the comparison has power).
"""
from __future__ import annotations

import threading
import time

import numpy as np
import pytest

import mtpllama
from mtpllama import InvalidArgumentError, SamplingConfig, SessionConfig, SpecConfig
from mtpllama._lib import ffi, lib
from mtpllama.testing.fixtures import PROMPTS

CFG = SessionConfig(n_threads=1, n_ctx=512)
FIXED3 = SpecConfig(draft_max=3, draft_p_min=0.0, adaptive=False)
LENGTHS = [40, 24, 56, 32, 48, 16, 64, 36]


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    """One small file per weight type: test_batch_invariance's."""
    from test_batch_invariance import write_files

    return write_files(tmp_path_factory.mktemp("group"))


def alone(model, prompts, lengths, spec, mtp=True, sampling=None):
    with model.session(CFG, mtp=mtp) as s:
        out = []
        for p, n in zip(prompts, lengths):
            s.reset()
            out.append(s.generate(p, n, spec=spec if mtp else None, sampling=sampling).tokens)
        return out


@pytest.mark.parametrize("spec", [SpecConfig(), FIXED3], ids=["defaults", "k3"])
def test_one_to_eight_sequences_equal_alone(files, spec):
    """1..8 sequences of different lengths (they leave the steps one by one): each sequence's greedy
    output equals its plain output alone, and its MTP output alone."""
    with mtpllama.Model(files["q8_0"]) as m:
        prompts = PROMPTS[:8]
        plain = alone(m, prompts, LENGTHS, None, mtp=False)
        assert alone(m, prompts, LENGTHS, spec) == plain
        for n in range(1, 9):
            with m.group(n, CFG) as g:
                got = [r.tokens for r in g.generate_many(prompts[:n], LENGTHS[:n], spec=spec)]
                st = g.stats()
            assert got == plain[:n], n
            assert st.passes > 0 and st.seq_steps >= st.passes
            if n > 1:
                assert st.passes <= 0.8 * st.seq_steps, st  # the steps were shared


def trunk_logits(session) -> dict:
    """{(pos, token): logits} of the rows the trunk output in the recorded generation."""
    return {(e["pos"], e["token"]): e["logits"] for e in session.debug_events()
            if e["kind"] == "trunk" and e["logits"] is not None}


def group_rows(model, prompts, lengths, exact: bool):
    """Trunk logits of each sequence generated in one group (k=3 drafts uncapped, 8 sequences: passes
    of up to 32 rows)."""
    with model.group(len(prompts), CFG, exact=exact, cap_drafts=False) as g:
        for s in g.sessions:
            s.debug_record()
        g.generate_many(prompts, lengths, spec=FIXED3)
        return [trunk_logits(s) for s in g.sessions]


def lone_rows(model, prompts, lengths):
    with model.session(CFG, mtp=False) as s:
        out = []
        for p, n in zip(prompts, lengths):
            s.reset()
            s.debug_record()
            s.generate(p, n)
            out.append(trunk_logits(s))
        return out


def compare_rows(grouped, lone) -> tuple[int, int]:
    same = diff = 0
    for g, l in zip(grouped, lone):
        for key, logits in g.items():
            if key in l:
                if np.array_equal(logits, l[key]):
                    same += 1
                else:
                    diff += 1
    return same, diff


@pytest.mark.parametrize("dtype", ["f32", "f16", "q8_0", "q4_0", "q4_k"])
def test_exact_group_rows_equal_lone_rows(files, dtype):
    """Exact mode: every trunk row of a shared pass (up to 8 x 4 rows) has the bits of plain
    decoding's lone row at that position, for each weight type."""
    with mtpllama.Model(files[dtype]) as m:
        prompts, lengths = PROMPTS[:8], [32] * 8
        same, diff = compare_rows(group_rows(m, prompts, lengths, exact=True), lone_rows(m, prompts, lengths))
    assert same >= 100 and diff == 0, (same, diff)


def test_batched_mode_rows_differ(files):
    """The comparison has power: in the batched mode, passes of more than MAX_DRAFT + 1 rows take
    llama.cpp's batched f32 kernels, whose rows differ from lone rows in the last bits."""
    with mtpllama.Model(files["f32"]) as m:
        prompts, lengths = PROMPTS[:8], [32] * 8
        same, diff = compare_rows(group_rows(m, prompts, lengths, exact=False), lone_rows(m, prompts, lengths))
    assert diff > 0, (same, diff)


def test_sequences_join_and_leave(files):
    """Continuous batching: sequences start while another is mid-generation (their prompts are
    evaluated between its steps) and end at different times; each output equals alone."""
    with mtpllama.Model(files["q8_0"]) as m:
        prompts = PROMPTS[8:16]
        lengths = [160] + LENGTHS[1:]
        expect = alone(m, prompts, lengths, FIXED3)
        got: dict[int, list[int]] = {}
        joined = [threading.Event() for _ in range(8)]
        with m.group(8, CFG) as g:
            def first():
                for n, _piece in enumerate(g.sessions[0].stream(prompts[0], lengths[0], spec=FIXED3)):
                    if n % 3 == 0 and n // 3 < 8:
                        joined[n // 3].set()  # the next sequence joins now
                        time.sleep(0.005)
                got[0] = g.sessions[0].tokens

            def run(i):
                joined[i].wait(30)
                got[i] = g.sessions[i].generate(prompts[i], lengths[i], spec=FIXED3).tokens

            threads = [threading.Thread(target=first)] + [threading.Thread(target=run, args=(i,)) for i in range(1, 8)]
            for t in threads:
                t.start()
            for t in threads:
                t.join()
            st = g.stats()
    assert [got[i] for i in range(1, 8)] == expect[1:]
    assert got[0][-len(expect[0]):] == expect[0]  # the context ends with the generated tokens
    assert st.sequences_per_pass > 1.5, st


def test_sampled_sequences_equal_alone(files):
    """Seeded sampling with coupled verification (keyed by seed and position: the output does not
    depend on draft lengths, which the group caps): a sampled sequence in a group equals the same
    request alone, token for token."""
    coupled = SpecConfig(draft_max=3, draft_p_min=0.0, adaptive=False, verify="coupled")
    with mtpllama.Model(files["q8_0"]) as m:
        prompts = PROMPTS[:4]
        sampling = [SamplingConfig(temperature=0.9, seed=100 + i) for i in range(4)]
        expect = []
        with m.session(CFG) as s:
            for p, smp in zip(prompts, sampling):
                s.reset()
                expect.append(s.generate(p, 40, spec=coupled, sampling=smp).tokens)
        got = {}
        with m.group(4, CFG) as g:
            def run(i):
                got[i] = g.sessions[i].generate(prompts[i], 40, spec=coupled, sampling=sampling[i]).tokens

            threads = [threading.Thread(target=run, args=(i,)) for i in range(4)]
            g._hold.update(g.sessions)
            for t in threads:
                t.start()
            for t in threads:
                t.join()
            st = g.stats()
    assert [got[i] for i in range(4)] == expect
    assert st.capped > 0  # the group chose other draft lengths than the sessions asked for


def test_cancelling_one_sequence_leaves_the_others(files):
    """A cancelled session stops at its next step ('cancelled'); the others go on and finish as
    they would alone; the cancelled session generates again afterwards."""
    with mtpllama.Model(files["q8_0"]) as m:
        prompts = PROMPTS[:4]
        expect = alone(m, prompts, [200] * 4, FIXED3)
        with m.group(4, CFG) as g:
            results = {}

            def gen(i):
                results[i] = g.sessions[i].generate(prompts[i], 200, spec=FIXED3)

            threads = [threading.Thread(target=gen, args=(i,)) for i in range(4)]
            for t in threads:
                t.start()
            time.sleep(0.05)
            g.sessions[0].cancel()
            for t in threads:
                t.join()
            assert results[0].stop_reason == "cancelled"
            assert len(results[0].tokens) < len(expect[0])
            assert [results[i].tokens for i in (1, 2, 3)] == expect[1:]
            g.sessions[0].reset()
            assert g.sessions[0].generate(prompts[0], 200, spec=FIXED3).tokens == expect[0]


@pytest.mark.parametrize("drafting_pays", [True, False])
def test_a_group_where_drafting_does_not_pay_keeps_a_window_of_states(files, drafting_pays):
    """Where the group's draft cap found that drafting does not pay for so many sessions, a prompt's
    trunk states are computed for its last rows only (every other row's would cost the trunk's last
    layer), and between probes the MTP head keeps a window of recent states instead of catching up.
    Output stays plain output either way; where drafting pays, the head knows the whole prompt."""
    from mtpllama.testing import hooks

    with mtpllama.Model(files["q8_0"]) as m:
        prompts = [m.tokenize(" ".join([PROMPTS[i]] * 16)) for i in range(4)]
        plain = alone(m, prompts, [40] * 4, None, mtp=False)
        with m.group(4, CFG) as g:
            for n in (2, 4):  # cap 0 against cap 1, for the buckets a group filling up to 4 steps in
                hooks.group_cap_rates(g, n, [50.0, 100.0] if drafting_pays else [100.0, 50.0])
            for s in g.sessions:
                s.debug_record()
            for _ in range(2):  # the second round's prompts know how many sessions step together
                got = g.generate_many(prompts, 40, spec=FIXED3)
                assert [r.tokens for r in got] == plain
            capped = g.stats().capped
            for s, p, r in zip(g.sessions, prompts, got):
                n_prompt = len(p)
                last_call = {}
                for e in s.debug_events():
                    if e["kind"] == "trunk" and e["pos"] < n_prompt:
                        last_call[e["pos"]] = e
                with_states = sorted(pos for pos, e in last_call.items() if e["h_out"] is not None)
                assert n_prompt > 40
                if drafting_pays:
                    assert with_states == list(range(n_prompt))
                    assert hooks.mtp_entries(s)[0][0] == 0  # the head's cache starts at the prompt's start
                else:
                    assert with_states == list(range(n_prompt - 16, n_prompt))
                    entries = [pos for pos, _ in hooks.mtp_entries(s)]
                    assert entries and min(entries) >= n_prompt - 16, entries
                    assert sum(r.stats.drafted) > 0  # the cap's probes drafted from the window
        assert (capped > 100) != drafting_pays, capped


def test_an_idle_group_releases_its_worker_threads(files):
    """A group's engine thread, idle for a moment, gives its CPU worker threads back: two groups (or a
    group and a session) used one after the other in one process do not leave more spinning threads
    than there are cores, which throttled the next one's evaluations."""
    import os

    from mtpllama import group as group_mod

    def n_threads() -> int:
        return len(os.listdir("/proc/self/task"))

    cfg = SessionConfig(n_threads=2, n_ctx=512)
    with mtpllama.Model(files["q8_0"]) as m, m.group(2, cfg) as g:
        idle = n_threads()  # the engine thread is there, its workers not yet
        g.generate_many(PROMPTS[:2], 8)
        assert n_threads() > idle  # the team, right after the steps
        deadline = time.monotonic() + 20 * group_mod._IDLE
        while n_threads() > idle and time.monotonic() < deadline:
            time.sleep(group_mod._IDLE / 4)
        assert n_threads() == idle
        assert [r.tokens for r in g.generate_many(PROMPTS[:2], 8)] == alone(m, PROMPTS[:2], [8, 8], SpecConfig())


def test_prefix_reuse_in_a_group(files):
    """A group's session keeps its context between requests: a request that extends the last one
    evaluates only its new tokens, and the output equals a fresh context's."""
    with mtpllama.Model(files["q8_0"]) as m:
        first = m.tokenize(PROMPTS[3])
        with m.session(CFG) as s:
            r1 = s.generate(first, 20, spec=FIXED3)
            s.reset()
            second = first + r1.tokens + m.tokenize(" and")
            expect = s.generate(second, 20, spec=FIXED3).tokens
        with m.group(2, CFG) as g:
            s = g.sessions[1]
            assert s.generate(first, 20, spec=FIXED3, reuse_prefix=True).tokens == r1.tokens
            r2 = s.generate(second, 20, spec=FIXED3, reuse_prefix=True)
            assert r2.tokens == expect
            assert r2.stats.cached_tokens >= len(first) + len(r1.tokens) - 2


@pytest.mark.parametrize("mtp", [True, False], ids=["mtp", "plain"])
def test_a_session_takes_a_prefix_from_another_sessions_cache(files, mtp):
    """A session whose own cache lacks the prompt copies the longest prefix another session of its
    group holds, evaluates only the rest, and generates what a fresh context would."""
    spec = FIXED3 if mtp else None
    with mtpllama.Model(files["q8_0"]) as m:
        first = m.tokenize(PROMPTS[3])
        with m.session(CFG, mtp=mtp) as s:
            r1 = s.generate(first, 20, spec=spec)
            s.reset()
            second = first + r1.tokens + m.tokenize(" and")
            expect = s.generate(second, 20, spec=spec).tokens
        with m.group(3, CFG, mtp=mtp) as g:
            a, b, c = g.sessions
            assert a.generate(first, 20, spec=spec, reuse_prefix=True).tokens == r1.tokens
            r2 = b.generate(second, 20, spec=spec, reuse_prefix=True)
            assert r2.tokens == expect
            assert r2.stats.cached_tokens >= len(first) + len(r1.tokens) - 2
            assert r2.stats.prompt_tokens <= 3
            # a prompt that shares only a few tokens with any cache is evaluated whole
            r3 = c.generate(first[:3] + m.tokenize(" zebra"), 8, spec=spec, reuse_prefix=True)
            assert r3.stats.cached_tokens == 0


def test_a_session_takes_a_prefix_from_a_busy_session(files):
    """The other session may be generating: its cache entries up to its last step are copied (the
    copy runs between the group's passes), and the output equals a fresh context's."""
    with mtpllama.Model(files["q8_0"]) as m:
        first = m.tokenize(PROMPTS[1])
        with m.session(CFG) as s:
            cont = s.generate(first, 8, spec=FIXED3).tokens  # what the busy session holds soon
            prompt = first + cont[:6] + m.tokenize(" so")
            s.reset()
            expect = s.generate(prompt, 16, spec=FIXED3).tokens
        with m.group(2, CFG) as g:
            a, b = g.sessions
            seen: list[int] = []
            started = threading.Event()

            def run_a():
                for piece in a.stream(first, 200, spec=FIXED3, reuse_prefix=True):
                    seen.append(len(piece))
                    if len(seen) >= 8:
                        started.set()

            t = threading.Thread(target=run_a)
            t.start()
            assert started.wait(60)
            r = b.generate(prompt, 16, spec=FIXED3, reuse_prefix=True)
            busy = t.is_alive()
            t.join()
        assert busy
        assert r.tokens == expect
        assert r.stats.cached_tokens >= len(first) + 6 - 2


def test_group_refusals(files, tmp_path):
    """Bad sizes, a recurrent architecture, a session freed on its own, a session of another group:
    clear errors, nothing crashes; closing the model closes its groups."""
    from mtpllama.testing.arch import qwen35

    m = mtpllama.Model(files["f32"])
    for n in (0, -1, 65):
        with pytest.raises(InvalidArgumentError, match="n_seq"):
            m.group(n, CFG)
    with pytest.raises(TypeError):
        m.group(2.0, CFG)
    g1, g2 = m.group(2, CFG), m.group(1, CFG)
    assert lib.mtpl_session_free(g1.sessions[0]._ptr()) == lib.MTPL_ERR_INVALID_ARGUMENT
    assert "free the group" in ffi.string(lib.mtpl_last_error()).decode()
    g1.sessions[0].generate("x", 4)  # still usable
    handles = ffi.new("mtpl_session *[]", [g1.sessions[0]._ptr(), g2.sessions[0]._ptr()])
    n_max = ffi.new("int32_t[]", [4, 4])
    out = ffi.new("int32_t[]", 2 * (lib.MTPL_MAX_DRAFT + 2))
    res, status = ffi.new("mtpl_step_result[]", 2), ffi.new("int32_t[]", 2)
    assert lib.mtpl_group_step(g1._ptr(), 2, handles, n_max, out, lib.MTPL_MAX_DRAFT + 2, res, status) == \
        lib.MTPL_ERR_INVALID_ARGUMENT
    twice = ffi.new("mtpl_session *[]", [g1.sessions[0]._ptr(), g1.sessions[0]._ptr()])
    assert lib.mtpl_group_step(g1._ptr(), 2, twice, n_max, out, lib.MTPL_MAX_DRAFT + 2, res, status) == \
        lib.MTPL_ERR_INVALID_ARGUMENT
    with pytest.raises(ValueError):
        g2.generate_many(["a", "b"], 4)
    m.close()
    assert g1.closed and g2.closed and g1.sessions[1].closed
    path = qwen35.write_synthetic(tmp_path / "qwen35.gguf")
    with mtpllama.Model(path) as q:
        with pytest.raises(InvalidArgumentError, match="recurrent"):
            q.group(2, CFG)


def test_idle_sequence_between_two_is_untouched(files):
    """Sessions 0 and 2 step together while session 1, between them, holds a context: the pass is
    one graph (session 1 gets filler rows after its context, dropped afterwards), and session 1
    continues its context afterwards exactly as alone."""
    with mtpllama.Model(files["q8_0"]) as m:
        with m.session(CFG) as s:
            first = s.generate(PROMPTS[5], 12, spec=FIXED3).tokens
            expect_more = s.generate(" and", 12, spec=FIXED3).tokens  # continues the context
        expect = alone(m, [PROMPTS[0], PROMPTS[2]], [40, 40], FIXED3)
        with m.group(3, CFG) as g:
            assert g.sessions[1].generate(PROMPTS[5], 12, spec=FIXED3).tokens == first
            before = g.stats()
            got = {}

            def run(i):
                got[i] = g.sessions[i].generate(PROMPTS[i], 40, spec=FIXED3).tokens

            threads = [threading.Thread(target=run, args=(i,)) for i in (0, 2)]
            g._hold.update([g.sessions[0], g.sessions[2]])  # start together (as generate_many does)
            for t in threads:
                t.start()
            for t in threads:
                t.join()
            st = g.stats()
            assert [got[0], got[2]] == expect
            assert g.sessions[1].generate(" and", 12, spec=FIXED3).tokens == expect_more
    shared = st.passes - before.passes
    assert shared > 0 and st.graphs - before.graphs == shared, (before, st)
    assert st.pad_rows - before.pad_rows >= shared  # session 1's filler rows


@pytest.mark.slow
def test_group_sampling_keeps_the_distribution(model_files):
    """Rejection sampling in a group, with the group's draft cap changing the draft lengths and
    without it: the joint distribution of the first 4 tokens is plain sampling's (two-sample
    chi-square, 8,000 samples a side, p > 1e-3); the same test catches a verifier that accepts
    every draft (uncapped: 3 drafts a step)."""
    from collections import Counter

    from mtpllama.testing.hooks import spec_with_verify
    from mtpllama.testing.stats import two_sample_chi2

    n, prompt = 8000, [40, 41, 42, 43]
    cfg = dict(temperature=1.0, top_k=4)
    with mtpllama.Model(model_files["glm45"]) as m:
        plain: Counter = Counter()
        with m.session(CFG, mtp=False) as s:
            for i in range(n):
                s.reset()
                plain[tuple(s.generate(prompt, 4, sampling=SamplingConfig(**cfg, seed=1 + i)).tokens)] += 1

        def grouped(spec, seed0, cap=True) -> tuple[Counter, int]:
            out: Counter = Counter()
            drafted = 0
            with m.group(8, CFG, cap_drafts=cap) as g:
                for b in range(n // 8):
                    smp = [SamplingConfig(**cfg, seed=seed0 + 8 * b + j) for j in range(8)]
                    for r in g.generate_many([prompt] * 8, 4, spec=spec, sampling=smp):
                        out[tuple(r.tokens)] += 1
                        drafted += sum(r.stats.drafted)
                st = g.stats()
                assert st.sequences_per_pass > 4 and (st.capped > 0) == cap
            return out, drafted

        fixed = SpecConfig(3, 0.0, adaptive=False)
        capped, drafted = grouped(fixed, 10**6)
        assert drafted > 100  # some drafts went through (the cap is chosen before drafting, from past steps)
        stat, df, p = two_sample_chi2(plain, capped)
        assert df >= 10 and p > 1e-3, f"capped: chi2={stat:.1f} df={df} p={p:.2e}"
        uncapped, drafted = grouped(fixed, 3 * 10**6, cap=False)
        assert drafted > n
        stat, df, p = two_sample_chi2(plain, uncapped)
        assert p > 1e-3, f"uncapped: chi2={stat:.1f} df={df} p={p:.2e}"
        biased = grouped(spec_with_verify(fixed, "test_accept_all"), 2 * 10**6, cap=False)[0]
        stat, df, p = two_sample_chi2(plain, biased)
        assert p < 1e-6, f"power: chi2={stat:.1f} df={df} p={p:.2e}"


def test_server_request_takes_a_session_next_to_the_busy_ones(files):
    """The server's pool over a group: a new request goes to an idle session next to the busy ones,
    not to the one used least recently, where it would leave idle sessions between busy ones (each
    gets filler rows in every shared pass); a session holding a prefix of the prompt comes first,
    unless it leaves a gap and a session next to the busy ones holds nothing another does not (it
    copies the prefix)."""
    import asyncio

    from mtpllama.server.engine import Job, Prepared, SessionPool

    loop = asyncio.new_event_loop()
    with mtpllama.Model(files["q8_0"]) as m:
        pool = SessionPool(m, 4, session_config=CFG, batching="exact")
        try:
            w = pool._workers
            with pool._lock:
                pool._idle.remove(w[0])  # session 0 generates
                for i, t in ((1, 3.0), (2, 2.0), (3, 1.0)):  # session 3 used least recently
                    w[i].last_used = t
                prompt = list(range(10, 40))

                def pick():
                    held = [x.tokens for x in w]
                    got = pool._pick(Job(Prepared(None, prompt), loop))
                    assert got.tokens == prompt
                    pool._idle.append(got)
                    for x, t in zip(w, held):
                        x.tokens = t
                    return pool._workers.index(got)

                assert pick() == 1
                w[1].tokens = w[2].tokens = [7, 8]
                assert pick() == 1
                w[3].tokens = prompt[:5]  # session 3 holds 5 tokens of the prompt, two idle ones away
                assert pick() == 1        # session 2 holds what session 1 does
                w[1].tokens = [7, 8, 9, 6]
                assert pick() == 3        # session 1 alone holds its tokens
        finally:
            pool.begin_shutdown()
            pool.close()
    loop.close()
