"""deepseek32 (DeepSeek-V3.2: MLA with DeepSeek Sparse Attention, one NextN block): what
test_arch_deepseek2.py checks, for this architecture (docs/dsa.md).

* the writer lays keys and tensors out as llama.cpp's converter does (an indexer in every block, the
  NextN block's included);
* inspect: a good file is supported with a usable NextN block; every rule of csrc/arch/deepseek32.cpp
  (and the MLA rules it shares, csrc/arch/mla.cpp) fails with our message instead of an abort;
* greedy MTP == greedy plain, own and tied heads, f32, f16 and q8_0, over contexts longer than
  top_k (16): the indexer chooses;
* verified rows == lone rows (batch invariance) with n_kv above top_k;
* logits and states against the numpy reference (reference/dsa.py), broken references told apart,
  and a dense-attention reference is wrong once n_kv exceeds top_k.

docs/dsa.md says what was read to write it and what the first build changed.
"""
from __future__ import annotations

import dataclasses

import numpy as np
import pytest

import mtpllama
from mla_cases import (DSA_BAD_KEYS, MLA_BAD_KEYS, bad_file_fails_clearly, check_batch_equals_incremental,
                       check_broken_reference, check_engine_matches_reference, check_mtp_equals_plain,
                       check_rope_is_relative, check_sampled_distribution, check_split_halves, decodes_in_a_child,
                       dsa_reference_params, err_before, make_runs, tie_end, u32)
from recurrent_cases import check_mtp_ffn_on_output_rows
from mtpllama import SpecConfig
from mtpllama.testing.arch import WRITERS
from mtpllama.testing.fixtures import ONE_THREAD, PROMPTS
from reference import REFERENCES
from test_batch_invariance import compare
from test_reference import LONG_PROMPT, PROMPT, TOL_F16, TOL_F32, Flavour

D = WRITERS["deepseek32"]
R = REFERENCES["deepseek32"]
Spec = D.SyntheticSpec
TOP_K = Spec().index_top_k

# dn = 32 and r = 64 meet AMX's f16/q8_0 alignment (patches/0013, as in test_arch_deepseek2.py);
# key_length r + dr = 80 stays away from the indexer's 64 (llama.cpp would then rotate the MLA cache too)
AMX_SHAPED = dict(qk_nope_head_dim=32, kv_lora_rank=64, v_head_dim=32)
# V3.2's routing: expert groups and a routed scale (its config: n_group 8, topk_group 4, scale 2.5)
GROUPS = dict(n_expert_groups=4, n_group_used=2, n_expert_used=3, expert_weights_scale=2.5)

FILES = {
    "own": Spec(nextn="own", norm_noise=0.3, seed=261),
    "tied": Spec(nextn="tied", norm_noise=0.3, seed=262, n_layer=3, **GROUPS),
    "trunk_only": Spec(nextn="none", seed=263),                   # a quant that dropped the NextN tensors
    "no_mtp": Spec(nextn="none", nextn_declared=False, seed=263),  # the converter's --no-mtp
    "f16": Spec(nextn="own", dtype="f16", norm_noise=0.3, seed=264, **AMX_SHAPED),
    "q8_0": Spec(nextn="own", dtype="q8_0", norm_noise=0.3, seed=265, **AMX_SHAPED),
}


@pytest.fixture(scope="module")
def files(tmp_path_factory) -> dict[str, str]:
    d = tmp_path_factory.mktemp("deepseek32")
    return {k: str(D.write_synthetic(d / f"{k}.gguf", spec)) for k, spec in FILES.items()}


@pytest.fixture(scope="module")
def models(files):
    opened = {}
    try:
        for k in ("own", "tied"):
            opened[k] = mtpllama.Model(files[k], session_defaults=ONE_THREAD)
        yield opened
    finally:
        for m in opened.values():
            m.close()


# --- the writer ------------------------------------------------------------------------------------------

def test_writer_lays_out_as_the_converter(tmp_path):
    """deepseek.py's DeepseekV32Model on DeepseekV2Model: the MLA keys and tensors, the gating key, the
    indexer keys (no types key), and the indexer's tensors in every block, the NextN block's included
    (indexer.proj kept f32)."""
    import gguf

    from mtpllama.testing import train_bpe

    spec = Spec(dtype="f16", seed=1)
    tok = train_bpe(n_merges=spec.n_merges)
    path = D.write_synthetic(tmp_path / "layout.gguf", spec, tok)
    r = gguf.GGUFReader(str(path))
    kv = {k: f.contents() for k, f in r.fields.items() if k.startswith("deepseek32.")}
    a = "deepseek32."
    assert kv[a + "block_count"] == spec.n_layer + 1 and kv[a + "nextn_predict_layers"] == 1
    assert kv[a + "attention.head_count_kv"] == 1 and kv[a + "expert_gating_func"] == 2
    assert kv[a + "attention.key_length"] == spec.kv_lora_rank + spec.qk_rope_head_dim
    assert kv[a + "attention.key_length_mla"] == spec.qk_nope_head_dim + spec.qk_rope_head_dim
    assert kv[a + "attention.indexer.head_count"] == spec.n_index_head
    assert kv[a + "attention.indexer.key_length"] == spec.index_head_dim
    assert kv[a + "attention.indexer.top_k"] == spec.index_top_k
    assert a + "attention.indexer.types" not in kv
    t = {x.name: x for x in r.tensors}
    shape = {n: [int(v) for v in x.shape] for n, x in t.items()}   # GGUF ne order
    Hi, Dk, ql, d = spec.n_index_head, spec.index_head_dim, spec.q_lora_rank, spec.n_embd
    for il in range(spec.n_layer + 1):
        p = f"blk.{il}.indexer."
        assert shape[p + "attn_q_b.weight"] == [ql, Hi * Dk]
        assert shape[p + "attn_k.weight"] == [d, Dk]
        assert shape[p + "k_norm.weight"] == [Dk] and shape[p + "k_norm.bias"] == [Dk]
        assert shape[p + "proj.weight"] == [d, Hi]
        assert t[p + "proj.weight"].tensor_type == gguf.GGMLQuantizationType.F32
        assert t[p + "attn_k.weight"].tensor_type == gguf.GGMLQuantizationType.F16
        assert shape[f"blk.{il}.attn_k_b.weight"] == [spec.qk_nope_head_dim, spec.kv_lora_rank, spec.n_head]


# --- inspect and bad files ---------------------------------------------------------------------------------

def test_inspect(files):
    own, tied, trunk = (mtpllama.inspect(files[k]) for k in ("own", "tied", "trunk_only"))
    assert own.arch == "deepseek32" and own.supported and own.has_mtp and own.n_layer_nextn == 1
    assert own.block_count == FILES["own"].n_layer + 1
    assert tied.has_mtp and tied.block_count == 4
    assert not trunk.has_mtp and "trunk-only" in trunk.mtp_problem


def test_nextn_block_without_indexer_is_refused(tmp_path):
    """The loader requires the indexer in every block (deepseek32.cpp:110-114), the NextN block's too,
    though graph_mtp never uses it; with MTP off it skips only the tensors present, so a NextN block
    without its indexer fails to load either way: inspect and Model refuse it with our message."""
    from mtpllama.testing import train_bpe

    spec = Spec(nextn="own", seed=266)
    tok = train_bpe(n_merges=spec.n_merges)
    W = {k: v for k, v in D.synthetic_weights(spec, tok).items() if not k.startswith(f"blk.{spec.n_layer}.indexer.")}
    path = str(D.write_synthetic(tmp_path / "no_nextn_indexer.gguf", spec, tok, weights=W))
    for load in (mtpllama.inspect, lambda p: mtpllama.Model(p, mtp=True), lambda p: mtpllama.Model(p, mtp=False)):
        with pytest.raises(mtpllama.ModelLoadError, match="requires the DSA indexer in every block"):
            load(path)


@pytest.mark.parametrize("key", ["trunk_only", "no_mtp"])
def test_trunk_only_file(files, key):
    with pytest.raises(mtpllama.NoMtpHeadError):
        mtpllama.Model(files[key], mtp=True)
    with mtpllama.Model(files[key], mtp=False, session_defaults=ONE_THREAD) as m:
        assert len(m.generate("def foo(x):", 24).tokens) == 24      # past top_k: the indexer chooses
    assert mtpllama.inspect(files[key]).kind == "trunk-only"


def test_split_halves_draft_as_the_full_file(files, tmp_path):
    """extract_mtp / extract_trunk (the converter's --mtp / --no-mtp): the trunk with its head file
    (the NextN block's indexer goes with the head) drafts exactly as the full file."""
    full = files["tied"]
    head, trunk = check_split_halves(full, tmp_path)
    other = D.write_synthetic(tmp_path / "other.gguf", dataclasses.replace(FILES["tied"], index_top_k=32))
    with pytest.raises(mtpllama.MtpMismatchError, match="top_k"):       # another indexer's head
        mtpllama.Model(str(other), mtp_path=head)


# deepseek32's own rows: the gating function is required, and 0 (none) aborts in build_moe_ffn
BAD_KEYS = MLA_BAD_KEYS + DSA_BAD_KEYS + [
    ({"expert_gating_func": None}, "expert_gating_func missing or not 1"),
    ({"expert_gating_func": u32(0)}, "expert_gating_func missing or not 1"),
    ({"expert_gating_func": u32(3)}, "expert_gating_func missing or not 1"),
]


@pytest.mark.parametrize("keys,message", BAD_KEYS, ids=[f"{i}-" + ",".join(k) + ("" if all(k.values()) else "-dropped")
                                                        for i, (k, _) in enumerate(BAD_KEYS)])
def test_bad_hyperparameters_fail_clearly(tmp_path, keys, message):
    """Each is something llama.cpp's loader or deepseek32 graphs assert on (aborting the process), or
    that breaks the cache shapes: inspect and Model refuse the file with our message first."""
    bad_file_fails_clearly(str(D.write_synthetic(tmp_path / "bad.gguf", Spec(seed=71), keys=keys)), message)


def test_indexer_shorter_than_rope_fails_clearly(tmp_path):
    """Each indexer head is [rope | nope]: the trunk graph asserts n_rot <= indexer key_length."""
    spec = Spec(seed=73, qk_rope_head_dim=80, qk_nope_head_dim=16)               # n_rot 80 > 64
    bad_file_fails_clearly(str(D.write_synthetic(tmp_path / "bad.gguf", spec)), "at least rope.dimension_count")


def test_good_variations_load(tmp_path):
    """Legal files the rules must not refuse: softmax gating, no weights norm, a dense lead reaching
    the last trunk layer, top_k beyond any context (dense), V3.2's YaRN and routing."""
    for i, spec in enumerate([
        Spec(gating=1, seed=80),
        Spec(expert_weights_norm=False, expert_weights_scale=2.5, seed=82),
        Spec(n_layer=3, n_dense_lead=3, seed=83),
        Spec(index_top_k=4096, seed=87),
        Spec(rope_scaling="yarn", rope_factor=40.0, yarn_orig_ctx=64, mscale_all_dim=1.0, seed=88, **GROUPS),
    ]):
        path = str(D.write_synthetic(tmp_path / f"good{i}.gguf", spec))
        assert mtpllama.inspect(path).has_mtp, spec
        with mtpllama.Model(path, session_defaults=ONE_THREAD) as m:
            r = m.generate(PROMPT, 24, spec=SpecConfig(2, 0.0, adaptive=False))
            assert len(r.tokens) == 24 and r.tokens == m.generate(PROMPT, 24, mtp=False).tokens


def test_mla_weights_do_not_abort(files):
    """f16 and q8_0 files with AMX-aligned MLA shapes decode lone rows and batches in a child process
    (patches/0013 keeps the 3-D attn_k_b/attn_v_b off the AMX buffer, as for deepseek2)."""
    for key in ("f16", "q8_0"):
        r = decodes_in_a_child(files[key])
        assert r.returncode == 0 and r.stdout.strip() == "24", f"{key}: exit status {r.returncode}: {r.stderr[-2000:]}"


# --- greedy MTP == plain -------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def plain_outputs(models):
    return {(f, p): models[f].generate(p, 64, mtp=False) for f in ("own", "tied") for p in PROMPTS}


GREEDY_CASES = ([("own", k, p) for k in range(1, 7) for p in (0.0, 0.85)]
                + [("tied", k, 0.0) for k in (1, 3, 6)])


@pytest.mark.parametrize("flavour,draft_max,p_min", GREEDY_CASES)
def test_mtp_equals_plain(models, plain_outputs, flavour, draft_max, p_min):
    """22 prompts x 64 tokens after prompts of 1-10 tokens (most rows see more than top_k cells),
    fixed draft lengths 1..6 with and without a confidence floor (the tied head at 1, 3 and 6)."""
    check_mtp_equals_plain(models[flavour], plain_outputs, flavour, PROMPTS, draft_max, p_min)


@pytest.mark.parametrize("dtype", ["f16", "q8_0"])
@pytest.mark.parametrize("draft_max", [1, 3, 6])
def test_mtp_equals_plain_low_precision(files, dtype, draft_max):
    with mtpllama.Model(files[dtype], session_defaults=ONE_THREAD) as m:
        for prompt in PROMPTS[:6]:
            plain = m.generate(prompt, 40, mtp=False)
            mtp = m.generate(prompt, 40, spec=SpecConfig(draft_max, 0.0, adaptive=False))
            assert mtp.tokens == plain.tokens, f"prompt {prompt!r}"


def test_adaptive_is_lossless(models):
    model = models["tied"]
    for prompt in PROMPTS[:4]:
        assert model.generate(prompt, 60, spec=SpecConfig(4, 0.0)).tokens == model.generate(prompt, 60, mtp=False).tokens


# --- batch invariance ------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def invariance_files(tmp_path_factory):
    d = tmp_path_factory.mktemp("deepseek32_invariance")
    out = {}
    for n_head in (4, 20):
        for dtype in ("f32", "f16", "q8_0"):
            spec = Spec(nextn="own", dtype=dtype, n_head=n_head, n_embd=128, n_ff=256, n_ff_exp=64,
                        norm_noise=0.3, seed=281, **AMX_SHAPED)
            out[(n_head, dtype)] = str(D.write_synthetic(d / f"h{n_head}_{dtype}.gguf", spec))
    return out


@pytest.mark.parametrize("n_head", [4, 20])
@pytest.mark.parametrize("dtype", ["f32", "f16", "q8_0"])
@pytest.mark.parametrize("k", [1, 2, 3, 4])
def test_verified_rows_equal_lone_rows(invariance_files, n_head, dtype, k):
    """Batches of 2..5 rows against plain decoding's lone rows, bit for bit, past top_k, with an indexer
    in every layer (see test_arch_glm_dsa.py's twin for what the indexer adds to the products)."""
    with mtpllama.Model(invariance_files[(n_head, dtype)]) as m:
        same, diff = compare(m, PROMPT, 48, k, threads=1)
    assert same >= 20 and diff == 0, (same, diff)


# --- the numpy reference ------------------------------------------------------------------------------------------

# Every option at least once: own/tied heads, sigmoid/softmax, V3.2's expert groups and routed scale,
# 0/1/2 dense layers, f32 and f16, YaRN with V3.2's mscale_all_dim 1 and with another (deepseek32 takes
# mscale 1, not deepseek2's special case), and a top_k beyond the context (dense).  The contexts (200-330
# cells) are 12-20 times top_k.
NEAR_TIE = 2e-4          # MLA's engine rows sit ~1e-4 (relative) from the reference (test_arch_deepseek2.py)
FOLLOW = 1e-3            # indexer near-ties (relative score gap) the replay may follow
FLAVOURS = {
    "ds_own": Flavour(Spec(nextn="own", norm_noise=0.3, seed=291), PROMPT, 180, 0.0, TOL_F32, near_tie=NEAR_TIE),
    "ds_tied_groups_yarn": Flavour(Spec(nextn="tied", n_dense_lead=0, rope_scaling="yarn", rope_factor=40.0,
                                        yarn_orig_ctx=64, mscale_all_dim=1.0, norm_noise=0.3, seed=292, **GROUPS),
                                   LONG_PROMPT, 150, 0.2, TOL_F32, near_tie=NEAR_TIE),
    "ds_softmax_yarn_mscale": Flavour(Spec(nextn="own", gating=1, expert_weights_norm=False, rope_scaling="yarn",
                                           rope_factor=4.0, yarn_orig_ctx=256, mscale_all_dim=0.707, norm_noise=0.3,
                                           seed=293), PROMPT, 180, 0.0, TOL_F32, near_tie=NEAR_TIE),
    "ds_f16_dense2": Flavour(Spec(nextn="own", dtype="f16", n_layer=3, n_dense_lead=2, n_expert_shared=2,
                                  norm_noise=0.3, seed=294, **AMX_SHAPED), PROMPT, 180, 0.0, TOL_F16, near_tie=1e-3),
    "ds_wide_top_k": Flavour(Spec(nextn="own", index_top_k=512, norm_noise=0.3, seed=295), PROMPT, 180, 0.0, TOL_F32,
                             near_tie=NEAR_TIE),
}
GOOD = list(FLAVOURS)


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    return make_runs(tmp_path_factory.mktemp("deepseek32_reference"), D, R, FLAVOURS, FOLLOW)


@pytest.fixture(scope="module")
def small_ref(tmp_path_factory):
    spec = Spec(nextn="own", n_layer=3, norm_noise=0.3, seed=5, **GROUPS)
    hp, W, f16 = R.load_gguf(D.write_synthetic(tmp_path_factory.mktemp("ds_ref") / "small.gguf", spec))
    return R.Reference(hp, W, f16, R.Variant(kv_f16=False, attn="exact"))


def test_reference_batch_equals_incremental(small_ref):
    """One batch over a sequence longer than top_k == the same rows one at a time (causality, the
    latent and indexer caches of every layer, the MTP block's cache)."""
    check_batch_equals_incremental(small_ref, 60)


def test_reference_sparse_only_past_top_k(small_ref):
    """Rows with at most top_k causal cells attend to all of them (dense MLA, exactly); later rows
    do not; the Hadamard rotation changes no score (exact arithmetic)."""
    toks = list(range(5, 5 + 3 * TOP_K))
    sparse, _ = small_ref.trunk_forward(toks)
    dense, _ = small_ref.with_variant(topk="dense").trunk_forward(toks)
    assert R.rel_err(sparse[:TOP_K], dense[:TOP_K]) < 1e-13
    assert R.rel_err(sparse[TOP_K + 4:], dense[TOP_K + 4:]) > 1e-2
    Hm = R.hadamard(small_ref.hp.index_head_dim)
    np.testing.assert_allclose(Hm @ Hm, np.eye(len(Hm)), atol=1e-14)


def test_reference_rope_is_relative(small_ref):
    """A common shift of positions changes nothing (the MLA and indexer ropes rotate q and k alike);
    a different spacing does."""
    check_rope_is_relative(small_ref, R.rel_err, 40)


@pytest.mark.parametrize("name", dsa_reference_params({n: FLAVOURS[n] for n in GOOD}))
def test_engine_matches_reference(runs, name):
    check_engine_matches_reference(name, runs(name), FLAVOURS[name])


def test_n_kv_above_top_k_is_exercised(runs):
    """The runs attend sparsely: most trunk rows saw more than top_k cells, and a dense reference
    (the indexer ignored) is far from the engine, while with a top_k beyond the context it is the
    reference itself (n_kv <= top_k is dense MLA)."""
    run = runs("ds_own")
    assert run.n_prompt + FLAVOURS["ds_own"].n_gen > 10 * TOP_K
    assert run.ref.sparse_rows > 100
    dense = R.replay(run.ref.with_variant(topk="dense"), run.events)
    assert dense.max_err("trunk_logits") > 25 * TOL_F32
    wide = runs("ds_wide_top_k")
    assert wide.ref.sparse_rows == 0
    assert R.replay(wide.ref.with_variant(topk="dense"), wide.events).max_err("trunk_logits") < TOL_F32


def test_mtp_output_state_of_multi_row_batch(runs):
    """patches/0014: without it every batched row reports row 0's state (err_vs_row0 ~ 0, err large)."""
    res = runs("ds_own").replay
    rows = [r for r in res.select("mtp_h", batched=True) if r.row > 0]
    assert len(rows) > 10
    worst = max(rows, key=lambda r: r.err)
    assert worst.err < TOL_F32, f"{worst}; max error against row 0: {max(r.err_vs_row0 for r in rows):.1e}"


def test_yarn_attn_factor_is_not_deepseek2s(runs):
    """With YaRN and mscale_all_dim != 1, llama.cpp takes mscale = 1 for deepseek32
    (llama-context.cpp:184-200: only DEEPSEEK2 takes mscale = mscale_all_dim), so attn_factor is
    get_mscale(f, 1) / get_mscale(f, mscale_all_dim) / (1 + 0.1 ln f), not 1 / (1 + 0.1 ln f): a
    reference with deepseek2's ratio is off (the rotated dims and the attention scale both move)."""
    run = runs("ds_softmax_yarn_mscale")
    hp = run.ref.hp
    assert hp.ext_factor == 1.0 and hp.yarn_log_mul == pytest.approx(0.707, rel=1e-6)
    f = 1.0 / hp.freq_scale
    other = R.Reference(dataclasses.replace(hp, attn_factor=1.0 / (1.0 + 0.1 * np.log(f))), run.ref.W, run.ref.f16)
    end = tie_end(run.replay, FLAVOURS["ds_softmax_yarn_mscale"])
    assert err_before(run.replay, "trunk_logits", end) < TOL_F32
    assert err_before(R.replay(other, run.events), "trunk_logits", end) > 25 * TOL_F32


BROKEN = [
    # (flavour, variant, how MTP rows get trunk states, the category that must catch it)
    ("ds_own", dict(concat="h_e"), "engine", "mtp_logits"),                # eh_proj input halves swapped
    ("ds_own", dict(trunk_h="pre_norm"), "engine", "trunk_h"),             # hand-over before output_norm
    ("ds_own", dict(mtp_h="pre_norm"), "engine", "mtp_h"),                 # fed back before shared_head_norm
    ("ds_own", dict(rope="neox"), "engine", "trunk_logits"),               # MLA: NeoX pairs (the indexer's) instead
    ("ds_own", dict(kv_norm=False), "engine", "trunk_logits"),             # latent not normalised
    ("ds_own", dict(scale="r_dr"), "engine", "trunk_logits"),              # 1/sqrt(r + dr) as the scale
    ("ds_own", dict(topk="dense"), "engine", "trunk_logits"),              # the indexer ignored
    ("ds_own", dict(index_rope="other"), "engine", "trunk_logits"),        # indexer rope NORM (glm-dsa's)
    ("ds_own", dict(index_rope_dims="last"), "engine", "trunk_logits"),    # indexer head [nope | rope]
    ("ds_own", dict(index_relu=False), "engine", "trunk_logits"),          # no ReLU on q.k
    ("ds_own", dict(index_k_norm="rms"), "engine", "trunk_logits"),        # RMS instead of LayerNorm (with bias)
    ("ds_tied_groups_yarn", dict(groups=False), "engine", "trunk_logits"),  # expert groups ignored
]


@pytest.mark.parametrize("name,variant,trunk_h_from,category", BROKEN,
                         ids=[f"{n}-{'-'.join(f'{k}={v}' for k, v in v_.items())}-{m}" for n, v_, m, _ in BROKEN])
def test_broken_reference_is_detected(runs, name, variant, trunk_h_from, category):
    # every indexer variant moves a logit by 25 tol (measured: the selection changes where a row's
    # top_k differs, so the attention output's change depends on the scores' spread)
    run = runs(name)
    bad = R.replay(run.ref.with_variant(**variant), run.events, trunk_h_from=trunk_h_from)
    check_broken_reference(run, FLAVOURS[name], run.replay, bad, category)


# --- sampling ------------------------------------------------------------------------------------------------

N_SAMPLED = 2500  # the prompt (past top_k) is evaluated again for every sample


@pytest.mark.slow
def test_sampled_mtp_has_plain_sampling_distribution(models):
    """As test_arch_deepseek2.py's, from a prompt longer than top_k (the indexer chooses): the joint
    distribution of the first 4 tokens equals plain sampling's, and an accept-everything verifier
    is told apart."""
    model = models["tied"]
    prompt = model.tokenize(LONG_PROMPT)[: TOP_K + 8]
    assert len(prompt) == TOP_K + 8
    check_sampled_distribution(model, prompt, N_SAMPLED)


# --- fuzzing ------------------------------------------------------------------------------------------------

@pytest.mark.slow
def test_fuzzed_files_never_crash_or_hang(tmp_path):
    """Mutants of a deepseek32 file with expert groups: each loads and generates or raises
    MtpllamaError (tests/fuzz_gguf.py)."""
    import os

    import fuzz_gguf

    base = D.write_synthetic(tmp_path / "base.gguf", Spec(nextn="own", n_expert_groups=4, n_group_used=2,
                                                          n_expert_used=3, seed=279))
    n = int(os.environ.get("MTPLLAMA_FUZZ_CASES", "1500")) // 3
    failures = fuzz_gguf.run(str(base), n, seed=4, batch=250, timeout_per_case=20.0)
    assert not failures, failures[:5]


def test_mtp_context_reserves_ffn_for_output_rows_only(tmp_path):
    """patches/0014 (0004's half for DSA): the NextN block runs its FFN on output rows only, so the MTP
    context's compute buffer grows with n_batch by attention-sized rows, not by every row's
    routed-expert intermediates."""
    spec = Spec(nextn="own", n_expert=8, n_expert_used=4, n_ff_exp=512, seed=3)
    path = D.write_synthetic(tmp_path / "wide_ffn.gguf", spec)
    check_mtp_ffn_on_output_rows(str(path), spec)
