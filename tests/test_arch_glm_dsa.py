"""glm-dsa (GLM-5/5.1/5.2: MLA with DeepSeek Sparse Attention, one NextN block): what
test_arch_deepseek2.py checks, for this architecture (docs/dsa.md).

* the writer lays keys and tensors out as llama.cpp's converter does (indexers in the full trunk
  layers only, none in shared layers or the NextN block);
* inspect: a good file is supported with a usable NextN block; every rule of csrc/arch/glm_dsa.cpp
  (and the MLA rules it shares, csrc/arch/mla.cpp) fails with our message instead of an abort;
* greedy MTP == greedy plain, own and tied heads, all-full and GLM-5.2-style full/shared indexers,
  f32, f16 and q8_0, over contexts longer than top_k (16): the indexer chooses;
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
from mla_cases import (DSA_BAD_KEYS, MLA_BAD_KEYS, bad_file_fails_clearly, bools, check_batch_equals_incremental,
                       check_broken_reference, check_engine_matches_reference, check_mtp_equals_plain,
                       check_rope_is_relative, check_sampled_distribution, check_split_halves, decodes_in_a_child,
                       dsa_reference_params, err_before, make_runs, string, tie_end, u32)
from recurrent_cases import check_mtp_ffn_on_output_rows
from mtpllama import SpecConfig
from mtpllama.testing.arch import WRITERS
from mtpllama.testing.fixtures import ONE_THREAD, PROMPTS
from reference import REFERENCES
from test_batch_invariance import compare
from test_reference import LONG_PROMPT, PROMPT, TOL_F16, TOL_F32, Flavour

D = WRITERS["glm-dsa"]
R = REFERENCES["glm-dsa"]
Spec = D.SyntheticSpec
TOP_K = Spec().index_top_k

# dn = 32 and r = 64 meet AMX's f16/q8_0 alignment (patches/0013, as in test_arch_deepseek2.py);
# key_length r + dr = 80 stays away from the indexer's 64 (llama.cpp would then rotate the MLA cache too)
AMX_SHAPED = dict(qk_nope_head_dim=32, kv_lora_rank=64, v_head_dim=32)
SHARED = dict(n_layer=3, indexer_types=(True, False, True))     # GLM-5.2's full/shared pattern, in small

FILES = {
    "own": Spec(nextn="own", norm_noise=0.3, seed=161),           # every layer full (no types key, ctx < 1M)
    "tied_shared": Spec(nextn="tied", norm_noise=0.3, seed=162, **SHARED),
    "trunk_only": Spec(nextn="none", seed=163),                   # a quant that dropped the NextN tensors
    "no_mtp": Spec(nextn="none", nextn_declared=False, seed=163),  # the converter's --no-mtp
    "f16": Spec(nextn="own", dtype="f16", norm_noise=0.3, seed=164, **AMX_SHAPED),
    "q8_0": Spec(nextn="own", dtype="q8_0", norm_noise=0.3, seed=165, **AMX_SHAPED),
}


@pytest.fixture(scope="module")
def files(tmp_path_factory) -> dict[str, str]:
    d = tmp_path_factory.mktemp("glm_dsa")
    return {k: str(D.write_synthetic(d / f"{k}.gguf", spec)) for k, spec in FILES.items()}


@pytest.fixture(scope="module")
def models(files):
    opened = {}
    try:
        for k in ("own", "tied_shared"):
            opened[k] = mtpllama.Model(files[k], session_defaults=ONE_THREAD)
        yield opened
    finally:
        for m in opened.values():
            m.close()


# --- the writer ------------------------------------------------------------------------------------------

def test_writer_lays_out_as_the_converter(tmp_path):
    """glm.py's GlmMoeDsaModel on deepseek.py: the MLA keys and tensors, the indexer keys, the types
    as a bool array over the trunk layers, indexer tensors in full layers only (indexer.proj kept
    f32), none in the NextN block."""
    import gguf

    from mtpllama.testing import train_bpe

    spec = Spec(dtype="f16", seed=1, **SHARED)
    tok = train_bpe(n_merges=spec.n_merges)
    path = D.write_synthetic(tmp_path / "layout.gguf", spec, tok)
    r = gguf.GGUFReader(str(path))
    kv = {k: f.contents() for k, f in r.fields.items() if k.startswith("glm-dsa.")}
    a = "glm-dsa."
    assert kv[a + "block_count"] == spec.n_layer + 1 and kv[a + "nextn_predict_layers"] == 1
    assert kv[a + "attention.head_count_kv"] == 1
    assert kv[a + "attention.key_length"] == spec.kv_lora_rank + spec.qk_rope_head_dim
    assert kv[a + "attention.key_length_mla"] == spec.qk_nope_head_dim + spec.qk_rope_head_dim
    assert kv[a + "attention.indexer.head_count"] == spec.n_index_head
    assert kv[a + "attention.indexer.key_length"] == spec.index_head_dim
    assert kv[a + "attention.indexer.top_k"] == spec.index_top_k
    assert kv[a + "attention.indexer.types"] == [True, False, True]
    assert r.fields[a + "attention.indexer.types"].types == [gguf.GGUFValueType.ARRAY, gguf.GGUFValueType.BOOL]
    t = {x.name: x for x in r.tensors}
    shape = {n: [int(v) for v in x.shape] for n, x in t.items()}   # GGUF ne order
    Hi, Dk, ql, d = spec.n_index_head, spec.index_head_dim, spec.q_lora_rank, spec.n_embd
    for il in range(spec.n_layer + 1):
        p = f"blk.{il}.indexer."
        if il < spec.n_layer and spec.indexer_types[il]:
            assert shape[p + "attn_q_b.weight"] == [ql, Hi * Dk]
            assert shape[p + "attn_k.weight"] == [d, Dk]
            assert shape[p + "k_norm.weight"] == [Dk] and shape[p + "k_norm.bias"] == [Dk]
            assert shape[p + "proj.weight"] == [d, Hi]
            assert t[p + "proj.weight"].tensor_type == gguf.GGMLQuantizationType.F32
            assert t[p + "attn_q_b.weight"].tensor_type == gguf.GGMLQuantizationType.F16
            assert t[p + "k_norm.bias"].tensor_type == gguf.GGMLQuantizationType.F32
        else:
            assert not any(n.startswith(p) for n in t), f"indexer tensors in block {il}"
        assert shape[f"blk.{il}.attn_k_b.weight"] == [spec.qk_nope_head_dim, spec.kv_lora_rank, spec.n_head]


def test_reference_reads_the_layer_types(tmp_path):
    """The reference resolves the indexer layers as glm-dsa.cpp:59-66: the types key, else all full
    below a 1048576-token training context, else GLM-5.2's pattern (0, 1, then every fourth from 2)."""
    for spec, want in [(Spec(**SHARED), (True, False, True)), (Spec(n_layer=4), (True,) * 4),
                       (Spec(n_layer=4, n_ctx_train=1048576), (True, True, True, False))]:
        assert tuple(D.full_layers(spec)) == want
        path = D.write_synthetic(tmp_path / "types.gguf", spec)
        assert R.load_gguf(path)[0].index_full == want


# --- inspect and bad files ---------------------------------------------------------------------------------

def test_inspect(files):
    own, shared, trunk = (mtpllama.inspect(files[k]) for k in ("own", "tied_shared", "trunk_only"))
    assert own.arch == "glm-dsa" and own.supported and own.has_mtp and own.n_layer_nextn == 1
    assert own.block_count == FILES["own"].n_layer + 1
    assert shared.has_mtp and shared.block_count == 4
    assert not trunk.has_mtp and "trunk-only" in trunk.mtp_problem


@pytest.mark.parametrize("key", ["trunk_only", "no_mtp"])
def test_trunk_only_file(files, key):
    with pytest.raises(mtpllama.NoMtpHeadError):
        mtpllama.Model(files[key], mtp=True)
    with mtpllama.Model(files[key], mtp=False, session_defaults=ONE_THREAD) as m:
        assert len(m.generate("def foo(x):", 24).tokens) == 24      # past top_k: the indexer chooses
    assert mtpllama.inspect(files[key]).kind == "trunk-only"


def test_split_halves_draft_as_the_full_file(files, tmp_path):
    """extract_mtp / extract_trunk of a file with GLM-5.2's types key (one entry per trunk layer, kept
    whole in both halves): the trunk with its head file drafts exactly as the full file."""
    full = files["tied_shared"]
    head, trunk = check_split_halves(full, tmp_path)
    other = D.write_synthetic(tmp_path / "other.gguf", dataclasses.replace(FILES["tied_shared"], index_top_k=32))
    with pytest.raises(mtpllama.MtpMismatchError, match="top_k"):       # another indexer's head
        mtpllama.Model(str(other), mtp_path=head)


# glm-dsa's own rows: gating (0/absent falls back to sigmoid, so only > 2 is refused) and the layer types
BAD_KEYS = MLA_BAD_KEYS + DSA_BAD_KEYS + [
    ({"expert_gating_func": u32(3)}, "expert_gating_func must be 0, 1"),
    ({"attention.indexer.types": bools([False, True])}, "layer 0 shared"),
    ({"attention.indexer.types": bools([True, True, True])}, "one entry per trunk layer"),
    ({"attention.indexer.types": string("full")}, "indexer.types must be an array"),
    ({"attention.indexer.types": u32(0)}, "layer 0 shared"),                 # a scalar fills every layer
]


@pytest.mark.parametrize("keys,message", BAD_KEYS, ids=[f"{i}-" + ",".join(k) + ("" if all(k.values()) else "-dropped")
                                                        for i, (k, _) in enumerate(BAD_KEYS)])
def test_bad_hyperparameters_fail_clearly(tmp_path, keys, message):
    """Each is something llama.cpp's loader or glm-dsa graphs assert on (aborting the process), or
    that breaks the cache shapes: inspect and Model refuse the file with our message first."""
    bad_file_fails_clearly(str(D.write_synthetic(tmp_path / "bad.gguf", Spec(seed=71), keys=keys)), message)


def test_full_layer_without_indexer_fails_clearly(tmp_path):
    """The loader takes indexer tensors as optional, but a full layer's graph uses them unchecked
    (a null dereference): a types key marking a layer full whose tensors are absent is refused."""
    path = D.write_synthetic(tmp_path / "bad.gguf", Spec(seed=72, **SHARED),
                             keys={"attention.indexer.types": bools([True, True, True])})
    bad_file_fails_clearly(str(path), "trunk layer 1 has a full indexer but no blk.1.indexer")


def test_indexer_shorter_than_rope_fails_clearly(tmp_path):
    """Each indexer head is [rope | nope]: the trunk graph asserts n_rot <= indexer key_length."""
    spec = Spec(seed=73, qk_rope_head_dim=80, qk_nope_head_dim=16)               # n_rot 80 > 64
    bad_file_fails_clearly(str(D.write_synthetic(tmp_path / "bad.gguf", spec)), "at least rope.dimension_count")


def test_good_variations_load(tmp_path):
    """Legal files the rules must not refuse: no gating key (sigmoid), expert groups, no weights
    norm, a dense lead reaching the last trunk layer, GLM-5.2's default pattern (no types key, a 1M
    training context: layer 3 shared), types as one uint32, a NextN block with an indexer, top_k
    beyond any context (dense), and a YaRN multiplier glm-dsa's loader ignores."""
    import gguf

    for i, (spec, keys) in enumerate([
        (Spec(gating=0, seed=80), None),
        (Spec(n_expert_groups=4, n_group_used=2, n_expert_used=3, seed=81), None),
        (Spec(expert_weights_norm=False, expert_weights_scale=2.5, seed=82), None),
        (Spec(n_layer=3, n_dense_lead=3, seed=83), None),
        (Spec(n_layer=4, n_ctx_train=1048576, seed=84), None),
        (Spec(seed=85), {"attention.indexer.types": (1, gguf.GGUFValueType.UINT32)}),
        (Spec(nextn_indexer=True, seed=86), None),
        (Spec(index_top_k=4096, seed=87), None),
        (Spec(rope_scaling="yarn", rope_factor=4.0, yarn_orig_ctx=256, mscale_all_dim=0.707, seed=88), None),
    ]):
        path = str(D.write_synthetic(tmp_path / f"good{i}.gguf", spec, keys=keys))
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
    return {(f, p): models[f].generate(p, 64, mtp=False) for f in ("own", "tied_shared") for p in PROMPTS}


GREEDY_CASES = ([("own", k, p) for k in range(1, 7) for p in (0.0, 0.85)]
                + [("tied_shared", k, 0.0) for k in (1, 3, 6)])


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
    model = models["tied_shared"]
    for prompt in PROMPTS[:4]:
        assert model.generate(prompt, 60, spec=SpecConfig(4, 0.0)).tokens == model.generate(prompt, 60, mtp=False).tokens


# --- batch invariance ------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def invariance_files(tmp_path_factory):
    d = tmp_path_factory.mktemp("glm_dsa_invariance")
    out = {}
    for n_head in (4, 20):
        for dtype in ("f32", "f16", "q8_0"):
            spec = Spec(nextn="own", dtype=dtype, n_head=n_head, n_embd=128, n_ff=256, n_ff_exp=64,
                        norm_noise=0.3, seed=181, **SHARED, **AMX_SHAPED)
            out[(n_head, dtype)] = str(D.write_synthetic(d / f"h{n_head}_{dtype}.gguf", spec))
    return out


@pytest.mark.parametrize("n_head", [4, 20])
@pytest.mark.parametrize("dtype", ["f32", "f16", "q8_0"])
@pytest.mark.parametrize("k", [1, 2, 3, 4])
def test_verified_rows_equal_lone_rows(invariance_files, n_head, dtype, k):
    """Batches of 2..5 rows against plain decoding's lone rows, bit for bit, past top_k.  The indexer
    adds products batched over its 8 heads (the Hadamard rotation, src1 {D, Hi, n}: 8 rows a slice,
    under patches/0003's threshold for a lone row and a batch alike), the fused lightning indexer
    (row-wise) and a top-k per row over n_kv cells (a batch's rows see more cells, masked)."""
    with mtpllama.Model(invariance_files[(n_head, dtype)]) as m:
        same, diff = compare(m, PROMPT, 48, k, threads=1)
    assert same >= 20 and diff == 0, (same, diff)


# --- the numpy reference ------------------------------------------------------------------------------------------

# Every option at least once: own/tied heads, all-full and full/shared indexers, sigmoid (explicit and by
# fallback)/softmax, expert groups, 0/1/2 dense layers, f32 and f16, YaRN (whose multiplier glm-dsa
# ignores), and a top_k beyond the context (dense).  The contexts (200-330 cells) are 12-20 times top_k.
NEAR_TIE = 2e-4          # MLA's engine rows sit ~1e-4 (relative) from the reference (test_arch_deepseek2.py)
FOLLOW = 1e-3            # indexer near-ties (relative score gap) the replay may follow
FLAVOURS = {
    "gd_own": Flavour(Spec(nextn="own", norm_noise=0.3, seed=191), PROMPT, 180, 0.0, TOL_F32, near_tie=NEAR_TIE),
    "gd_shared_tied_softmax_groups": Flavour(Spec(nextn="tied", gating=1, n_expert_groups=4, n_group_used=2,
                                                  n_expert_used=3, n_dense_lead=0, expert_weights_norm=False,
                                                  expert_weights_scale=2.5, norm_noise=0.3, seed=193, **SHARED),
                                             LONG_PROMPT, 150, 0.2, TOL_F32, near_tie=NEAR_TIE),
    "gd_no_gating_key_yarn": Flavour(Spec(nextn="own", gating=0, rope_scaling="yarn", rope_factor=4.0, yarn_orig_ctx=256,
                                          mscale_all_dim=0.707, norm_noise=0.3, seed=193), PROMPT, 180, 0.0, TOL_F32,
                                     near_tie=NEAR_TIE),
    "gd_f16_dense2": Flavour(Spec(nextn="own", dtype="f16", n_layer=3, n_dense_lead=2, n_expert_shared=2,
                                  norm_noise=0.3, seed=194, **AMX_SHAPED), PROMPT, 180, 0.0, TOL_F16, near_tie=1e-3),
    "gd_wide_top_k": Flavour(Spec(nextn="own", index_top_k=512, norm_noise=0.3, seed=195), PROMPT, 180, 0.0, TOL_F32,
                             near_tie=NEAR_TIE),
}
GOOD = list(FLAVOURS)


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    return make_runs(tmp_path_factory.mktemp("glm_dsa_reference"), D, R, FLAVOURS, FOLLOW)


@pytest.fixture(scope="module")
def small_ref(tmp_path_factory):
    spec = Spec(nextn="own", n_expert_groups=4, n_group_used=2, norm_noise=0.3, seed=5, **SHARED)
    hp, W, f16 = R.load_gguf(D.write_synthetic(tmp_path_factory.mktemp("gd_ref") / "small.gguf", spec))
    return R.Reference(hp, W, f16, R.Variant(kv_f16=False, attn="exact"))


def test_reference_batch_equals_incremental(small_ref):
    """One batch over a sequence longer than top_k == the same rows one at a time (causality, the
    latent and indexer caches, the shared layer's reuse, the MTP block's cache)."""
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
    run = runs("gd_own")
    assert run.n_prompt + FLAVOURS["gd_own"].n_gen > 10 * TOP_K
    assert run.ref.sparse_rows > 100
    dense = R.replay(run.ref.with_variant(topk="dense"), run.events)
    assert dense.max_err("trunk_logits") > 25 * TOL_F32
    wide = runs("gd_wide_top_k")
    assert wide.ref.sparse_rows == 0
    assert R.replay(wide.ref.with_variant(topk="dense"), wide.events).max_err("trunk_logits") < TOL_F32


def test_mtp_output_state_of_multi_row_batch(runs):
    """patches/0014: without it every batched row reports row 0's state (err_vs_row0 ~ 0, err large)."""
    res = runs("gd_own").replay
    rows = [r for r in res.select("mtp_h", batched=True) if r.row > 0]
    assert len(rows) > 10
    worst = max(rows, key=lambda r: r.err)
    assert worst.err < TOL_F32, f"{worst}; max error against row 0: {max(r.err_vs_row0 for r in rows):.1e}"


def test_gating_fallback_is_sigmoid(runs):
    """A file without expert_gating_func: glm-dsa takes sigmoid whatever its shape (not deepseek2's
    layer-count rule), and a softmax reference is far off."""
    run = runs("gd_no_gating_key_yarn")
    assert run.ref.hp.gating == "sigmoid"
    soft = R.replay(R.Reference(dataclasses.replace(run.ref.hp, gating="softmax"), run.ref.W, run.ref.f16), run.events)
    assert run.replay.max_err("trunk_logits") < TOL_F32
    assert soft.max_err("trunk_logits") > 25 * TOL_F32


def test_yarn_multiplier_is_ignored(runs):
    """glm-dsa's loader does not read rope.scaling.yarn_log_multiplier (the converter writes it): a
    reference that applies it (deepseek32's reading) is off."""
    run = runs("gd_no_gating_key_yarn")
    assert run.ref.hp.yarn_log_mul == 0.0 and run.ref.hp.ext_factor == 1.0
    import reference.deepseek2 as D2
    log_mul = 0.707                                         # the key holds 0.1 * mscale_all_dim; deepseek32 divides by 0.1
    hp = run.ref.hp
    f = 1.0 / hp.freq_scale
    attn = D2._get_mscale(f, 1.0) / D2._get_mscale(f, log_mul) / (1.0 + 0.1 * np.log(f))
    other = R.Reference(dataclasses.replace(hp, yarn_log_mul=log_mul, attn_factor=attn), run.ref.W, run.ref.f16)
    end = tie_end(run.replay, FLAVOURS["gd_no_gating_key_yarn"])
    assert err_before(run.replay, "trunk_logits", end) < TOL_F32
    assert err_before(R.replay(other, run.events), "trunk_logits", end) > 25 * TOL_F32


BROKEN = [
    # (flavour, variant, how MTP rows get trunk states, the category that must catch it)
    ("gd_own", dict(concat="h_e"), "engine", "mtp_logits"),                # eh_proj input halves swapped
    ("gd_own", dict(trunk_h="pre_norm"), "engine", "trunk_h"),             # hand-over before output_norm
    ("gd_own", dict(mtp_h="pre_norm"), "engine", "mtp_h"),                 # fed back before shared_head_norm
    ("gd_own", dict(rope="neox"), "engine", "trunk_logits"),               # MLA: NeoX pairs instead of adjacent
    ("gd_own", dict(kv_norm=False), "engine", "trunk_logits"),             # latent not normalised
    ("gd_own", dict(scale="r_dr"), "engine", "trunk_logits"),              # 1/sqrt(r + dr) as the scale
    ("gd_own", dict(topk="dense"), "engine", "trunk_logits"),              # the indexer ignored
    ("gd_own", dict(index_rope="other"), "engine", "trunk_logits"),        # indexer rope NEOX (deepseek32's)
    ("gd_own", dict(index_rope_dims="last"), "engine", "trunk_logits"),    # indexer head [nope | rope]
    ("gd_own", dict(index_relu=False), "engine", "trunk_logits"),          # no ReLU on q.k
    ("gd_own", dict(index_k_norm="rms"), "engine", "trunk_logits"),        # RMS instead of LayerNorm (with bias)
    ("gd_shared_tied_softmax_groups", dict(shared="dense"), "engine", "trunk_logits"),  # shared layers dense
    ("gd_shared_tied_softmax_groups", dict(groups=False), "engine", "trunk_logits"),    # expert groups ignored
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
    model = models["tied_shared"]
    prompt = model.tokenize(LONG_PROMPT)[: TOP_K + 8]
    assert len(prompt) == TOP_K + 8
    check_sampled_distribution(model, prompt, N_SAMPLED)


# --- fuzzing ------------------------------------------------------------------------------------------------

@pytest.mark.slow
def test_fuzzed_files_never_crash_or_hang(tmp_path):
    """Mutants of a glm-dsa file with a types key and expert groups: each loads and generates or
    raises MtpllamaError (tests/fuzz_gguf.py)."""
    import os

    import fuzz_gguf

    base = D.write_synthetic(tmp_path / "base.gguf", Spec(nextn="own", n_expert_groups=4, n_group_used=2,
                                                          n_expert_used=3, seed=179, **SHARED))
    n = int(os.environ.get("MTPLLAMA_FUZZ_CASES", "1500")) // 3
    failures = fuzz_gguf.run(str(base), n, seed=3, batch=250, timeout_per_case=20.0)
    assert not failures, failures[:5]


def test_mtp_context_reserves_ffn_for_output_rows_only(tmp_path):
    """patches/0014 (0004's half for DSA): the NextN block runs its FFN on output rows only, so the MTP
    context's compute buffer grows with n_batch by attention-sized rows, not by every row's
    routed-expert intermediates."""
    spec = Spec(nextn="own", n_expert=8, n_expert_used=4, n_ff_exp=512, seed=3)
    path = D.write_synthetic(tmp_path / "wide_ffn.gguf", spec)
    check_mtp_ffn_on_output_rows(str(path), spec)
