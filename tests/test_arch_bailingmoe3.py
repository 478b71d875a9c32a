"""bailingmoe3 (Ling/Ring 3: a hybrid trunk of KDA layers, a gated delta net with a gate per channel
and a recurrent state, and gated MLA attention layers; one NextN block): the writer, the rules of
csrc/arch/bailingmoe3.cpp, greedy MTP == plain with the KDA state rolled back through llama.cpp's
snapshots (docs/recurrent.md), the rollback's necessity, batch invariance, truncation, the NextN
block's FFN on output rows only (patches/0018), fuzzing.  No numpy reference yet."""
from __future__ import annotations

import pytest

import mtpllama
from mtpllama.testing.arch import WRITERS
from mtpllama.testing.fixtures import ONE_THREAD, PROMPTS
from mla_cases import bad_file_fails_clearly, check_sampled_distribution, f32, u32
from recurrent_cases import (check_low_precision, check_mtp_equals_plain, check_mtp_ffn_on_output_rows,
                             check_rollback_is_needed, check_truncation)
from test_arch_qwen35 import _i32s
from test_batch_invariance import compare
from test_reference import PROMPT

W = WRITERS["bailingmoe3"]
Spec = W.SyntheticSpec

FILES = {
    "f32": Spec(norm_noise=0.3, seed=601),
    "f16": Spec(norm_noise=0.3, dtype="f16", seed=602),
    "q8_0": Spec(norm_noise=0.3, dtype="q8_0", seed=603),
}


@pytest.fixture(scope="module")
def files(tmp_path_factory) -> dict[str, str]:
    d = tmp_path_factory.mktemp("bailingmoe3")
    return {k: str(W.write_synthetic(d / f"{k}.gguf", spec)) for k, spec in FILES.items()}


@pytest.fixture(scope="module")
def model(files):
    with mtpllama.Model(files["f32"], session_defaults=ONE_THREAD) as m:
        yield m


def test_writer_and_inspect(files):
    """The layer kinds as the converter writes them (head_count_kv 0 for KDA, 1 for MLA and the NextN
    block), the convolutions f32, and inspect's description."""
    import gguf

    r = gguf.GGUFReader(files["q8_0"])
    keys = {f.name: f for f in r.fields.values()}
    f = keys["bailingmoe3.attention.head_count_kv"]
    assert [int(f.parts[i][0]) for i in f.data] == [0, 0, 0, 1, 1]
    tensors = {t.name: t for t in r.tensors}
    assert tensors["blk.0.ssm_conv1d_q.weight"].tensor_type == gguf.GGMLQuantizationType.F32
    assert "blk.4.layer_output_norm.weight" in tensors and "blk.3.attn_gate.weight" in tensors
    info = mtpllama.inspect(files["f32"])
    assert info.supported and info.has_mtp
    assert info.attention == "hybrid: 3 KDA layers (4 heads of 16) and 1 MLA layers (kv_lora_rank 32)"


BAD_KEYS = [
    ({"kda.gate_lower_bound": f32(0.5)}, "gate_lower_bound must be a negative float"),
    ({"kda.gate_lower_bound": None}, "gate_lower_bound must be a negative float"),
    ({"kda.head_dim": None}, "kda.head_dim"),
    ({"ssm.conv_kernel": u32(1)}, "ssm.conv_kernel"),
    ({"attention.head_count_kv": _i32s([0, 0, 0, 2, 1])}, "must be 0 \\(KDA\\) or 1"),
    ({"attention.head_count_kv": _i32s([0, 0, 0, 1, 0])}, "must be 0 \\(KDA\\) or 1"),
    ({"attention.head_count_kv": _i32s([0, 0, 0, 0, 1])}, "must mix KDA and MLA"),
    ({"attention.head_count_kv": None}, "head_count_kv missing"),
    ({"attention.kv_lora_rank": None}, "kv_lora_rank"),
    ({"attention.key_length": u32(40)}, "key_length must be kv_lora_rank"),
    ({"rope.dimension_count": u32(32)}, "rope.dimension_count"),
    ({"expert_gating_func": None}, "expert_gating_func"),
    ({"expert_gating_func": u32(0)}, "expert_gating_func"),
    ({"expert_shared_count": None}, "expert_shared_count"),
    ({"leading_dense_block_count": u32(9)}, "leading_dense_block_count"),
    ({"expert_used_count": u32(9)}, "expert_used_count"),
    ({"attention.layer_norm_rms_epsilon": None}, "layer_norm_rms_epsilon"),
]


@pytest.mark.parametrize("keys,message", BAD_KEYS, ids=[f"{i}-" + ",".join(k) + ("" if all(k.values()) else "-dropped")
                                                        for i, (k, _) in enumerate(BAD_KEYS)])
def test_bad_hyperparameters_fail_clearly(tmp_path, keys, message):
    """Each is something llama.cpp's loader or the bailingmoe3 graphs assert on (the KDA gate's
    bound and safety, the MLA cache row, the gating function) or size the state by."""
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
    with mtpllama.Model(files[dtype]) as m:
        same, diff = compare(m, PROMPT, 48, k, threads=1)
    assert same >= 20 and diff == 0, (same, diff)


def test_truncation_continues_as_a_fresh_context(model):
    check_truncation(model)


def test_mtp_context_reserves_ffn_for_output_rows_only(tmp_path):
    """patches/0018: the NextN block runs its FFN on output rows only (and reports the output row's
    state)."""
    spec = W.SyntheticSpec(n_expert=8, n_expert_used=4, n_ff_exp=512, seed=3)
    check_mtp_ffn_on_output_rows(W.write_synthetic(tmp_path / "wide_ffn.gguf", spec), spec)


@pytest.mark.slow
def test_fuzzed_files_never_crash_or_hang(tmp_path):
    import os

    import fuzz_gguf

    base = W.write_synthetic(tmp_path / "base.gguf", Spec(seed=79))
    n = int(os.environ.get("MTPLLAMA_FUZZ_CASES", "1500")) // 4
    failures = fuzz_gguf.run(str(base), n, seed=5, batch=250, timeout_per_case=20.0)
    assert not failures, failures[:5]


@pytest.mark.slow
def test_sampled_mtp_has_plain_sampling_distribution(model):
    """Three drafts a step on a recurrent trunk, verified as the defaults verify: the joint
    distribution of the first 4 tokens equals plain sampling's, and an accept-everything verifier
    is told apart (see mla_cases.check_sampled_distribution)."""
    check_sampled_distribution(model, model.tokenize(PROMPT)[:6], 6000)
