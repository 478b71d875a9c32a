"""Greedy MTP decoding is lossless: token-for-token equal to plain decoding."""
from __future__ import annotations

import pytest

from mtpllama.testing.fixtures import PROMPTS
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
        mtp = model.generate(prompt, 40, spec=SpecConfig(draft_max, p_min, adaptive=False))
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
        r = glm45.generate(prompt, 50, spec=SpecConfig(4, 0.0, adaptive=False))
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
    b = glm45.generate("import os", 30, spec=SpecConfig(0, 0.0, adaptive=False))
    assert a.tokens == b.tokens and b.stats.drafted == []


def test_max_tokens_respected_exactly(glm45):
    for n in (1, 2, 3, 5, 7):
        r = glm45.generate("def foo(x):", n, spec=SpecConfig(4, 0.0, adaptive=False))
        assert len(r.tokens) == n and r.stop_reason == "length"


def test_own_and_tied_heads_differ(glm45, glm46):
    # sanity of the fixtures: two genuinely different models
    assert glm45.info.n_tensors_nextn_file == glm46.info.n_tensors_nextn_file + 2


def test_adaptive_is_lossless_and_reports_its_choices(glm45):
    for prompt in ("def foo(x):", "import os", "The quick brown", "class Stack:"):
        plain = glm45.generate(prompt, 60, mtp=False)
        r = glm45.generate(prompt, 60, spec=SpecConfig(4, 0.0))  # adaptive by default
        assert r.tokens == plain.tokens
        st = r.stats
        # every verification step is counted once, by the drafts it verified
        assert sum(st.drafts_per_step) == st.steps - 1
        assert sum(k * n for k, n in enumerate(st.drafts_per_step)) == sum(st.drafted)
        assert len(st.est_accept) == 16 and all(0.0 <= a <= 1.0 for a in st.est_accept)
        assert st.est_verify and st.est_head > 0 and st.est_rate > 0  # measured costs
        assert len(st.calibration) == 12 and sum(w for _, _, w in st.calibration) > 0


def test_fixed_drafting_with_a_floor_no_draft_clears(glm45):
    """draft_p_min 1: no draft is ever verified, every step is a one-row pass."""
    with glm45.session() as s:
        st = s.generate("def foo(x):", 40, spec=SpecConfig(3, 1.0, adaptive=False)).stats
    assert st.drafted == [] and st.drafts_per_step[0] == st.steps - 1
    assert sorted(st.est_verify) == [0]


def test_adaptive_turns_drafting_off_when_it_cannot_pay(tmp_path):
    """A head that is never right: the controller settles on plain steps (k = 0)."""
    import mtpllama
    from mtpllama.testing.fixtures import ONE_THREAD
    from mtpllama.testing import SyntheticSpec, synthetic_weights, train_bpe, write_synthetic
    import numpy as np

    spec = SyntheticSpec(nextn="own", seed=21, noise=0.5)
    tok = train_bpe()
    w = synthetic_weights(spec, tok)
    rng = np.random.default_rng(0)
    head = w[f"blk.{spec.n_layer}.nextn.shared_head_head.weight"]
    w[f"blk.{spec.n_layer}.nextn.shared_head_head.weight"] = head[rng.permutation(head.shape[0])]
    path = write_synthetic(tmp_path / "bad_head.gguf", spec, tok, w)
    with mtpllama.Model(str(path), session_defaults=ONE_THREAD) as m:
        plain = m.generate("def foo(x):", 200, mtp=False)
        r = m.generate("def foo(x):", 200, spec=SpecConfig(4, 0.0))
        assert r.tokens == plain.tokens
        assert sum(r.stats.accepted) <= 0.1 * max(1, sum(r.stats.drafted))
        assert r.stats.drafts_per_step[0] >= 0.75 * (r.stats.steps - 1), r.stats.drafts_per_step
