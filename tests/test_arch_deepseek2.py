"""deepseek2 (GLM-4.7-Flash: MLA attention, one NextN block): what glm4moe's tests check, for this
architecture (docs/mla.md, plan steps 2-5).

* the test-file writer lays keys and tensors out as llama.cpp's converter does;
* inspect: a good file is supported with a usable NextN block; every hyperparameter rule of
  csrc/arch/deepseek2.cpp fails with our message instead of a llama.cpp abort;
* greedy MTP == greedy plain, for own and tied heads, f32, f16 and q8_0;
* verified rows == lone rows (batch invariance), at 4 and 20 heads (MLA's products batch over
  heads: patches/0003 counts rows per head slice);
* logits and states against the numpy reference (reference/deepseek2.py), and broken references
  are told apart; split head files, sampling, fuzzing.
"""
from __future__ import annotations

import dataclasses
import subprocess
import sys

import numpy as np
import pytest

import mtpllama
from mtpllama import SpecConfig
from mtpllama.testing.arch import WRITERS
from mtpllama.testing.fixtures import ONE_THREAD, PROMPTS
from reference import REFERENCES
from mla_cases import (check_batch_equals_incremental, check_broken_reference, check_engine_matches_reference,
                       check_mtp_equals_plain, check_rope_is_relative, check_sampled_distribution, check_split_halves,
                       make_runs)
from recurrent_cases import check_mtp_ffn_on_output_rows
from test_batch_invariance import compare
from test_reference import LONG_PROMPT, PROMPT, TOL_F16, TOL_F32, Flavour, spec_config

D = WRITERS["deepseek2"]
R = REFERENCES["deepseek2"]
Spec = D.SyntheticSpec

# dn = 32 and r = 64 meet AMX's f16/q8_0 alignment: without patches/0013 an AMX CPU places the 3-D
# attn_k_b/attn_v_b on AMX buffers and aborts at the first decode; so the low-precision files use them
AMX_SHAPED = dict(qk_nope_head_dim=32, kv_lora_rank=64, v_head_dim=32)

FILES = {
    "own": Spec(nextn="own", norm_noise=0.3, seed=61),
    "tied": Spec(nextn="tied", norm_noise=0.3, seed=62),
    "trunk_only": Spec(nextn="none", seed=63),                           # a quant that dropped the NextN tensors
    "no_mtp": Spec(nextn="none", nextn_declared=False, seed=63),         # the converter's --no-mtp
    "f16": Spec(nextn="own", dtype="f16", norm_noise=0.3, seed=64, **AMX_SHAPED),
    "q8_0": Spec(nextn="own", dtype="q8_0", norm_noise=0.3, seed=65, **AMX_SHAPED),
}


@pytest.fixture(scope="module")
def files(tmp_path_factory) -> dict[str, str]:
    d = tmp_path_factory.mktemp("deepseek2")
    return {k: str(D.write_synthetic(d / f"{k}.gguf", spec)) for k, spec in FILES.items()}


def _decodes_in_a_child(path: str) -> subprocess.CompletedProcess:
    """Load path and decode a lone row, then batches (prompt, verification), in a child process."""
    code = ("import sys, mtpllama\n"
            "cfg = mtpllama.SessionConfig(n_threads=1)\n"
            "with mtpllama.Model(sys.argv[1], session_defaults=cfg) as m:\n"
            "    m.generate([1], 1, mtp=False)\n"
            "    r = m.generate(sys.argv[2], 12, spec=mtpllama.SpecConfig(3, 0.0, adaptive=False))\n"
            "    print(len(r.tokens))\n")
    return subprocess.run([sys.executable, "-c", code, path, PROMPT], capture_output=True, text=True, timeout=300)


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
    """deepseek.py's keys, and its tensors: kv_b split per head into attn_k_b (transposed) and
    attn_v_b, routers in f32 whatever the outtype, no attn_kv_b."""
    import gguf

    from mtpllama.testing import train_bpe

    spec = Spec(dtype="f16", seed=1)
    tok = train_bpe(n_merges=spec.n_merges)
    path = D.write_synthetic(tmp_path / "layout.gguf", spec, tok)
    r = gguf.GGUFReader(str(path))
    kv = {k: f.contents() for k, f in r.fields.items() if k.startswith("deepseek2.")}
    H, ql, rk = spec.n_head, spec.q_lora_rank, spec.kv_lora_rank
    dn, dr, dv = spec.qk_nope_head_dim, spec.qk_rope_head_dim, spec.v_head_dim
    assert kv["deepseek2.block_count"] == spec.n_layer + 1 and kv["deepseek2.nextn_predict_layers"] == 1
    assert kv["deepseek2.attention.head_count_kv"] == 1
    assert kv["deepseek2.attention.key_length"] == rk + dr and kv["deepseek2.attention.value_length"] == rk
    assert kv["deepseek2.attention.key_length_mla"] == dn + dr and kv["deepseek2.attention.value_length_mla"] == dv
    assert kv["deepseek2.attention.q_lora_rank"] == ql and kv["deepseek2.rope.dimension_count"] == dr
    assert kv["deepseek2.expert_gating_func"] == 2 and bool(kv["deepseek2.expert_weights_norm"])
    t = {x.name: x for x in r.tensors}
    shape = {n: [int(v) for v in x.shape] for n, x in t.items()}   # GGUF ne order
    for il in range(spec.n_layer + 1):
        p = f"blk.{il}."
        assert shape[p + "attn_q_a.weight"] == [spec.n_embd, ql]
        assert shape[p + "attn_q_b.weight"] == [ql, H * (dn + dr)]
        assert shape[p + "attn_kv_a_mqa.weight"] == [spec.n_embd, rk + dr]
        assert shape[p + "attn_k_b.weight"] == [dn, rk, H] and shape[p + "attn_v_b.weight"] == [rk, dv, H]
        assert shape[p + "attn_output.weight"] == [H * dv, spec.n_embd]
        assert p + "attn_kv_b.weight" not in t
        assert t[p + "attn_k_b.weight"].tensor_type == gguf.GGMLQuantizationType.F16
        assert t[p + "attn_kv_a_norm.weight"].tensor_type == gguf.GGMLQuantizationType.F32
        if il >= spec.n_dense_lead:
            assert t[p + "ffn_gate_inp.weight"].tensor_type == gguf.GGMLQuantizationType.F32
            assert shape[p + "ffn_gate_exps.weight"] == [spec.n_embd, spec.n_ff_exp, spec.n_expert]


def test_split_kv_b_is_the_models_attention(small_ref):
    """The writer's split of HF's kv_b_proj, as the reference (and llama.cpp) absorb it, is the
    model's own attention: HF's non-absorbed MLA (keys and values expanded per head from the
    latent, MHA over [k_nope | k_pe] at 1/sqrt(dn + dr)) from kv_b itself equals the reference's
    absorbed attention over split_kv_b(kv_b), in float64.  A wrong orientation of attn_k_b, a
    swapped [k | v] order or a scale over the cached width fails."""
    ref, hp = small_ref, small_ref.hp
    H, dn, dr, dv, r = hp.n_head, hp.qk_nope, hp.n_rot, hp.v_head_dim, hp.kv_lora_rank
    rng = np.random.default_rng(7)
    kv_b = rng.standard_normal((H * (dn + dv), r)) / np.sqrt(r)
    W = dict(ref.W)
    W["blk.0.attn_k_b.weight"], W["blk.0.attn_v_b.weight"] = D.split_kv_b(kv_b, H, dn, dv)
    absorbed = R.Reference(hp, W, set(), R.Variant(kv_f16=False, attn="exact", act_f16=False))
    n = 9
    x, pos = rng.standard_normal((n, hp.n_embd)), np.arange(n) + 3
    got = absorbed.attention(0, x, pos, absorbed.trunk_cache()[0])

    p = "blk.0."
    q = absorbed.mm(p + "attn_q_b.weight", absorbed.rms(absorbed.mm(p + "attn_q_a.weight", x),
                                                       p + "attn_q_a_norm.weight")).reshape(n, H, dn + dr)
    q_nope, q_pe = q[..., :dn], absorbed.rope(q[..., dn:], pos)
    kv = absorbed.mm(p + "attn_kv_a_mqa.weight", x)
    c = absorbed.rms(kv[:, :r], p + "attn_kv_a_norm.weight")
    k_pe = absorbed.rope(kv[:, None, r:], pos)[:, 0]
    per_head = kv_b.reshape(H, dn + dv, r)
    k_nope = np.einsum("hkr,mr->mhk", per_head[:, :dn], c)                    # (m, H, dn)
    v = np.einsum("hvr,mr->mhv", per_head[:, dn:], c)                          # (m, H, dv)
    s = (np.einsum("nhk,mhk->hnm", q_nope, k_nope) + np.einsum("nhd,md->hnm", q_pe, k_pe)) * absorbed.kq_scale
    s = np.where(np.tril(np.ones((n, n), bool))[None], s, -np.inf)
    s = np.exp(s - s.max(-1, keepdims=True))
    s /= s.sum(-1, keepdims=True)
    want = absorbed.mm(p + "attn_output.weight", np.einsum("hnm,mhv->nhv", s, v).reshape(n, H * dv))
    assert absorbed.kq_scale == pytest.approx(1.0 / np.sqrt(dn + dr))          # no YaRN in small_ref
    np.testing.assert_allclose(got, want, rtol=0, atol=1e-12 * np.abs(want).max())


# --- inspect and bad files ---------------------------------------------------------------------------------

def test_inspect(files):
    own, tied, trunk = (mtpllama.inspect(files[k]) for k in ("own", "tied", "trunk_only"))
    assert own.arch == "deepseek2" and own.supported and own.has_mtp and own.n_layer_nextn == 1
    assert own.attention == "MLA: 4 heads, q_lora_rank 48, kv_lora_rank 32, qk 16 + rope 16, v 16"
    assert own.block_count == FILES["own"].n_layer + 1
    assert tied.has_mtp and own.n_tensors_nextn == tied.n_tensors_nextn + 2   # own embed_tokens and head
    assert not trunk.has_mtp and "trunk-only" in trunk.mtp_problem


@pytest.mark.parametrize("key", ["trunk_only", "no_mtp"])
def test_trunk_only_file(files, key):
    with pytest.raises(mtpllama.NoMtpHeadError):
        mtpllama.Model(files[key], mtp=True)
    with mtpllama.Model(files[key], mtp=False, session_defaults=ONE_THREAD) as m:
        assert len(m.generate("def foo(x):", 8).tokens) == 8
    assert mtpllama.inspect(files[key]).kind == "trunk-only"


def test_split_halves_draft_as_the_full_file(files, tmp_path):
    """extract_mtp / extract_trunk of a deepseek2 file (the converter's --mtp / --no-mtp): the
    trunk with its head file drafts exactly as the full file, and as a trunk-only quant with it."""
    full = files["own"]
    head, trunk = check_split_halves(full, tmp_path)
    other = D.write_synthetic(tmp_path / "other.gguf", dataclasses.replace(FILES["own"], kv_lora_rank=48))
    with pytest.raises(mtpllama.MtpMismatchError, match="kv_lora_rank"):   # another MLA shape's head
        mtpllama.Model(str(other), mtp_path=head)


def _u32(v):
    import gguf
    return (v, gguf.GGUFValueType.UINT32)


def _f32(v):
    import gguf
    return (v, gguf.GGUFValueType.FLOAT32)


def _str(v):
    import gguf
    return (v, gguf.GGUFValueType.STRING)


# (keys to replace (None: drop), what the error says): one row per rule of csrc/arch/deepseek2.cpp
BAD_KEYS = [
    ({"attention.head_count": _u32(0)}, "head_count missing"),
    ({"attention.head_count_kv": _u32(4)}, "head_count_kv must be 1"),
    ({"attention.head_count_kv": None}, "head_count_kv must be 1"),
    ({"attention.q_lora_rank": None}, "q_lora_rank"),
    ({"attention.kv_lora_rank": _u32(0)}, "kv_lora_rank"),
    ({"attention.key_length_mla": None}, "key_length_mla and value_length_mla"),
    ({"attention.value_length_mla": _u32(0)}, "key_length_mla and value_length_mla"),
    ({"rope.dimension_count": None}, "rope.dimension_count"),
    ({"rope.dimension_count": _u32(7)}, "rope.dimension_count"),
    ({"rope.dimension_count": _u32(32)}, "rope.dimension_count"),      # not below key_length_mla (16 + 16)
    ({"attention.key_length": _u32(40)}, "key_length must be kv_lora_rank"),
    ({"attention.value_length": _u32(16)}, "value_length must equal"),
    ({"leading_dense_block_count": _u32(3)}, "NextN block dense"),
    ({"feed_forward_length": None}, "feed_forward_length"),
    ({"expert_count": _u32(2000)}, "expert_count exceeds"),
    ({"expert_used_count": _u32(0)}, "expert_used_count"),
    ({"expert_used_count": _u32(9)}, "expert_used_count"),
    ({"expert_shared_count": _u32(0)}, "expert_shared_count"),
    ({"expert_feed_forward_length": None}, "expert_feed_forward_length"),
    ({"expert_group_count": _u32(8)}, "below expert_count"),
    ({"expert_group_count": _u32(3), "expert_group_used_count": _u32(1)}, "multiple of expert_group_count"),
    ({"expert_group_count": _u32(4), "expert_group_used_count": _u32(4)}, "expert_group_used_count must be"),
    ({"expert_group_count": _u32(4), "expert_group_used_count": _u32(1), "expert_used_count": _u32(3)},
     "experts of the used groups"),
    ({"expert_gating_func": _u32(3)}, "expert_gating_func"),
    ({"attention.temperature_scale": _f32(0.5)}, "temperature_scale"),
    ({"attention.layer_norm_rms_epsilon": _f32(float("nan"))}, "epsilon"),
    ({"attention.layer_norm_rms_epsilon": None}, "epsilon"),
    ({"rope.freq_base": _f32(-1.0)}, "freq_base"),
    ({"rope.scaling.type": _str("bogus")}, "rope.scaling.type"),
    ({"block_count": _u32(27)}, "lite"),                                # a 26-layer trunk with a NextN block
    ({"context_length": _u32(0)}, "context_length"),
    ({"embedding_length": None}, "embedding_length"),
    ({"attention.head_count": _u32(2000)}, "head_count missing or out of range"),
    ({"attention.head_count": _str("4")}, "head_count must be a non-negative integer"),
    ({"expert_count": None}, "expert_count missing"),
    ({"attention.q_lora_rank": _u32(1 << 17)}, "q_lora_rank"),
    ({"attention.kv_lora_rank": _u32(1 << 17)}, "kv_lora_rank"),
    ({"attention.key_length_mla": _u32(5000)}, "key_length_mla and value_length_mla"),
    ({"rope.dimension_count": _u32(0)}, "rope.dimension_count"),
    ({"rope.scaling.factor": _f32(float("nan"))}, "rope.scaling.factor"),
    ({"rope.scaling.attn_factor": _f32(float("inf"))}, "attn_factor"),
    ({"rope.scaling.yarn_log_multiplier": _f32(float("nan"))}, "yarn_log_multiplier"),
    ({"expert_weights_scale": _f32(float("nan"))}, "expert_weights_scale"),
]


@pytest.mark.parametrize("keys,message", BAD_KEYS, ids=[f"{i}-" + ",".join(k) + ("" if all(k.values()) else "-dropped")
                                                        for i, (k, _) in enumerate(BAD_KEYS)])
def test_bad_hyperparameters_fail_clearly(tmp_path, keys, message):
    """Each is something llama.cpp's loader or deepseek2 graphs assert on (aborting the process) or
    that breaks the cache shapes: inspect and Model refuse the file with our message first."""
    path = str(D.write_synthetic(tmp_path / "bad.gguf", Spec(seed=71), keys=keys))
    with pytest.raises(mtpllama.ModelLoadError, match=message):
        mtpllama.inspect(path)
    with pytest.raises(mtpllama.ModelLoadError, match=message):
        mtpllama.Model(path, mtp=False)


def test_temperature_scale_needs_its_length(tmp_path):
    """A trunk-only file may carry attention temperature tuning (plain decoding builds it), but its
    set_input asserts a temperature length: without one the first decode aborted."""
    path = str(D.write_synthetic(tmp_path / "temp.gguf", Spec(nextn="none", nextn_declared=False, seed=78),
                                 keys={"attention.temperature_scale": _f32(0.5)}))
    with pytest.raises(mtpllama.ModelLoadError, match="without attention.temperature_length"):
        mtpllama.Model(path, mtp=False)


def test_good_variations_load(tmp_path):
    """Legal keys the rules must not refuse: no gating key (llama.cpp falls back), expert groups,
    no expert_weights_norm, a dense lead reaching the last trunk layer."""
    import gguf

    for i, (spec, keys) in enumerate([
        (Spec(gating=0, seed=72), None),
        (Spec(n_expert_groups=4, n_group_used=2, n_expert_used=3, seed=73), None),
        (Spec(expert_weights_norm=False, expert_weights_scale=2.5, seed=74), None),
        (Spec(n_layer=3, n_dense_lead=3, seed=75), None),
        (Spec(seed=76), {"attention.temperature_scale": (0.0, gguf.GGUFValueType.FLOAT32)}),
    ]):
        path = str(D.write_synthetic(tmp_path / f"good{i}.gguf", spec, keys=keys))
        assert mtpllama.inspect(path).has_mtp, spec
        with mtpllama.Model(path, session_defaults=ONE_THREAD) as m:
            assert len(m.generate("def foo(x):", 6, spec=SpecConfig(2, 0.0, adaptive=False)).tokens) == 6


def test_gating_fallback_by_shape(tmp_path):
    """No expert_gating_func key: llama.cpp takes sigmoid for a 47-layer trunk with GLM-4.7-Flash's
    154880-entry vocabulary (its "GLM 4.7 Lite" rule), softmax otherwise.  inspect accepts both,
    the reference follows the same rule, and the engine matches the reference's choice."""
    import gguf

    spec = Spec(nextn="own", gating=0, n_layer=47, seed=77)
    flash = D.write_synthetic(tmp_path / "flash.gguf", spec, keys={"vocab_size": (154880, gguf.GGUFValueType.UINT32)})
    other = D.write_synthetic(tmp_path / "other.gguf", spec)
    assert mtpllama.inspect(str(flash)).has_mtp and mtpllama.inspect(str(other)).has_mtp
    assert R.load_gguf(flash)[0].gating == "sigmoid" and R.load_gguf(other)[0].gating == "softmax"
    hp, W, f16 = R.load_gguf(flash)
    with mtpllama.Model(str(flash), session_defaults=ONE_THREAD) as m:
        toks = m.tokenize(PROMPT)[:12]
        with m.session() as s:
            s.debug_record()
            s.generate(toks, 4, spec=spec_config(2, 0.0))
            events = s.debug_events()
    ref = R.Reference(hp, W, f16)
    assert R.replay(ref, events).max_err("trunk_logits") < TOL_F32
    soft = R.Reference(dataclasses.replace(hp, gating="softmax"), W, f16)
    assert R.replay(soft, events).max_err("trunk_logits") > 25 * TOL_F32


def test_mla_weights_do_not_abort(files):
    """f16 and q8_0 files with AMX-aligned MLA shapes decode lone rows and batches in a child
    process.  On a CPU with AMX the child dies of SIGABRT without patches/0013 (the 3-D attn_k_b
    went to the AMX buffer, whose kernels refuse its permuted activation); elsewhere it checks the
    files decode."""
    for key in ("f16", "q8_0"):
        r = _decodes_in_a_child(files[key])
        assert r.returncode == 0 and r.stdout.strip() == "12", f"{key}: exit status {r.returncode}: {r.stderr[-2000:]}"


# --- greedy MTP == plain -------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def plain_outputs(models):
    return {(f, p): models[f].generate(p, 64, mtp=False) for f in models for p in PROMPTS}


@pytest.mark.parametrize("flavour", ["own", "tied"])
@pytest.mark.parametrize("draft_max", [1, 2, 3, 4, 5, 6])
@pytest.mark.parametrize("p_min", [0.0, 0.85])
def test_mtp_equals_plain(models, plain_outputs, flavour, draft_max, p_min):
    """22 prompts x 64 tokens, fixed draft lengths 1..6, with and without a confidence floor."""
    check_mtp_equals_plain(models[flavour], plain_outputs, flavour, PROMPTS, draft_max, p_min)


@pytest.mark.parametrize("dtype", ["f16", "q8_0"])
@pytest.mark.parametrize("draft_max", [1, 3, 6])
def test_mtp_equals_plain_low_precision(files, dtype, draft_max):
    with mtpllama.Model(files[dtype], session_defaults=ONE_THREAD) as m:
        for prompt in PROMPTS[:10]:
            plain = m.generate(prompt, 40, mtp=False)
            mtp = m.generate(prompt, 40, spec=SpecConfig(draft_max, 0.0, adaptive=False))
            assert mtp.tokens == plain.tokens, f"prompt {prompt!r}"


def test_adaptive_is_lossless(models):
    model = models["own"]
    for prompt in PROMPTS[:6]:
        assert model.generate(prompt, 60, spec=SpecConfig(4, 0.0)).tokens == model.generate(prompt, 60, mtp=False).tokens


# --- batch invariance ------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def invariance_files(tmp_path_factory):
    d = tmp_path_factory.mktemp("deepseek2_invariance")
    out = {}
    for n_head in (4, 20):
        for dtype in ("f32", "f16", "q8_0"):
            spec = Spec(nextn="own", dtype=dtype, n_head=n_head, n_embd=128, n_ff=256, n_ff_exp=64,
                        norm_noise=0.3, seed=81, **AMX_SHAPED)
            out[(n_head, dtype)] = str(D.write_synthetic(d / f"h{n_head}_{dtype}.gguf", spec))
    return out


@pytest.mark.parametrize("n_head", [4, 20])
@pytest.mark.parametrize("dtype", ["f32", "f16", "q8_0"])
@pytest.mark.parametrize("k", [1, 2, 3, 4])
def test_verified_rows_equal_lone_rows(invariance_files, n_head, dtype, k):
    """Batches of 2..5 rows against plain decoding's lone rows, bit for bit.  The absorbed MLA
    products batch over heads (src1 {dn, n_tokens, H}); patches/0003 counts a product's rows per
    head slice, as tinyBLAS sees them.  Counting all slices sent f16 batches at 20 heads (40+
    rows) to tinyBLAS while lone rows took vec_dot: (3 same, 44 different) at k = 1."""
    with mtpllama.Model(invariance_files[(n_head, dtype)]) as m:
        same, diff = compare(m, PROMPT, 48, k, threads=1)
    assert same >= 20 and diff == 0, (same, diff)


# --- the numpy reference ------------------------------------------------------------------------------------------

# Every option at least once: own/tied heads, sigmoid/softmax/fallback gating, expert groups, 0/1/2 dense
# layers, 1/2 shared experts, weight normalisation on/off and a scale, f32 and f16, YaRN.
# MLA's engine rows sit ~1e-4 (relative) from the reference, ten times glm4moe's (f16 queries and
# latents in flash attention over a 32-wide latent): a routing gap under 2e-4 may flip either way.
NEAR_TIE = 2e-4
FLAVOURS = {
    "ds_own": Flavour(Spec(nextn="own", norm_noise=0.3, seed=91), PROMPT, 180, 0.0, TOL_F32, near_tie=NEAR_TIE),
    "ds_tied_softmax_groups": Flavour(Spec(nextn="tied", gating=1, n_expert_groups=4, n_group_used=2, n_expert_used=3,
                                           n_dense_lead=0, expert_weights_norm=False, expert_weights_scale=2.5,
                                           norm_noise=0.3, seed=92), LONG_PROMPT, 150, 0.2, TOL_F32),
    "ds_no_gating_key": Flavour(Spec(nextn="own", gating=0, norm_noise=0.3, seed=93), PROMPT, 180, 0.0, TOL_F32, near_tie=NEAR_TIE),
    "ds_f16_dense2_shexp2": Flavour(Spec(nextn="own", dtype="f16", n_layer=3, n_dense_lead=2, n_expert_shared=2,
                                         norm_noise=0.3, seed=94, **AMX_SHAPED), PROMPT, 180, 0.0, TOL_F16,
                                    near_tie=1e-3),
    "ds_yarn": Flavour(Spec(nextn="own", rope_scaling="yarn", rope_factor=4.0, yarn_orig_ctx=256, mscale_all_dim=1.0,
                            norm_noise=0.3, seed=95), PROMPT, 180, 0.0, TOL_F32, near_tie=NEAR_TIE),
}
GOOD = list(FLAVOURS)


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """Generate with each flavour (recording events) and replay it through the reference, once."""
    return make_runs(tmp_path_factory.mktemp("deepseek2_reference"), D, R, FLAVOURS)


@pytest.fixture(scope="module")
def small_ref(tmp_path_factory):
    spec = Spec(nextn="own", n_expert_groups=4, n_group_used=2, norm_noise=0.3, seed=5)
    hp, W, f16 = R.load_gguf(D.write_synthetic(tmp_path_factory.mktemp("ds_ref") / "small.gguf", spec))
    return R.Reference(hp, W, f16, R.Variant(kv_f16=False, attn="exact"))


def test_reference_batch_equals_incremental(small_ref):
    """One batch over a sequence == the same rows one at a time (causality, the latent cache, the
    MTP block's cache)."""
    check_batch_equals_incremental(small_ref, 40)


def test_reference_rope_is_relative(small_ref):
    """A common shift of positions changes nothing (q_pe and the shared k_pe rotate alike); a
    different spacing does."""
    check_rope_is_relative(small_ref, R.rel_err, 20)


@pytest.mark.parametrize("name", GOOD)
def test_engine_matches_reference(runs, name):
    check_engine_matches_reference(name, runs(name), FLAVOURS[name])


def test_mtp_output_state_of_multi_row_batch(runs):
    """patches/0012: without it every batched row reports row 0's state (err_vs_row0 ~ 0, err large)."""
    res = runs("ds_own").replay
    rows = [r for r in res.select("mtp_h", batched=True) if r.row > 0]
    assert len(rows) > 10
    worst = max(rows, key=lambda r: r.err)
    assert worst.err < TOL_F32, f"{worst}; max error against row 0: {max(r.err_vs_row0 for r in rows):.1e}"


def test_gating_fallback_is_softmax(runs):
    """A file without expert_gating_func (and not GLM-4.7-Flash's 47/48-layer, 154880-token shape):
    llama.cpp routes with softmax, and a sigmoid reference is far off."""
    run = runs("ds_no_gating_key")
    assert run.ref.hp.gating == "softmax"
    sig = R.replay(R.Reference(dataclasses.replace(run.ref.hp, gating="sigmoid"), run.ref.W, run.ref.f16), run.events)
    assert run.replay.max_err("trunk_logits") < TOL_F32
    assert sig.max_err("trunk_logits") > 25 * TOL_F32


BROKEN = [
    # (flavour, variant, how MTP rows get trunk states, the category that must catch it)
    ("ds_own", dict(concat="h_e"), "engine", "mtp_logits"),                # eh_proj input halves swapped
    ("ds_own", dict(trunk_h="pre_norm"), "engine", "trunk_h"),             # hand-over before output_norm
    ("ds_own", dict(trunk_h="pre_norm"), "reference", "mtp_logits"),       # ... seen through the MTP head
    ("ds_own", dict(mtp_h="pre_norm"), "engine", "mtp_h"),                 # fed back before shared_head_norm
    ("ds_own", dict(rope="neox"), "engine", "trunk_logits"),               # NeoX pairs instead of adjacent ones
    ("ds_own", dict(rope_dims="first"), "engine", "trunk_logits"),         # rope on the head's first dims
    ("ds_own", dict(kv_norm=False), "engine", "trunk_logits"),             # latent not normalised
    ("ds_own", dict(q_a_norm=False), "engine", "trunk_logits"),            # q_a_norm skipped
    ("ds_own", dict(scale="r_dr"), "engine", "trunk_logits"),              # 1/sqrt(r + dr) as the scale
    ("ds_own", dict(kb_vb="swapped"), "engine", "trunk_logits"),           # attn_k_b and attn_v_b exchanged
    ("ds_own", dict(bias_in_weights=True), "engine", "trunk_logits"),      # selection bias in the weights
    ("ds_tied_softmax_groups", dict(groups=False), "engine", "trunk_logits"),  # expert groups ignored
]


@pytest.mark.parametrize("name,variant,trunk_h_from,category", BROKEN,
                         ids=[f"{n}-{'-'.join(f'{k}={v}' for k, v in v_.items())}-{m}" for n, v_, m, _ in BROKEN])
def test_broken_reference_is_detected(runs, name, variant, trunk_h_from, category):
    run = runs(name)
    good = run.replay if trunk_h_from == "engine" else R.replay(run.ref, run.events, trunk_h_from=trunk_h_from)
    bad = R.replay(run.ref.with_variant(**variant), run.events, trunk_h_from=trunk_h_from)
    check_broken_reference(run, FLAVOURS[name], good, bad, category)


# --- sampling ------------------------------------------------------------------------------------------------

N_SAMPLED = 6000


@pytest.mark.slow
def test_sampled_mtp_has_plain_sampling_distribution(models):
    """Three drafts a step, verified as the defaults verify (rejection sampling, adaptive draft
    distribution), on an MLA file: the joint distribution of the first 4 tokens equals plain sampling's (two-sample
    chi-square, p > 1e-3), and the same test tells a verifier that accepts every draft apart."""
    model = models["own"]
    check_sampled_distribution(model, model.tokenize(PROMPT)[:6], N_SAMPLED)


# --- fuzzing ------------------------------------------------------------------------------------------------

@pytest.mark.slow
def test_fuzzed_files_never_crash_or_hang(tmp_path):
    """Mutants of a deepseek2 file (expert groups on, so their keys are in play): each loads and
    generates or raises MtpllamaError (tests/fuzz_gguf.py)."""
    import os

    import fuzz_gguf

    base = D.write_synthetic(tmp_path / "base.gguf", Spec(nextn="own", n_expert_groups=4, n_group_used=2,
                                                          n_expert_used=3, seed=79))
    n = int(os.environ.get("MTPLLAMA_FUZZ_CASES", "1500")) // 3
    failures = fuzz_gguf.run(str(base), n, seed=2, batch=250, timeout_per_case=20.0)
    assert not failures, failures[:5]


def test_mtp_context_reserves_ffn_for_output_rows_only(tmp_path):
    """patches/0012 (0004's half for MLA): the NextN block runs its FFN on output rows only, so the
    MTP context's compute buffer grows with n_batch by attention-sized rows, not by every row's
    routed-expert intermediates (tests/test_session.py has glm4moe's twin)."""
    spec = Spec(nextn="own", n_expert=8, n_expert_used=4, n_ff_exp=512, seed=3)
    path = D.write_synthetic(tmp_path / "wide_ffn.gguf", spec)
    check_mtp_ffn_on_output_rows(str(path), spec)
