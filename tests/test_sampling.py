"""Sampled decoding: MTP with rejection sampling has exactly plain sampling's distribution.

Two-sample chi-square tests over the joint distribution of the first 4 generated
tokens (cells with fewer than 10 observations pooled), 20,000 samples a side,
fixed seeds (so the test is deterministic), failing at p < 1e-3 (the false-alarm
rate of the test for a correct sampler).  With max_tokens=4 the first step drafts
2 tokens, so draft positions 1 and 2, recovered and bonus tokens all take part.
The same test fails for a deliberately wrong verifier (accept every draft).
"""
from __future__ import annotations

from collections import Counter

import pytest

import mtpllama
from mtpllama.testing.fixtures import ONE_THREAD
from mtpllama import SamplingConfig, SpecConfig
from mtpllama.testing.hooks import spec_with_verify
from mtpllama.testing.stats import two_sample_chi2

N = 20_000
ALPHA = 1e-3
PROMPT = [40, 41, 42, 43]


def draw(session, n, spec, sampling, seed0):
    out: Counter = Counter()
    for i in range(n):
        session.reset()
        r = session.generate(PROMPT, 4, spec=spec, sampling=SamplingConfig(**{**sampling, "seed": seed0 + i}))
        out[tuple(r.tokens)] += 1
    return out


@pytest.fixture(scope="module")
def sessions(model_files):
    with mtpllama.Model(model_files["glm45"], session_defaults=ONE_THREAD) as m:
        with m.session(mtp=False) as plain, m.session(mtp=True) as mtp:
            yield plain, mtp


CONFIGS = {
    "top_k": dict(temperature=1.0, top_k=4),
    "top_p_min_p_penalties": dict(temperature=0.9, top_k=6, top_p=0.9, min_p=0.05, repeat_penalty=1.5,
                                  presence_penalty=0.3, frequency_penalty=0.2, penalty_last_n=8),
}


@pytest.mark.slow
@pytest.mark.parametrize("name", list(CONFIGS))
def test_rejection_sampling_matches_plain_sampling(sessions, name):
    plain, mtp = sessions
    cfg = CONFIGS[name]
    a = draw(plain, N, SpecConfig(0, 0.0, adaptive=False), cfg, seed0=1)
    b = draw(mtp, N, SpecConfig(3, 0.0, verify="rejection", adaptive=False), cfg, seed0=10**6)
    st = mtp.stats()
    stat, df, p = two_sample_chi2(a, b)
    assert df >= 10  # the test has cells to speak of
    assert p > ALPHA, f"{name}: chi2={stat:.1f} df={df} p={p:.2e}"


@pytest.mark.slow
def test_confidence_floor_keeps_the_distribution(sessions):
    """draft_p_min with sampling: the floor looks at the head's top probability, not at the drawn
    draft (a floor on the draw's own probability skews the output: at this size it failed at
    p < 1e-9 with either floor)."""
    plain, mtp = sessions
    cfg = CONFIGS["top_k"]
    a = draw(plain, N // 4, SpecConfig(0, 0.0, adaptive=False), cfg, seed0=1)
    for p_min in (0.3, 0.5):
        b = draw(mtp, N // 4, SpecConfig(3, p_min, adaptive=False), cfg, seed0=10**6)
        stat, df, p = two_sample_chi2(a, b)
        assert df >= 10
        assert p > ALPHA, f"p_min {p_min}: chi2={stat:.1f} df={df} p={p:.2e}"


@pytest.mark.slow
def test_exact_match_verification_matches_plain_sampling(sessions):
    plain, mtp = sessions
    cfg = CONFIGS["top_k"]
    a = draw(plain, N // 2, SpecConfig(0, 0.0, adaptive=False), cfg, seed0=7)
    b = draw(mtp, N // 2, SpecConfig(3, 0.0, verify="exact", adaptive=False), cfg, seed0=9 * 10**6)
    stat, df, p = two_sample_chi2(a, b)
    assert p > ALPHA, f"chi2={stat:.1f} df={df} p={p:.2e}"


@pytest.mark.slow
def test_wrong_verifier_is_detected(sessions):
    """The test has power: accepting every draft changes the distribution and is caught."""
    plain, mtp = sessions
    cfg = CONFIGS["top_k"]
    a = draw(plain, N, SpecConfig(0, 0.0, adaptive=False), cfg, seed0=1)
    b = draw(mtp, N, spec_with_verify(SpecConfig(3, 0.0, adaptive=False), "test_accept_all"), cfg, seed0=2 * 10**6)
    stat, df, p = two_sample_chi2(a, b)
    assert p < 1e-6, f"chi2={stat:.1f} df={df} p={p:.2e}"


def test_same_seed_same_output(glm45):
    # a fixed draft length: the adaptive controller's choices follow measured timings
    spec = SpecConfig(3, 0.0, adaptive=False)
    s = SamplingConfig(temperature=0.9, top_p=0.95, seed=1234)
    a = glm45.generate("def foo(x):", 40, sampling=s, spec=spec)
    b = glm45.generate("def foo(x):", 40, sampling=s, spec=spec)
    c = glm45.generate("def foo(x):", 40, sampling=SamplingConfig(temperature=0.9, top_p=0.95, seed=99), spec=spec)
    assert a.tokens == b.tokens
    assert a.tokens != c.tokens


def test_temperature_zero_is_greedy(glm45):
    g = glm45.generate("import os", 40, mtp=False)
    for verify in ("rejection", "exact"):
        r = glm45.generate("import os", 40, spec=SpecConfig(3, 0.0, verify=verify, adaptive=False),
                           sampling=SamplingConfig(temperature=0.0, seed=5))
        assert r.tokens == g.tokens


def test_greedy_with_penalties_mtp_equals_plain(glm45):
    s = SamplingConfig(temperature=0.0, repeat_penalty=1.3, frequency_penalty=0.5, penalty_last_n=16)
    for prompt in ("def foo(x):", "import os", "The quick brown"):
        a = glm45.generate(prompt, 40, sampling=s, mtp=False)
        b = glm45.generate(prompt, 40, sampling=s, spec=SpecConfig(4, 0.0, adaptive=False))
        assert a.tokens == b.tokens


@pytest.mark.parametrize("kwargs", [
    dict(temperature=-1.0), dict(top_k=-1), dict(top_p=0.0), dict(top_p=1.5), dict(min_p=2.0),
    dict(repeat_penalty=0.0), dict(penalty_last_n=-2), dict(seed=-1), dict(temperature="hot"),
])
def test_bad_sampling_config(kwargs):
    with pytest.raises((ValueError, TypeError)):
        SamplingConfig(**kwargs)


def test_bad_verify_mode():
    with pytest.raises(ValueError):
        SpecConfig(3, 0.5, verify="maybe", adaptive=False)


def acceptance_per_step(session, prompts, spec, temperature, n_runs=100):
    acc = steps = 0
    for i in range(n_runs):
        session.reset()
        r = session.generate(prompts[i % len(prompts)], 48, spec=spec,
                             sampling=SamplingConfig(temperature=temperature, seed=i))
        acc += sum(r.stats.accepted)
        steps += r.stats.steps
    return acc / steps


def test_rejection_sampling_accepts_more_than_exact_match(tmp_path):
    from dataclasses import replace

    from mtpllama.testing.fixtures import PROMPTS, SPECS
    from mtpllama.testing import add_second_successor, synthetic_weights, train_bpe, write_synthetic

    spec = replace(SPECS["glm45"], noise=0.5)
    tok = train_bpe()
    weights = add_second_successor(synthetic_weights(spec, tok), spec, tok)
    path = write_synthetic(tmp_path / "branching.gguf", spec, tok, weights)
    with mtpllama.Model(str(path), session_defaults=ONE_THREAD) as m, m.session() as s:
        rej = acceptance_per_step(s, PROMPTS, SpecConfig(3, 0.0, verify="rejection", adaptive=False), 0.8)
        exact = acceptance_per_step(s, PROMPTS, SpecConfig(3, 0.0, verify="exact", adaptive=False), 0.8)
    assert rej > 1.05 * exact, (rej, exact)


@pytest.mark.parametrize("temperature", [0.5, 1.0])
def test_coupled_sampling_equals_plain_sampling_token_for_token(glm45, temperature):
    from mtpllama.testing.fixtures import PROMPTS

    for i, prompt in enumerate(PROMPTS[:10]):
        s = SamplingConfig(temperature=temperature, top_k=20, seed=1000 + i)
        plain = glm45.generate(prompt, 48, sampling=s, spec=SpecConfig(0, 0.0, verify="coupled", adaptive=False),
                               mtp=True)
        fixed = glm45.generate(prompt, 48, sampling=s, spec=SpecConfig(4, 0.0, verify="coupled", adaptive=False))
        adaptive = glm45.generate(prompt, 48, sampling=s, spec=SpecConfig(4, 0.0, verify="coupled"))
        assert fixed.tokens == plain.tokens
        assert adaptive.tokens == plain.tokens  # whatever draft lengths the controller picked
        assert sum(fixed.stats.accepted) > 0
    # different seeds give different samples
    a = glm45.generate("import os", 48, sampling=SamplingConfig(temperature=temperature, seed=1),
                       spec=SpecConfig(4, 0.0, verify="coupled"))
    b = glm45.generate("import os", 48, sampling=SamplingConfig(temperature=temperature, seed=2),
                       spec=SpecConfig(4, 0.0, verify="coupled"))
    assert a.tokens != b.tokens


@pytest.mark.slow
def test_coupled_plain_sampling_has_the_sampler_distribution(sessions):
    """Keyed Gumbel-max sampling is a sampler of p: same chi-square test against the RNG sampler."""
    plain, _ = sessions
    cfg = CONFIGS["top_k"]
    a = draw(plain, N // 2, SpecConfig(0, 0.0, adaptive=False), cfg, seed0=3)
    b = draw(plain, N // 2, SpecConfig(0, 0.0, verify="coupled", adaptive=False), cfg, seed0=5 * 10**6)
    stat, df, p = two_sample_chi2(a, b)
    assert p > ALPHA, f"chi2={stat:.1f} df={df} p={p:.2e}"


# A file on which drafting pays on a CPU (a memory-bound step: Q8_0, a wide dense FFN), whose next token
# is genuinely uncertain (two likely successors) and whose head is less sure than the trunk (head_scale):
# the controller drafts, and moves its draft mixture toward the arg-max.
UNSURE_WIDE = dict(n_embd=512, n_layer=3, n_dense_lead=2, n_head=8, n_head_kv=2, head_dim=64, n_rot=32, n_ff=4096,
                   n_ff_exp=256, dtype="q8_0", head_scale=0.2, noise=3.0)


@pytest.fixture(scope="module")
def unsure_wide(tmp_path_factory):
    from dataclasses import replace

    from mtpllama.testing import add_second_successor, synthetic_weights, train_bpe, write_synthetic
    from mtpllama.testing.fixtures import SPECS

    spec = replace(SPECS["glm45"], **UNSURE_WIDE)
    tok = train_bpe()
    weights = add_second_successor(synthetic_weights(spec, tok), spec, tok)
    path = write_synthetic(tmp_path_factory.mktemp("wide") / "unsure.gguf", spec, tok, weights)
    with mtpllama.Model(str(path), session_defaults=ONE_THREAD) as m:
        yield m


@pytest.mark.slow
def test_adaptive_mixture_matches_plain_sampling(unsure_wide):
    """The defaults with sampling: the controller chooses draft lengths and each position's draft
    mixture while the test runs; the output keeps plain sampling's distribution."""
    cfg = dict(temperature=0.8, top_k=8, top_p=0.95, min_p=0.05)
    with unsure_wide.session(mtp=False) as plain, unsure_wide.session() as adaptive:
        a = draw(plain, N // 4, SpecConfig(0, 0.0, adaptive=False), cfg, seed0=5)
        b = draw(adaptive, N // 4, SpecConfig(), cfg, seed0=3 * 10**6)
    stat, df, p = two_sample_chi2(a, b)
    assert df >= 10
    assert p > ALPHA, f"chi2={stat:.1f} df={df} p={p:.2e}"


def test_adaptive_mixture_leans_toward_the_arg_max_for_an_unsure_head(unsure_wide):
    """Right but unsure: rejection sampling with the head's own distribution accepts less than its
    arg-max (as exact match does).  The mixture the controller chooses, from what each mixture would
    have accepted at the verified rows (counted in every rejection-sampling step, fixed ones too),
    is at the arg-max end."""
    from mtpllama.testing.fixtures import PROMPTS

    def run(s, spec, runs=12):
        acc = drafted = 0
        for i in range(runs):
            s.reset()
            r = s.generate(PROMPTS[i % len(PROMPTS)], 64, spec=spec,
                           sampling=SamplingConfig(temperature=0.8, top_k=40, top_p=0.95, min_p=0.05, seed=i))
            acc += r.stats.accepted[0] if r.stats.accepted else 0
            drafted += r.stats.drafted[0] if r.stats.drafted else 0
        return acc / max(drafted, 1), r.stats

    with unsure_wide.session() as own_s, unsure_wide.session() as exact_s:
        own, _ = run(own_s, SpecConfig(3, 0.0, adaptive=False))
        argmax, _ = run(exact_s, SpecConfig(3, 0.0, adaptive=False, verify="exact"))
        _, st = run(own_s, SpecConfig(), runs=1)  # the same controller, now choosing
    assert argmax > own + 0.03, (own, argmax)  # the file is what it is meant to be
    assert st.draft_mix[0] >= 0.8, st.draft_mix


def test_paired_first_draft_acceptance(unsure_wide):
    """GenerationStats.first_paired: over exactly the verified first drafts, each mixture's chance of
    acceptance on the rows verified.  The mixture drawn from predicts the accepted count (4 sigma),
    and on this right-but-unsure head the arg-max end beats the head's own distribution on the same
    rows, as exact-match beats rejection sampling in separate runs."""
    from mtpllama.testing.fixtures import PROMPTS

    acc = drafted = n = 0
    paired, drawn = None, 0.0
    with unsure_wide.session() as s:
        for i in range(12):
            s.reset()
            st = s.generate(PROMPTS[i % len(PROMPTS)], 64, spec=SpecConfig(3, 0.0, adaptive=False),
                            sampling=SamplingConfig(temperature=0.8, top_k=40, top_p=0.95, min_p=0.05, seed=i)).stats
            acc += st.accepted[0] if st.accepted else 0
            drafted += st.drafted[0] if st.drafted else 0
            n += st.first_paired_drafts
            drawn += st.first_paired_drawn
            paired = st.first_paired if paired is None else [a + b for a, b in zip(paired, st.first_paired)]
    assert n == drafted > 100
    assert abs(drawn - paired[0]) < 1e-6 * n  # a fixed rejection step draws from the head's distribution
    assert abs(acc - drawn) <= 4 * drawn ** 0.5 + 1, (acc, drawn, n)
    assert paired[-1] > paired[0] + 0.03 * n, paired
    assert all(0.0 <= x <= n for x in paired)
