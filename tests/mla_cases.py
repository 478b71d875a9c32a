"""Cases and helpers the DSA architectures' test files share (tests/test_arch_glm_dsa.py,
tests/test_arch_deepseek32.py): the bad-key rows of the MLA rules they share with deepseek2
(csrc/arch/mla.cpp), the DSA indexer's rows, the reference-replay runner and its near-tie cut.
tests/test_arch_deepseek2.py keeps its own copies (it came first)."""
from __future__ import annotations

import dataclasses
import subprocess
import sys
import time

import pytest

import mtpllama
from mtpllama.testing.fixtures import ONE_THREAD
from test_reference import PROMPT, TOL_F32, spec_config


def u32(v):
    import gguf
    return (v, gguf.GGUFValueType.UINT32)


def f32(v):
    import gguf
    return (v, gguf.GGUFValueType.FLOAT32)


def string(v):
    import gguf
    return (v, gguf.GGUFValueType.STRING)


def array(values, sub):
    import gguf
    return (list(values), gguf.GGUFValueType.ARRAY, sub)


def bools(values):
    import gguf
    return array([bool(v) for v in values], gguf.GGUFValueType.BOOL)


# (keys to replace (None: drop), what the error says), for the default spec of a DSA writer (2 trunk
# layers, 1 dense, 4 heads, q_lora 48, kv_lora 32, dn 16, dr 16, dv 16, 8 experts, 2 used, 1 shared):
# one row per rule of csrc/arch/mla.cpp but deepseek2's own ("lite" counts, temperature, gating fallback)
MLA_BAD_KEYS = [
    ({"attention.head_count": u32(0)}, "head_count missing"),
    ({"attention.head_count": u32(2000)}, "head_count missing or out of range"),
    ({"attention.head_count": string("4")}, "head_count must be a non-negative integer"),
    ({"attention.head_count_kv": u32(4)}, "head_count_kv must be 1"),
    ({"attention.head_count_kv": None}, "head_count_kv must be 1"),
    ({"embedding_length": None}, "embedding_length"),
    ({"context_length": u32(0)}, "context_length"),
    ({"attention.q_lora_rank": None}, "q_lora_rank"),
    ({"attention.q_lora_rank": u32(1 << 17)}, "q_lora_rank"),
    ({"attention.kv_lora_rank": u32(0)}, "kv_lora_rank"),
    ({"attention.kv_lora_rank": u32(1 << 17)}, "kv_lora_rank"),
    ({"attention.key_length_mla": None}, "key_length_mla and value_length_mla"),
    ({"attention.value_length_mla": u32(0)}, "key_length_mla and value_length_mla"),
    ({"attention.key_length_mla": u32(5000)}, "key_length_mla and value_length_mla"),
    ({"rope.dimension_count": None}, "rope.dimension_count"),
    ({"rope.dimension_count": u32(0)}, "rope.dimension_count"),
    ({"rope.dimension_count": u32(7)}, "rope.dimension_count"),
    ({"rope.dimension_count": u32(32)}, "rope.dimension_count"),      # not below key_length_mla (16 + 16)
    ({"attention.key_length": u32(40)}, "key_length must be kv_lora_rank"),
    ({"attention.value_length": u32(16)}, "value_length must equal"),
    ({"leading_dense_block_count": u32(3)}, "NextN block dense"),
    ({"feed_forward_length": None}, "feed_forward_length"),
    ({"expert_count": u32(2000)}, "expert_count exceeds"),
    ({"expert_count": None}, "expert_count missing"),
    ({"expert_used_count": u32(0)}, "expert_used_count"),
    ({"expert_used_count": u32(9)}, "expert_used_count"),
    ({"expert_shared_count": u32(0)}, "expert_shared_count"),
    ({"expert_feed_forward_length": None}, "expert_feed_forward_length"),
    ({"expert_group_count": u32(8)}, "below expert_count"),
    ({"expert_group_count": u32(3), "expert_group_used_count": u32(1)}, "multiple of expert_group_count"),
    ({"expert_group_count": u32(4), "expert_group_used_count": u32(4)}, "expert_group_used_count must be"),
    ({"expert_group_count": u32(4), "expert_group_used_count": u32(1), "expert_used_count": u32(3)},
     "experts of the used groups"),
    ({"attention.layer_norm_rms_epsilon": f32(float("nan"))}, "epsilon"),
    ({"attention.layer_norm_rms_epsilon": None}, "epsilon"),
    ({"rope.freq_base": f32(-1.0)}, "freq_base"),
    ({"rope.scaling.type": string("bogus")}, "rope.scaling.type"),
    ({"rope.scaling.factor": f32(float("nan"))}, "rope.scaling.factor"),
    ({"rope.scaling.attn_factor": f32(float("inf"))}, "attn_factor"),
    ({"rope.scaling.yarn_log_multiplier": f32(float("nan"))}, "yarn_log_multiplier"),
    ({"expert_weights_scale": f32(float("nan"))}, "expert_weights_scale"),
]

# the DSA indexer's rules (csrc/arch/mla.cpp's check_dsa_indexer), for the default spec (8 indexer heads
# of 64 dims, top_k 16, rope.dimension_count 16)
DSA_BAD_KEYS = [
    ({"attention.indexer.head_count": None}, "indexer.head_count missing"),
    ({"attention.indexer.head_count": u32(0)}, "indexer.head_count missing"),
    ({"attention.indexer.head_count": u32(2000)}, "indexer.head_count missing"),
    ({"attention.indexer.head_count": string("8")}, "indexer.head_count must be a non-negative integer"),
    ({"attention.indexer.key_length": None}, "indexer.key_length must be a power of two"),
    ({"attention.indexer.key_length": u32(96)}, "indexer.key_length must be a power of two"),   # Hadamard 64 != 96
    ({"attention.indexer.key_length": u32(32)}, "indexer.key_length must be a power of two"),   # below 64
    ({"attention.indexer.key_length": u32(8192)}, "indexer.key_length must be a power of two"),
    ({"attention.indexer.top_k": None}, "indexer.top_k missing or 0"),
    ({"attention.indexer.top_k": u32(0)}, "indexer.top_k missing or 0"),
]


def bad_file_fails_clearly(path: str, message: str) -> None:
    """inspect and Model refuse the file with our message (never a llama.cpp abort)."""
    import pytest

    with pytest.raises(mtpllama.ModelLoadError, match=message):
        mtpllama.inspect(path)
    with pytest.raises(mtpllama.ModelLoadError, match=message):
        mtpllama.Model(path, mtp=False)


def decodes_in_a_child(path: str) -> subprocess.CompletedProcess:
    """Load path and decode a lone row, then batches (prompt, verification), in a child process."""
    code = ("import sys, mtpllama\n"
            "cfg = mtpllama.SessionConfig(n_threads=1)\n"
            "with mtpllama.Model(sys.argv[1], session_defaults=cfg) as m:\n"
            "    m.generate([1], 1, mtp=False)\n"
            "    r = m.generate(sys.argv[2], 24, spec=mtpllama.SpecConfig(3, 0.0, adaptive=False))\n"
            "    print(len(r.tokens))\n")
    return subprocess.run([sys.executable, "-c", code, path, PROMPT], capture_output=True, text=True, timeout=300)


@dataclasses.dataclass
class Run:
    ref: object
    events: list[dict]
    result: object
    n_prompt: int
    replay: object
    seconds: float


def make_runs(directory, writer, reference, flavours: dict, follow: float | None = None):
    """A function name -> Run: generate with the flavour (recording events) and replay it through the
    reference once; with `follow`, following indexer near-ties closer than it (reference/dsa.py's replay)."""
    cache: dict[str, Run] = {}

    def get(name: str) -> Run:
        if name not in cache:
            fl = flavours[name]
            t0 = time.perf_counter()
            path = writer.write_synthetic(directory / f"{name}.gguf", fl.spec)
            hp, W, f16 = reference.load_gguf(path)
            with mtpllama.Model(str(path), session_defaults=ONE_THREAD) as model:
                prompt = model.tokenize(fl.prompt)
                with model.session() as s:
                    s.debug_record()
                    result = s.generate(prompt, fl.n_gen, spec=spec_config(4, fl.p_min))
                    events = s.debug_events()
            ref = reference.Reference(hp, W, f16)
            res = reference.replay(ref, events) if follow is None else reference.replay(ref, events, follow=(fl.tol, follow))
            cache[name] = Run(ref, events, result, len(prompt), res, time.perf_counter() - t0)
        return cache[name]

    return get


def dsa_reference_params(flavours: dict) -> list:
    """The flavours of a DSA architecture's reference test.  Where the compiler targets AVX512-FP16,
    ggml's f16 vector kernels accumulate in fp16 (simd-mappings.h): an f16 file's rows are then off
    by about the near-tie bound, and an indexer or routing tie flips within the first rows (seen on
    a Xeon with AMX); the f32 flavours and deepseek2's f16 one still run there."""
    from test_batch_invariance import cpu_flags

    fp16_sums = "avx512_fp16" in cpu_flags()
    return [pytest.param(name, marks=pytest.mark.skipif(fp16_sums and fl.spec.dtype == "f16",
                                                        reason="f16 sums in fp16 on AVX512-FP16"))
            for name, fl in flavours.items()]


def tie_end(res, fl) -> int:
    """The first event whose row differs because a near-tie (expert routing, or an indexer choice the
    replay could not follow) was decided the other way."""
    cats = ("trunk_logits", "trunk_h", "mtp_logits", "mtp_h")
    ties = [r for c in cats for r in res.select(c, None) if r.err >= fl.tol and r.margin < fl.near_tie]
    return min((r.event for r in ties), default=1 << 62)


def err_before(res, category: str, end: int) -> float:
    """The largest error of a category's rows before event end (a flipped near-tie's)."""
    return max((r.err for r in res.select(category, None) if r.event < end), default=0.0)


# --- checks every MLA architecture's test file runs ------------------------------------------------------

def check_split_halves(full: str, tmp_path) -> tuple[str, str]:
    """extract_mtp / extract_trunk of full (the converter's --mtp / --no-mtp): the trunk with its head
    file drafts exactly as the full file.  Returns (head, trunk) paths."""
    from mtpllama import SpecConfig
    from mtpllama.testing.fixtures import PROMPTS

    head = mtpllama.extract_mtp(full, tmp_path / "head.gguf")
    trunk = mtpllama.extract_trunk(full, tmp_path / "trunk.gguf")
    assert [mtpllama.inspect(p).kind for p in (full, head, trunk)] == ["full", "mtp-only", "trunk-only"]
    spec = SpecConfig(3, 0.0, adaptive=False)
    with mtpllama.Model(full, session_defaults=ONE_THREAD) as a, \
            mtpllama.Model(trunk, mtp_path=head, session_defaults=ONE_THREAD) as b:
        assert b.info.mtp_separate
        for prompt in PROMPTS[:3]:
            ra, rb = a.generate(prompt, 32, spec=spec), b.generate(prompt, 32, spec=spec)
            assert ra.tokens == rb.tokens == a.generate(prompt, 32, mtp=False).tokens
            assert (ra.stats.drafted, ra.stats.accepted) == (rb.stats.drafted, rb.stats.accepted)
    return str(head), str(trunk)


def check_mtp_equals_plain(model, plain_outputs, flavour: str, prompts, draft_max: int, p_min: float) -> None:
    """Greedy MTP == plain on every prompt (64 tokens), and the head both right and wrong at the first two positions."""
    from mtpllama import SpecConfig

    drafted = [0] * draft_max
    accepted = [0] * draft_max
    assert len(prompts) >= 20
    for prompt in prompts:
        plain = plain_outputs[(flavour, prompt)]
        mtp = model.generate(prompt, 64, spec=SpecConfig(draft_max, p_min, adaptive=False))
        assert mtp.tokens == plain.tokens, f"prompt {prompt!r}"
        assert mtp.stop_reason == plain.stop_reason
        for i, (d, a) in enumerate(zip(mtp.stats.drafted, mtp.stats.accepted)):
            drafted[i] += d
            accepted[i] += a
    assert accepted[0] > 0
    if draft_max >= 2:
        assert accepted[1] > 0
    assert sum(accepted) < sum(drafted)


def check_batch_equals_incremental(ref, n_tokens: int) -> None:
    """A reference's one batch over a sequence == the same rows one at a time, trunk and MTP block."""
    import numpy as np

    rng = np.random.default_rng(0)
    toks = rng.integers(0, ref.hp.n_vocab, n_tokens).tolist()
    logits, h = ref.trunk_forward(toks)
    cache = ref.trunk_cache()
    for p, t in enumerate(toks):
        lp, hp_ = ref.trunk(cache, [t], [p])
        np.testing.assert_allclose(lp[0], logits[p], rtol=0, atol=1e-11 * np.abs(logits).max())
        np.testing.assert_allclose(hp_[0], h[p], rtol=0, atol=1e-11 * np.abs(h).max())
    entries = [(t, h[p - 1] if p else np.zeros_like(h[0]), p) for p, t in enumerate(toks)]
    ml, mh = ref.nextn_forward(entries)
    mc = ref.mtp_cache()
    for t, hin, p in entries:
        l1, h1 = ref.nextn(mc, [t], hin[None], [p])
        np.testing.assert_allclose(l1[0], ml[p], rtol=0, atol=1e-11 * np.abs(ml).max())
        np.testing.assert_allclose(h1[0], mh[p], rtol=0, atol=1e-11 * np.abs(mh).max())


def check_rope_is_relative(ref, rel_err, n_tokens: int) -> None:
    """A common shift of positions changes a reference's logits by nothing; another spacing does."""
    import numpy as np

    toks = list(range(5, 5 + n_tokens))
    a, _ = ref.trunk(ref.trunk_cache(), toks, np.arange(n_tokens))
    b, _ = ref.trunk(ref.trunk_cache(), toks, np.arange(n_tokens) + 137)
    c, _ = ref.trunk(ref.trunk_cache(), toks, np.arange(n_tokens) * 3)
    assert rel_err(b, a) < 1e-10
    assert rel_err(c, a) > 1e-2


def check_engine_matches_reference(name: str, run, fl) -> None:
    """A recorded generation replayed through the reference: every row's trunk logits and state and
    MTP logits and state within fl.tol, up to the first flipped near-tie (most of the run)."""
    from test_reference import table_line

    res, st = run.replay, run.result.stats
    followed = getattr(res, "followed", None)
    extra = "" if followed is None else f", {len(followed)} indexer near-ties followed"
    print(f"\n{table_line(name, res)}  [{run.seconds:.1f}s{extra}]")
    assert len(run.result.tokens) == fl.n_gen
    assert 200 <= run.n_prompt + fl.n_gen < 512  # the reference does not model the split-KV kernel (>= 512)
    assert sum(st.accepted) > 0 and sum(st.accepted) < sum(st.drafted), (st.drafted, st.accepted)
    assert res.mtp_inputs["trunk"] > 0 and res.mtp_inputs["draft"] > 0
    if followed is not None:  # the indexer's near-ties the replay follows: a handful in f32 (gaps < 1e-4 in ~1%
        assert len(followed) <= (8 if fl.tol <= TOL_F32 else 32), followed  # of rows), more in f16
    end = tie_end(res, fl)
    # a flipped tie ends the comparison (the caches part); what comes before it must still be most of a run
    assert end >= 0.4 * len(run.events), f"{name}: a near-tie flipped at event {end} of {len(run.events)}"
    for cat in ("trunk_logits", "trunk_h", "mtp_logits", "mtp_h"):
        rows = [r for r in res.select(cat, None) if r.event < end]
        assert len(rows) >= 60, f"{len(rows)} {cat} rows before event {end}"
        worst = max(rows, key=lambda r: r.err)
        print(f"  {cat}: worst {worst.err:.1e} over {len(rows)} rows")
        assert worst.err < fl.tol, f"{name} {cat}: {worst}"


def check_broken_reference(run, fl, good_replay, bad_replay, category: str) -> None:
    """The good reference's replay agrees with the run in `category` and a broken reference's
    (bad_replay) is at least 25 tolerances off, over the rows before the run's first flipped near-tie."""
    batched = False if category == "mtp_h" else None
    end = tie_end(run.replay, fl)
    assert max((r.err for r in good_replay.select(category, batched) if r.event < end), default=0.0) < fl.tol
    worst = max((r.err for r in bad_replay.select(category, batched) if r.event < end), default=0.0)
    assert worst > 25 * fl.tol, f"{bad_replay}"


def check_sampled_distribution(model, prompt, n: int) -> None:
    """Three drafts a step, verified as the defaults verify (rejection sampling, adaptive draft
    distribution): the joint distribution of the first 4 tokens after prompt equals plain sampling's
    (two-sample chi-square, p > 1e-3, n samples a side), and an accept-everything verifier is told
    apart (p < 1e-6)."""
    from collections import Counter

    from mtpllama import SamplingConfig, SpecConfig
    from mtpllama.testing.hooks import spec_with_verify
    from mtpllama.testing.stats import two_sample_chi2

    drafted = [0]

    def draw(session, spec, seed0):
        out: Counter = Counter()
        for i in range(n):
            session.reset()
            r = session.generate(prompt, 4, spec=spec, sampling=SamplingConfig(temperature=1.0, top_k=4, seed=seed0 + i))
            out[tuple(r.tokens)] += 1
            drafted[0] += sum(r.stats.drafted)
        return out

    with model.session(mtp=False) as plain, model.session(mtp=True) as mtp:
        a = draw(plain, SpecConfig(0, 0.0, adaptive=False), 1)
        b = draw(mtp, SpecConfig(3, 0.0, adaptive=False), 10**6)
        assert drafted[0] >= 2 * n  # it drafted
        stat, df, p = two_sample_chi2(a, b)
        assert df >= 10 and p > 1e-3, f"chi2={stat:.1f} df={df} p={p:.2e}"
        bad = draw(mtp, spec_with_verify(SpecConfig(3, 0.0, adaptive=False), "test_accept_all"), 2 * 10**6)
        stat, df, p = two_sample_chi2(a, bad)
        assert p < 1e-6, f"the biased verifier passed: chi2={stat:.1f} df={df} p={p:.2e}"
