"""Checks every architecture with several NextN blocks runs (tests/test_arch_hy_v3.py,
tests/test_arch_mimo2.py): which block drafts which position, each block's cache kept in step
lazily and after rollbacks (csrc/draft.h), the catching up of a block left behind, memory."""
from __future__ import annotations

import numpy as np

import mtpllama
from mtpllama import SpecConfig
from mtpllama.testing import hooks
from mtpllama.testing.bpe import train_bpe
from mtpllama.testing.fixtures import ONE_THREAD, PROMPTS


def acceptance(path: str, k: int = 5) -> tuple[np.ndarray, np.ndarray]:
    """Drafts made and accepted per position, fixed draft length k, 10 prompts x 48 tokens."""
    drafted = np.zeros(k, int)
    accepted = np.zeros(k, int)
    with mtpllama.Model(path, session_defaults=ONE_THREAD) as m:
        for prompt in PROMPTS[:10]:
            st = m.generate(prompt, 48, spec=SpecConfig(k, 0.0, adaptive=False)).stats
            drafted += (list(st.drafted) + [0] * k)[:k]
            accepted += (list(st.accepted) + [0] * k)[:k]
    return drafted, accepted


def check_each_head_drafts_its_position(good: str, broken1: str, broken2: str) -> None:
    """Draft i comes from head i, and the last head drafts on beyond: a head whose logits are flat
    (it drafts token 0, which the trunk seldom picks) ends acceptance at its position, while the
    heads before it keep theirs.  Drafting every position with the first head would not notice a
    broken second one.  good, broken1, broken2: the same 3-head file, heads 1 and 2 broken."""
    d, a = acceptance(good)
    # every head, and the last one recursing (position 4), is often right after a hit
    assert a[0] > 0.4 * d[0] and all(a[i] > 0.3 * a[i - 1] for i in range(1, 4)), (d, a)
    d1, a1 = acceptance(broken1)
    assert a1[0] > 0.4 * d1[0] and d1[1] > 0.9 * d1[0] and a1[1] <= 0.02 * a1[0], (d1, a1)
    d2, a2 = acceptance(broken2)
    assert a2[1] > 0.3 * a2[0] and d2[2] > 0.9 * d2[0] and a2[2] <= 0.02 * a2[1], (d2, a2)


def checked_entries(session, head: int) -> list[tuple[int, int]]:
    """Head head's cache entries, checked against the context: positions increase and each pairs
    the context's token there."""
    entries = hooks.mtp_entries(session, head)
    ctx = session.tokens
    assert all(x[0] < y[0] for x, y in zip(entries, entries[1:])), entries
    assert all(p < len(ctx) and ctx[p] == t for p, t in entries), (head, entries, ctx)
    return entries


def check_heads_catch_up_when_reached(model, n_heads: int) -> None:
    """A head evaluates nothing until a step drafts that deep; then it catches up on every position
    since (its entries cover the context), and after rollbacks (a shorter prefix reused) every
    head's entries still pair the kept context's tokens."""
    with model.session() as s:
        r = s.generate(PROMPTS[0], 40, spec=SpecConfig(1, 0.0, adaptive=False))
        assert sum(r.stats.drafted) > 0
        assert len(checked_entries(s, 0)) > 40 and all(checked_entries(s, j) == [] for j in range(1, n_heads))
        r = s.generate(PROMPTS[0], 40, spec=SpecConfig(3, 0.0, adaptive=False), reuse_prefix=True)
        assert r.stats.drafted[2] > 0
        n_ctx = len(s.tokens)
        for j in range(n_heads):
            entries = checked_entries(s, j)
            assert entries[0][0] == 0 and entries[-1][0] >= n_ctx - 8, (j, entries[-1], n_ctx)
        # one MTP call per draft, and one for each head reached after a gap of more than 16 positions
        assert r.stats.mtp_calls <= sum(r.stats.drafted) + n_heads - 1, (r.stats.mtp_calls, r.stats.drafted)
        ctx = s.tokens
        for cut in (60, 31, 5):
            prompt = ctx[:cut] + model.tokenize(" y = 2")
            r = s.generate(prompt, 24, spec=SpecConfig(3, 0.0, adaptive=False), reuse_prefix=True)
            assert r.tokens == model.generate(prompt, 24, mtp=False).tokens, cut
            for j in range(n_heads):
                checked_entries(s, j)
            ctx = s.tokens


def check_head_left_behind_catches_up(model, n_heads: int) -> None:
    """A head no step reached for 256 positions catches up in a call of its own, so the trunk
    states kept for it stay few."""
    with model.session() as s:
        s.generate(PROMPTS[1], 300, spec=SpecConfig(1, 0.0, adaptive=False))
        n = len(s.tokens)
        assert n > 270
        for j in range(1, n_heads):
            entries = checked_entries(s, j)
            assert entries and entries[-1][0] >= n - 1 - 256 - 8, (j, entries[-1:], n)


def check_memory_counts_every_head(writer, spec, d) -> None:
    """Each head has its own context and cache: an MTP session's KV grows with the head count."""
    from dataclasses import replace

    tok = train_bpe(n_merges=spec.n_merges)

    def kv(n_nextn: int) -> int:
        path = writer.write_synthetic(d / f"h{n_nextn}.gguf", replace(spec, n_nextn=n_nextn), tok=tok)
        with mtpllama.Model(str(path)) as m, m.session(n_ctx=256) as s:
            return s.memory()["kv"]

    assert kv(3) > kv(1)
