"""Sessions: continuation, stop strings, streaming, lifetimes."""
from __future__ import annotations

import gc

import pytest

import mtpllama
from mtpllama import SpecConfig
from mtpllama.testing import hooks
from mtpllama.testing.fixtures import ONE_THREAD, PROMPTS


def test_stream_equals_generate(glm45):
    r = glm45.generate("class Stack:", 60, spec=SpecConfig(3, 0.0, adaptive=False))
    pieces = list(glm45.stream("class Stack:", 60, spec=SpecConfig(3, 0.0, adaptive=False)))
    assert "".join(pieces) == r.text
    assert len(pieces) > 1


@pytest.mark.parametrize("mtp", [False, True])
def test_continuation_matches_fresh_context(glm45, mtp):
    spec = SpecConfig(3, 0.0, adaptive=False) if mtp else None
    with glm45.session(mtp=mtp) as s:
        first = s.generate("def foo(x):", 13, spec=spec)
        second = s.generate(" import os", 17, spec=spec)
        ctx = s.tokens
    prompt = glm45.tokenize("def foo(x):") + first.tokens + glm45.tokenize(" import os")
    with glm45.session(mtp=mtp) as fresh:
        ref = fresh.generate(prompt, 17, spec=spec)
    assert second.tokens == ref.tokens
    assert ctx == prompt + ref.tokens


def test_stop_string_cuts_text_and_context(glm45):
    full = glm45.generate("def foo(x):", 40, mtp=False)
    text = full.text
    assert len(text) > 12
    stop = text[8:11]
    k = text.find(stop)
    with glm45.session() as s:
        r = s.generate("def foo(x):", 40, spec=SpecConfig(3, 0.0, adaptive=False), stop=[stop])
        assert r.stop_reason == "stop"
        assert r.text == text[:k]
        # the context ends with the tokens of the returned text (plus a chosen next token)
        ctx = s.tokens
        n_prompt = len(glm45.tokenize("def foo(x):"))
        assert glm45.detokenize(ctx[n_prompt:n_prompt + len(r.tokens)]).startswith(r.text)
        # and the session keeps working
        again = s.generate("x", 5, spec=SpecConfig(3, 0.0, adaptive=False))
        assert len(again.tokens) == 5


@pytest.mark.parametrize("n_context", [100, 1500])
def test_stop_string_costs_one_row_at_any_context(glm45, n_context):
    """A stop string cuts the context by rolling both caches back: the trunk evaluates the last
    kept token once more (for the next token's logits and the MTP head's input), whatever the
    context's length, instead of evaluating the kept context again."""
    base = glm45.tokenize("def foo(x):\n    return x + 1\n\n")
    prompt = (base * (n_context // len(base) + 1))[:n_context]
    spec = SpecConfig(3, 0.0, adaptive=False)
    with glm45.session(n_ctx=2048) as s:
        full = s.generate(prompt, 40, spec=spec)
    # a stop string that starts at a token boundary, early: the tokens after it are cut
    n_kept = next(i for i in range(3, 30) if full.text.find(glm45.detokenize(full.tokens[i:i + 2]))
                  == len(glm45.detokenize(full.tokens[:i])))
    stop = glm45.detokenize(full.tokens[n_kept:n_kept + 2])
    with glm45.session(n_ctx=2048) as s:
        s.debug_record()
        r = s.generate(prompt, 40, spec=spec, stop=[stop])
        rows = sum(e["kind"] == "trunk" for e in s.debug_events())
        st = r.stats
        assert r.stop_reason == "stop" and r.tokens == full.tokens[:n_kept]
        assert len(s.tokens) == n_context + n_kept + 1 < n_context + st.generated_tokens + 1  # cut, plus a next token
        # the prompt, one row per verification pass and per draft, and one row for the cut
        assert rows == st.prompt_tokens + (st.steps - 1) + sum(st.drafted) + 1
        # the caches stay right: continuing equals a fresh context holding the same tokens
        ctx = s.tokens[:-1]  # without the chosen next token, which the next prompt replaces
        more = s.generate(" import os", 20, spec=spec)
    with glm45.session(n_ctx=2048) as fresh:
        ref = fresh.generate(ctx + glm45.tokenize(" import os"), 20, spec=spec)
    assert more.tokens == ref.tokens


def test_eos_stops_generation(tmp_path):
    from mtpllama.testing import SyntheticSpec, synthetic_weights, train_bpe, write_synthetic

    spec = SyntheticSpec(nextn="own", seed=5, noise=0.5)
    tok = train_bpe()
    w = synthetic_weights(spec, tok)
    # make the trunk end after "x": its output row for EOS copies the one that token x selects
    x = tok.tokens.index("x")
    out = w["output.weight"]
    emb_unit = w["token_embd.weight"][x] / (w["token_embd.weight"][x] ** 2).mean() ** 0.5
    out[tok.eos_id] = emb_unit * 4.0 / spec.n_embd ** 0.5
    path = write_synthetic(tmp_path / "eos.gguf", spec, tok, w)
    with mtpllama.Model(str(path), session_defaults=ONE_THREAD) as m:
        for mtp in (False, True):
            r = m.generate("x", 20, mtp=mtp)
            assert r.stop_reason == "eos"
            assert r.tokens[-1] == m.info.token_eos
            assert m.info.token_eos not in r.tokens[:-1]


def test_context_full_stops_cleanly(glm45):
    with glm45.session(n_ctx=32) as s:
        prompt = glm45.tokenize("def foo(x):")
        r = s.generate(prompt, 100, spec=SpecConfig(4, 0.0, adaptive=False))
        assert r.stop_reason == "context"
        assert len(prompt) + len(r.tokens) == 32 + 1  # the last token is chosen but needs no cache slot
    with glm45.session(n_ctx=32) as s:
        ref = s.generate(prompt, 100, spec=SpecConfig(0, 0.0, adaptive=False))
        assert ref.tokens == r.tokens


def test_prompt_too_long_raises(glm45):
    with glm45.session(n_ctx=16) as s:
        with pytest.raises(mtpllama.ContextOverflowError):
            s.generate(list(range(40)), 4)
        assert len(s.generate([1, 2, 3], 3).tokens) == 3  # still usable


def test_lifetimes(model_files):
    m = mtpllama.Model(model_files["glm45"], session_defaults=ONE_THREAD)
    s = m.session()
    s.generate("x", 3)
    m.close()  # closes the session too
    assert s.closed and m.closed
    m.close()
    s.close()
    with pytest.raises(mtpllama.MtpllamaError, match="closed"):
        s.generate("x", 3)
    with pytest.raises(mtpllama.MtpllamaError, match="closed"):
        m.tokenize("x")


def test_session_keeps_model_alive(model_files):
    s = mtpllama.Model(model_files["glm46"], session_defaults=ONE_THREAD).session()
    import gc

    gc.collect()
    assert len(s.generate("import os", 4).tokens) == 4
    s.close()


def test_mtp_session_needs_mtp_model(model_files):
    with mtpllama.Model(model_files["glm45"], mtp=False) as m:
        with pytest.raises(mtpllama.NoMtpHeadError):
            m.session(mtp=True)
        with pytest.raises(ValueError):
            m.generate("x", 3, draft_max=2)


def test_graph_reuse_is_reported(glm45):
    """llama.cpp rebuilds a compute graph only when the batch shape changes: plain decoding
    reuses it on every step after the first, fixed-k verification too (k+1 rows each step)."""
    with glm45.session(mtp=False) as plain:
        st = plain.generate("def foo(x):", 40).stats
        assert st.trunk_calls == 40 and st.trunk_graphs_reused >= st.trunk_calls - 3
        assert st.mtp_calls == 0 and st.mtp_graphs_reused == 0
    with glm45.session() as s:
        st = s.generate("def foo(x):", 40, spec=SpecConfig(draft_max=3, draft_p_min=0.0, adaptive=False)).stats
        assert st.trunk_graphs_reused >= st.trunk_calls - 4
        # recursive drafts after the first are one-row MTP batches, as is the next step's
        assert 0 < st.mtp_graphs_reused < st.mtp_calls


def test_mtp_context_reserves_ffn_for_output_rows_only(tmp_path):
    """patches/0004: the MTP block runs its FFN on output rows only.

    An MTP batch outputs one row; its other rows only catch the MTP cache up (their K/V).
    The MTP context's compute buffer, reserved for a full batch, must therefore grow with
    n_batch by attention-sized rows, not by the routed experts' intermediates of every row.
    """
    from mtpllama.testing import SyntheticSpec, synthetic_weights, train_bpe, write_synthetic

    # a MoE head whose per-row FFN intermediates dwarf its attention rows
    spec = SyntheticSpec(n_expert=8, n_expert_used=4, n_ff_exp=512, seed=3)
    tok = train_bpe()
    path = write_synthetic(tmp_path / "wide_ffn.gguf", spec, tok, synthetic_weights(spec, tok))
    ffn_row = spec.n_expert_used * spec.n_ff_exp * 4  # bytes of one expert-FFN activation of one row

    def mtp_compute(n_batch: int) -> int:
        cfg = mtpllama.SessionConfig(n_threads=1, n_ctx=256, n_batch=n_batch)
        with m.session(mtp=True, config=cfg) as a, m.session(mtp=False, config=cfg) as b:
            return a.memory()["compute"] - b.memory()["compute"]

    with mtpllama.Model(str(path)) as m:
        small, big = mtp_compute(32), mtp_compute(256)
        # and the engine still drafts and accepts with it
        r = m.generate("def foo(x):", 40, spec=SpecConfig(3, 0.0, adaptive=False))
        plain = m.generate("def foo(x):", 40, mtp=False)
    per_row = (big - small) / (256 - 32)
    assert 0 < per_row < ffn_row, (small, big, per_row, ffn_row)
    assert r.tokens == plain.tokens and sum(r.stats.accepted) > 0


def _thp_mode() -> str | None:
    try:
        text = open("/sys/kernel/mm/transparent_hugepage/enabled").read()
    except OSError:
        return None
    return text[text.index("[") + 1:text.index("]")]


def _anon_huge_kib() -> int:
    with open("/proc/self/smaps_rollup") as f:
        for line in f:
            if line.startswith("AnonHugePages:"):
                return int(line.split()[1])
    return 0


@pytest.mark.skipif(_thp_mode() in (None, "never"), reason="no transparent huge pages here")
@pytest.mark.parametrize("dtype", ["f32", "q8_0"])
def test_weights_read_into_memory_sit_on_huge_pages(tmp_path, dtype):
    """patches/0007: with huge pages on (the default), the buffers that weights are read into are
    advised as huge pages, so the kernel backs them with 2 MiB pages; off, they stay on 4 KiB pages
    (where THP is "madvise" only advised memory gets them).  patches/0010: on a CPU with AMX the
    Q8_0 matrices live in the AMX buffer type's buffer, which must be on huge pages too (without
    the patch only the few weights the CPU buffer type holds were)."""
    from mtpllama.testing import SyntheticSpec, write_synthetic

    if dtype == "f32":
        spec = SyntheticSpec(n_embd=256, n_ff=1024, n_ff_exp=256, head_dim=64, seed=5)
    else:  # mostly dense 2-D matrices, the ones the AMX kernels multiply
        spec = SyntheticSpec(n_embd=512, n_layer=4, n_dense_lead=4, n_ff=2048, n_head=8, n_head_kv=8,
                             head_dim=64, dtype=dtype, seed=5)
    path = str(write_synthetic(tmp_path / "big.gguf", spec))
    assert mtpllama.huge_pages(), "huge pages must be on by default"

    def growth() -> tuple[int, int]:
        gc.collect()   # no other model's buffers may be freed while this one loads
        before = _anon_huge_kib()
        with mtpllama.Model(path, use_mmap=False) as m:
            return _anon_huge_kib() - before, m.info.model_bytes

    grew, weights = growth()
    assert weights >= 6 * 2**20
    # every buffer of the weights is on huge pages, but for its tail short of a whole 2 MiB page
    assert grew * 1024 >= 0.75 * weights, f"AnonHugePages grew by {grew} KiB while {weights} bytes of weights were loaded"
    if _thp_mode() == "madvise":
        try:
            mtpllama.set_huge_pages(False)
            assert not mtpllama.huge_pages()
            grew_off, _ = growth()
        finally:
            mtpllama.set_huge_pages(True)
        assert grew_off == 0


_gap_every = hooks.states_gap_every


def _checked_mtp_entries(session, head: int = 0) -> list[tuple[int, int]]:
    """An MTP cache's entries as (trunk position, token), checked: positions increase, and each
    entry pairs the context's token at its position (no entry of a discarded continuation stays)."""
    entries = hooks.mtp_entries(session, head)
    ctx = session.tokens
    assert all(a[0] < b[0] for a, b in zip(entries, entries[1:])), entries
    assert all(p < len(ctx) and ctx[p] == t for p, t in entries), (entries, ctx)
    return entries


def test_gaps_in_the_mtp_cache_keep_output_and_drafting(glm45):
    """A pass without the trunk's states leaves a gap in the MTP cache; the cache goes on at the
    next free MTP position (llama.cpp refuses a sequence whose positions jump).  Output stays plain
    output, the step after a gap cannot draft, and drafting after gaps accepts about as often as
    without them (the head's input after a gap is the trunk's state, not a stale one)."""
    spec = SpecConfig(3, 0.0, adaptive=False)
    acceptance = {}
    for every in (0, 2, 3):
        accepted = drafted = 0
        for prompt in PROMPTS[:6]:
            plain = glm45.generate(prompt, 48, mtp=False)
            with glm45.session() as s:
                _gap_every(s, every)
                r = s.generate(prompt, 48, spec=spec)
                entries = _checked_mtp_entries(s)
            assert r.tokens == plain.tokens, (every, prompt)
            assert (entries[-1][0] + 1 > len(entries)) == (every > 0)  # gaps, where passes left states out
            st = r.stats
            if every:
                gaps = st.stateless_passes
                assert gaps == (st.steps - 1) // every  # the prompt pass counts as a step
                assert st.drafts_per_step[0] >= gaps - 1  # each gap makes the next step (if any) plain
            else:
                assert st.stateless_passes == 0
            accepted, drafted = accepted + sum(st.accepted), drafted + sum(st.drafted)
        acceptance[every] = accepted / drafted
    assert acceptance[0] > 0.4
    assert min(acceptance[2], acceptance[3]) > 0.8 * acceptance[0], acceptance


def test_a_head_that_stopped_paying_keeps_a_window_of_states(tmp_path):
    """Once the adaptive controller has stopped drafting (a head that is nearly always wrong), the
    next prompt's trunk states are computed for its last 16 rows only, and the MTP cache holds no
    older position of it: keeping the head ready for a probe costs a window, not the last layer's
    work on every row.  Output stays plain output; a fixed draft length keeps the whole prompt."""
    from mtpllama.testing import SyntheticSpec, write_synthetic

    path = write_synthetic(tmp_path / "wrong.gguf", SyntheticSpec(nextn="own", noise=8.0, seed=5))
    with mtpllama.Model(str(path)) as m, m.session(ONE_THREAD) as s:
        prompts = [m.tokenize(" ".join([PROMPTS[i]] * 12)) for i in range(3)]
        for spec, idle in ((SpecConfig(draft_max=3, draft_p_min=0.0, adaptive=False), False), (SpecConfig(), True)):
            for i, p in enumerate(prompts):
                s.reset()
                s.debug_record()
                n = 160 if i == 0 else 48  # the first text teaches the controller
                r = s.generate(p, n, spec=spec)
                assert r.tokens == m.generate(p, n, mtp=False).tokens
                if i == 0:
                    continue
                with_states = sorted({e["pos"] for e in s.debug_events()
                                      if e["kind"] == "trunk" and e["pos"] < len(p) and e["h_out"] is not None})
                entries = [pos for pos, _ in _checked_mtp_entries(s)]
                assert len(p) > 40
                if idle:
                    assert with_states == list(range(len(p) - 16, len(p)))
                    assert all(pos >= len(p) - 16 for pos in entries), entries
                else:
                    assert with_states == list(range(len(p)))
                    assert entries[0] == 0
            s.debug_record(False)


def test_gaps_survive_rollbacks_into_older_segments(glm45):
    """Rolling the context back past gaps (a conversation's next request keeping a shorter prefix)
    cuts the MTP cache within the segment of entries the cut falls in; output stays plain output."""
    spec = SpecConfig(3, 0.0, adaptive=False)
    with glm45.session() as s:
        _gap_every(s, 3)
        s.generate("def foo(x):", 50, spec=spec)
        ctx = s.tokens
        for cut in (45, 30, 12, 3):  # each into what the one before kept
            prompt = ctx[:cut] + glm45.tokenize(" y = 2")
            r = s.generate(prompt, 24, spec=spec, reuse_prefix=True)
            assert r.stats.cached_tokens + r.stats.reevaluated_tokens == cut
            assert r.tokens == glm45.generate(prompt, 24, mtp=False).tokens, cut
            assert sum(r.stats.drafted) > 0
            _checked_mtp_entries(s)
            ctx = s.tokens


def test_a_finished_generation_releases_its_worker_threads(model_files):
    """A thread that has finished generating gives its CPU worker threads (its OpenMP team) back, so
    that they do not compete with another thread's: the process has as many threads after a
    2-thread generation as before it."""
    import os

    import mtpllama

    def n_threads() -> int:
        return len(os.listdir("/proc/self/task"))

    with mtpllama.Model(model_files["glm45"]) as m, m.session(mtpllama.SessionConfig(n_threads=2)) as s:
        before = n_threads()
        s.generate("def foo(x):", 8)
        assert n_threads() == before
        for piece in s.stream("import os", 8):
            during = n_threads()  # the team is there while the generation runs
            break
        assert during > before
        s.reset()
        s.generate("import os", 4)
        assert n_threads() == before
