"""Checks the recurrent architectures' test files share (tests/test_arch_qwen35.py,
test_arch_nemotron_h_moe.py, test_arch_bailingmoe3.py, test_arch_deepseek4.py): greedy MTP == plain,
the rollback's necessity, truncation, chat turns, and the NextN block's FFN on output rows only."""
from __future__ import annotations

import mtpllama
from mtpllama import SessionConfig, SpecConfig, _lib
from mtpllama.testing.fixtures import ONE_THREAD, PROMPTS


def check_mtp_equals_plain(model, plain_outputs, draft_max: int, p_min: float) -> None:
    """Every prompt (64 tokens) at a fixed draft length: MTP's tokens are plain decoding's, and the head
    was both right (at the first position) and wrong."""
    drafted = accepted = first = 0
    for prompt in PROMPTS:
        r = model.generate(prompt, 64, spec=SpecConfig(draft_max, p_min, adaptive=False))
        assert r.tokens == plain_outputs[prompt].tokens, f"prompt {prompt!r}"
        drafted += sum(r.stats.drafted)
        accepted += sum(r.stats.accepted)
        first += r.stats.accepted[0] if r.stats.accepted else 0
    assert first > 0 and accepted < drafted


def check_low_precision(path: str) -> None:
    with mtpllama.Model(path, session_defaults=ONE_THREAD) as m:
        for prompt in PROMPTS[:8]:
            for k in (1, 4):
                assert m.generate(prompt, 40, spec=SpecConfig(k, 0.0, adaptive=False)).tokens == \
                    m.generate(prompt, 40, mtp=False).tokens, (prompt, k)


def check_rollback_is_needed(model, plain_outputs) -> None:
    """With the snapshot restore skipped (a test hook: the rejected drafts' updates stay in the
    recurrent state) greedy output departs from plain decoding on most prompts; the same session with
    the restore matches it."""
    spec = SpecConfig(3, 0.0, adaptive=False)
    with model.session() as s:
        rejected = differ = 0
        _lib.check(_lib.lib.mtpl_test_skip_rollback(s._ptr(), 1))
        for prompt in PROMPTS[:8]:
            s.reset()
            r = s.generate(prompt, 64, spec=spec)
            rejected += sum(r.stats.drafted) - sum(r.stats.accepted)
            differ += r.tokens != plain_outputs[prompt].tokens
        _lib.check(_lib.lib.mtpl_test_skip_rollback(s._ptr(), 0))
        for prompt in PROMPTS[:8]:
            s.reset()
            assert s.generate(prompt, 64, spec=spec).tokens == plain_outputs[prompt].tokens
    assert rejected > 0 and differ >= 4, (rejected, differ)


def check_truncation(model, cuts=(1, 3, 20)) -> None:
    """Reusing a prefix cut back into the caches continues as a fresh session does."""
    spec = SpecConfig(4, 0.0, adaptive=False)
    for prompt in PROMPTS[:4]:
        for cut in cuts:
            with model.session() as s, model.session() as fresh:
                first = s.generate(prompt, 24, spec=spec)
                context = model.tokenize(prompt) + first.tokens
                new = context[:len(context) - cut] + model.tokenize(" x")
                assert s.generate(new, 16, spec=spec, reuse_prefix=True).tokens == \
                    fresh.generate(new, 16, spec=spec).tokens, (prompt, cut)


def check_mtp_ffn_on_output_rows(path: str, spec) -> None:
    """The NextN block runs its FFN on output rows only: the MTP context's compute buffer grows with
    n_batch by attention-sized rows, not by every row's routed-expert intermediates (spec: the file's,
    with wide experts)."""
    ffn_row = spec.n_expert_used * spec.n_ff_exp * 4  # bytes of one expert-FFN activation of one row

    def mtp_compute(m, n_batch: int) -> int:
        cfg = SessionConfig(n_threads=1, n_ctx=256, n_batch=n_batch)
        with m.session(mtp=True, config=cfg) as a, m.session(mtp=False, config=cfg) as b:
            return a.memory()["compute"] - b.memory()["compute"]

    with mtpllama.Model(str(path)) as m:
        small, big = mtp_compute(m, 32), mtp_compute(m, 256)
        r = m.generate("def foo(x):", 40, spec=SpecConfig(3, 0.0, adaptive=False))
        plain = m.generate("def foo(x):", 40, mtp=False)
    per_row = (big - small) / (256 - 32)
    assert 0 < per_row < ffn_row, (small, big, per_row, ffn_row)
    assert r.tokens == plain.tokens and sum(r.stats.accepted) > 0


def check_chat_turns(path: str):
    """A file carrying its model's chat template: MTP never changes a greedy reply, and a second turn
    sent as the whole conversation reuses the first turn's caches (the recurrent state restored from
    the checkpoint where the text departs) and replies as a fresh session does.  Returns the second
    turn's stats."""
    turn1 = [{"role": "system", "content": "You are terse."}, {"role": "user", "content": "Hi there"}]
    spec = SpecConfig(3, 0.0, adaptive=False)
    with mtpllama.Model(str(path), session_defaults=ONE_THREAD) as m:
        with m.session(mtp=False) as plain, m.session() as s:
            first_plain = plain.chat(turn1, 24, thinking=False)
            first = s.chat(turn1, 24, thinking=False, spec=spec)
            assert first.tokens == first_plain.tokens
            turn2 = turn1 + [first.message.to_dict(), {"role": "user", "content": "And then?"}]
            second = s.chat(turn2, 24, thinking=False, spec=spec)
        with m.session() as fresh:
            ref = fresh.chat(turn2, 24, thinking=False, spec=spec)
    st = second.stats
    assert second.tokens == ref.tokens
    assert st.cached_tokens > 0 and st.cached_tokens + st.prompt_tokens + st.reevaluated_tokens == second.prompt_tokens
    return st
