"""Greedy MTP decoding is lossless: token-for-token equal to plain decoding."""
from __future__ import annotations

import pytest

from conftest import PROMPTS
from mtpllama import SpecConfig


@pytest.mark.parametrize("flavour", ["glm45", "glm46"])
@pytest.mark.parametrize("draft_max", [1, 2, 3, 4])
@pytest.mark.parametrize("p_min", [0.0, 0.85])
def test_mtp_equals_plain(request, flavour, draft_max, p_min):
    model = request.getfixturevalue(flavour)
    drafted = [0] * draft_max
    accepted = [0] * draft_max
    for prompt in PROMPTS:
        plain = model.generate(prompt, 40, mtp=False)
        mtp = model.generate(prompt, 40, spec=SpecConfig(draft_max, p_min))
        assert mtp.tokens == plain.tokens, f"prompt {prompt!r}"
        assert mtp.text == plain.text
        assert mtp.stop_reason == plain.stop_reason
        for i, (d, a) in enumerate(zip(mtp.stats.drafted, mtp.stats.accepted)):
            drafted[i] += d
            accepted[i] += a
    # multi-token acceptance is exercised, and so is rejection
    assert accepted[0] > 0
    if draft_max >= 2:
        assert accepted[1] > 0
    assert sum(accepted) < sum(drafted)


def test_stats_consistent(glm45):
    for prompt in PROMPTS[:8]:
        r = glm45.generate(prompt, 50, spec=SpecConfig(4, 0.0))
        st = r.stats
        assert len(r.tokens) == st.generated_tokens == 50
        assert all(a <= d for a, d in zip(st.accepted, st.drafted))
        # drafts at position i+1 exist only where position i was drafted
        assert all(st.drafted[i + 1] <= st.drafted[i] for i in range(len(st.drafted) - 1))
        assert st.generated_tokens == st.steps + sum(st.accepted)
        assert min(st.t_prefill, st.t_draft, st.t_verify, st.t_other) >= 0
        assert st.t_total <= st.wall
        assert st.t_draft > 0 and st.t_verify > 0
        assert st.prompt_tokens == len(glm45.tokenize(prompt))
        # one trunk call per step after the prompt; MTP calls only when drafting
        assert st.trunk_calls == st.steps  # prompt pass + (steps - 1) verification passes
        assert st.mtp_calls >= st.steps - 1


def test_plain_session_never_drafts(glm45):
    r = glm45.generate("def foo(x):", 30, mtp=False)
    assert r.stats.drafted == [] and r.stats.mtp_calls == 0
    assert r.stats.steps == 30


def test_draft_max_zero_is_plain(glm45):
    a = glm45.generate("import os", 30, mtp=False)
    b = glm45.generate("import os", 30, spec=SpecConfig(0, 0.0))
    assert a.tokens == b.tokens and b.stats.drafted == []


def test_max_tokens_respected_exactly(glm45):
    for n in (1, 2, 3, 5, 7):
        r = glm45.generate("def foo(x):", n, spec=SpecConfig(4, 0.0))
        assert len(r.tokens) == n and r.stop_reason == "length"


def test_own_and_tied_heads_differ(glm45, glm46):
    # sanity of the fixtures: two genuinely different models
    assert glm45.info.n_tensors_nextn_file == glm46.info.n_tensors_nextn_file + 2
