"""nemotron_h_moe (Nemotron-H MoE: a hybrid trunk of Mamba-2, rope-less attention and MoE layers,
one NextN block): the writer, the rules of csrc/arch/nemotron_h_moe.cpp, greedy MTP == plain with
the Mamba-2 state rolled back through llama.cpp's snapshots (docs/recurrent.md), the rollback's
necessity, batch invariance, truncation, fuzzing.  No numpy reference yet (tests/reference covers
the Qwen hybrids' recurrence)."""
from __future__ import annotations

import pytest

import mtpllama
from mtpllama.testing.arch import WRITERS
from mtpllama.testing.fixtures import ONE_THREAD, PROMPTS
from mla_cases import bad_file_fails_clearly, check_sampled_distribution, f32, u32
from recurrent_cases import check_low_precision, check_mtp_equals_plain, check_rollback_is_needed, check_truncation
from test_arch_qwen35 import _i32s
from test_batch_invariance import compare
from test_reference import PROMPT

W = WRITERS["nemotron_h_moe"]
Spec = W.SyntheticSpec

FILES = {
    "f32": Spec(noise=0.6, norm_noise=0.3, seed=501),
    "f16": Spec(noise=0.6, norm_noise=0.3, dtype="f16", seed=502),
    "q8_0": Spec(noise=0.6, norm_noise=0.3, dtype="q8_0", seed=503),
    "trunk_only": Spec(nextn="none", seed=504),
}


@pytest.fixture(scope="module")
def files(tmp_path_factory) -> dict[str, str]:
    d = tmp_path_factory.mktemp("nemotron_h_moe")
    return {k: str(W.write_synthetic(d / f"{k}.gguf", spec)) for k, spec in FILES.items()}


@pytest.fixture(scope="module")
def model(files):
    with mtpllama.Model(files["f32"], session_defaults=ONE_THREAD) as m:
        yield m


def test_writer_lays_out_as_the_converter(files):
    """The layer kinds as NemotronHModel writes them: per-layer head_count_kv and feed_forward_length
    (the NextN block has both), Mamba-2's tensors in the M layers, its convolution in f32."""
    import gguf

    spec = FILES["q8_0"]
    r = gguf.GGUFReader(files["q8_0"])
    keys = {f.name: f for f in r.fields.values()}
    arr = lambda k: [int(keys["nemotron_h_moe." + k].parts[i][0]) for i in keys["nemotron_h_moe." + k].data]
    kinds = spec.pattern + "+"
    assert arr("attention.head_count_kv") == [spec.n_head_kv if k in "*+" else 0 for k in kinds]
    assert arr("feed_forward_length") == [spec.n_ff_exp if k in "E+" else 0 for k in kinds]
    tensors = {t.name: t for t in r.tensors}
    for i, k in enumerate(kinds):
        names = {n[len(f"blk.{i}."):] for n in tensors if n.startswith(f"blk.{i}.")}
        assert ("ssm_in.weight" in names) == (k == "M") and ("attn_q.weight" in names) == (k in "*+")
        assert ("ffn_up_exps.weight" in names) == (k in "E+") and ("nextn.eh_proj.weight" in names) == (k == "+")
    assert tensors["blk.0.ssm_conv1d.weight"].tensor_type == gguf.GGMLQuantizationType.F32
    assert tensors["blk.0.ssm_in.weight"].tensor_type == gguf.GGMLQuantizationType.Q8_0


def test_inspect(files):
    info = mtpllama.inspect(files["f32"])
    assert info.supported and info.has_mtp and info.kind == "full"
    assert info.attention == ("hybrid: 3 Mamba-2 layers (8 heads, state 16), 1 attention layers (4 heads, head dim 16, "
                              "no rope), 2 MoE layers")


def test_trunk_only_file(files):
    """A trunk-only file (the NextN tensors dropped, nextn_predict_layers kept): MTP refused, plain
    decoding runs (nemotron_h's loader required the declared block: patches/0016)."""
    with pytest.raises(mtpllama.NoMtpHeadError):
        mtpllama.Model(files["trunk_only"], mtp=True)
    with mtpllama.Model(files["trunk_only"], mtp=False, session_defaults=ONE_THREAD) as m:
        assert len(m.generate("def foo(x):", 8).tokens) == 8


# one row per rule of csrc/arch/nemotron_h_moe.cpp, for the default spec (pattern "ME*MEM": Mamba-2
# in 0, 3, 5, MoE in 1, 4, attention in 2; 4 heads, 2 KV heads; d_inner 128 in 8 heads and 2 groups)
BAD_KEYS = [
    ({"attention.head_count": u32(0)}, "head_count missing"),
    ({"attention.key_length": u32(8)}, "key/value lengths must be equal"),
    ({"attention.layer_norm_epsilon": None}, "layer_norm_epsilon missing"),
    ({"attention.layer_norm_epsilon": f32(float("nan"))}, "layer_norm_epsilon missing or not finite"),
    ({"expert_weights_scale": f32(float("inf"))}, "expert_weights_scale"),
    ({"attention.head_count_kv": _i32s([0, 0, 2, 0, 0, 0])}, "head_count_kv must be an integer or one per block"),
    ({"attention.head_count_kv": _i32s([0, 0, 3, 0, 0, 0, 2])}, "must divide attention.head_count"),
    ({"attention.head_count_kv": _i32s([0, 0, 2, 0, 0, 0, 0])}, "NextN block 6 must have attention and MoE"),
    ({"attention.head_count_kv": _i32s([0, 2, 2, 0, 0, 0, 2])}, "trunk block 1 sets both"),
    ({"attention.head_count_kv": _i32s([0, 0, 0, 0, 0, 0, 2])}, "must have Mamba-2, attention and MoE layers"),
    ({"feed_forward_length": _i32s([0, 0, 0, 0, 0, 0, 32])}, "must have Mamba-2, attention and MoE layers"),
    ({"expert_count": None}, "expert_count missing"),
    ({"expert_used_count": u32(9)}, "expert_used_count"),
    ({"expert_feed_forward_length": None}, "expert_feed_forward_length"),
    ({"expert_shared_feed_forward_length": u32(0)}, "expert_shared_feed_forward_length"),
    ({"ssm.conv_kernel": u32(1)}, "ssm.conv_kernel"),
    ({"ssm.state_size": None}, "ssm.state_size"),
    ({"ssm.time_step_rank": u32(0)}, "ssm.time_step_rank"),
    ({"ssm.group_count": u32(3)}, "ssm.group_count must divide"),
    ({"ssm.inner_size": u32(100)}, "ssm.inner_size must be a multiple"),
    ({"context_length": u32(0)}, "context_length"),
]


@pytest.mark.parametrize("keys,message", BAD_KEYS, ids=[f"{i}-" + ",".join(k) + ("" if all(k.values()) else "-dropped")
                                                        for i, (k, _) in enumerate(BAD_KEYS)])
def test_bad_hyperparameters_fail_clearly(tmp_path, keys, message):
    bad_file_fails_clearly(str(W.write_synthetic(tmp_path / "bad.gguf", Spec(seed=71), keys=keys)), message)


@pytest.fixture(scope="module")
def plain_outputs(model):
    return {p: model.generate(p, 64, mtp=False) for p in PROMPTS}


@pytest.mark.parametrize("draft_max", [1, 2, 3, 4, 5, 6])
@pytest.mark.parametrize("p_min", [0.0, 0.85])
def test_mtp_equals_plain(model, plain_outputs, draft_max, p_min):
    """22 prompts x 64 tokens, fixed draft lengths 1..6, with and without a confidence floor."""
    check_mtp_equals_plain(model, plain_outputs, draft_max, p_min)


@pytest.mark.parametrize("dtype", ["f16", "q8_0"])
def test_mtp_equals_plain_low_precision(files, dtype):
    check_low_precision(files[dtype])


def test_output_differs_without_the_rollback(model, plain_outputs):
    """Skipping the snapshot restore leaves the rejected drafts in the recurrent state."""
    check_rollback_is_needed(model, plain_outputs)


@pytest.mark.parametrize("dtype", ["f32", "f16", "q8_0"])
@pytest.mark.parametrize("k", [1, 3])
def test_verified_rows_equal_lone_rows(files, dtype, k):
    """Mamba-2's scan and convolution run token by token inside a batch: verified rows equal lone rows."""
    with mtpllama.Model(files[dtype]) as m:
        same, diff = compare(m, PROMPT, 48, k, threads=1)
    assert same >= 20 and diff == 0, (same, diff)


def test_truncation_continues_as_a_fresh_context(model):
    check_truncation(model)


@pytest.mark.slow
def test_fuzzed_files_never_crash_or_hang(tmp_path):
    import os

    import fuzz_gguf

    base = W.write_synthetic(tmp_path / "base.gguf", Spec(seed=79))
    n = int(os.environ.get("MTPLLAMA_FUZZ_CASES", "1500")) // 4
    failures = fuzz_gguf.run(str(base), n, seed=4, batch=250, timeout_per_case=20.0)
    assert not failures, failures[:5]


def test_quantised_elementwise_parameters_fail_clearly(tmp_path, monkeypatch):
    """Norm weights, biases, ssm_a and ssm_d enter elementwise ops, which ggml computes with f32
    operands only: a file that quantised them (the converter never does) aborted the process at the
    first decode; now inspect refuses it."""
    import mtpllama.testing.arch.nemotron_h_moe as mod

    real = mod.write_gguf
    for keep, message in [(lambda name: name.endswith("ssm_conv1d.weight"), "is f16; llama.cpp needs it f32"),
                          (None, "ssm_conv1d.weight must be f32")]:   # the convolution too (ggml_ssm_conv)
        monkeypatch.setattr(mod, "write_gguf", lambda *a, keep=keep, **kw: real(*a, **{**kw, "keep_f32": keep}))
        path = str(W.write_synthetic(tmp_path / "quantised.gguf", Spec(dtype="q8_0", seed=81)))
        bad_file_fails_clearly(path, message)


@pytest.mark.parametrize("groups", [3, 8, 2])
def test_expert_groups_fail_clearly(tmp_path, groups):
    """llama.cpp's common loader asserts on expert groups for every architecture (found by fuzzing
    this one: 3 groups of 8 experts aborted the process); 2 groups need a used-group count."""
    path = str(W.write_synthetic(tmp_path / "groups.gguf", Spec(seed=72), keys={"expert_group_count": u32(groups)}))
    bad_file_fails_clearly(path, "expert_group")


@pytest.mark.slow
def test_sampled_mtp_has_plain_sampling_distribution(model):
    """Three drafts a step on a recurrent trunk, verified as the defaults verify: the joint
    distribution of the first 4 tokens equals plain sampling's, and an accept-everything verifier
    is told apart (see mla_cases.check_sampled_distribution)."""
    check_sampled_distribution(model, model.tokenize(PROMPT)[:6], 6000)
