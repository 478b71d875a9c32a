"""step35 (Step-3.5: full-attention and sliding-window layers with head counts of their own, q/k
norms, a head-wise attention gate, RoPE over half the head on full-attention layers, a sigmoid MoE
with a shared expert; NextN blocks chained as llama.cpp's draft-mtp chains them, docs/heads.md):
the writer, the rules of csrc/arch/step35.cpp,
greedy MTP == plain at every draft length (beyond the head count too, and past the window), which
head drafts which position, each head's cache, batch invariance, truncation, the split halves,
fuzzing, sampling.  No numpy reference (issue 28 asks one for qwen35moe only)."""
from __future__ import annotations

import pytest

import mtpllama
from mtpllama.testing.arch import WRITERS
from mtpllama.testing.bpe import train_bpe
from arch_suite import HeadsSuite, files, model, plain_outputs  # noqa: F401 (fixtures the suite uses)
from mla_cases import bad_file_fails_clearly, f32, u32

W = WRITERS["step35"]
Spec = W.SyntheticSpec
N_HEADS = Spec().n_nextn

FILES = {
    "f32": Spec(norm_noise=0.3, seed=701),
    "f16": Spec(norm_noise=0.3, dtype="f16", seed=702),
    "q8_0": Spec(norm_noise=0.3, dtype="q8_0", seed=703),
    "broken1": Spec(norm_noise=0.3, seed=701, broken_heads=(1,)),
    "broken2": Spec(norm_noise=0.3, seed=701, broken_heads=(2,)),
}


BAD_KEYS = [
    ({"attention.sliding_window": None}, "sliding_window missing"),
    ({"attention.sliding_window_pattern": None}, "sliding_window_pattern missing"),
    ({"attention.sliding_window_pattern": [False] * 6}, "marks no block"),
    ({"attention.head_count_kv": [2, 1, 1, 3, 2, 2]}, "head_count_kv must divide"),
    ({"attention.head_count": [4, 2, 2]}, "one per block"),
    ({"rope.dimension_count": u32(6)}, "multiple of 4"),
    ({"expert_used_count": u32(9)}, "expert_used_count"),
    ({"expert_feed_forward_length": None}, "expert_feed_forward_length"),
    ({"expert_gating_func": u32(7)}, "expert_gating_func"),
    ({"swiglu_clamp_exp": f32(float("inf"))}, "swiglu_clamp_exp"),
]


@pytest.mark.parametrize("keys,message", BAD_KEYS, ids=[f"{i}-" + ",".join(k) for i, (k, _) in enumerate(BAD_KEYS)])
def test_bad_hyperparameters_fail_clearly(tmp_path, keys, message):
    """Each is something the step35 graphs or llama.cpp's loader assert on or need."""
    bad_file_fails_clearly(str(W.write_synthetic(tmp_path / "bad.gguf", Spec(seed=71), keys=keys)), message)


@pytest.mark.parametrize("drop,message", [
    (("blk.3.ffn_up_shexp.weight",), "lacks its shared expert"),
    (("blk.2.ffn_down_exps.weight",), "not all of its experts"),
    (("blk.0.ffn_up.weight",), "neither a router nor a dense FFN"),
    (("blk.4.attn_output.weight",), "no blk.4.attn_output.weight"),
])
def test_blocks_missing_weights_fail_clearly(tmp_path, drop, message):
    """The graphs build a block's FFN from whatever weights loaded (all optional in the loader), a
    MoE block's shared expert included."""
    tok = train_bpe(n_merges=Spec().n_merges)
    weights = W.synthetic_weights(Spec(seed=72), tok)
    for name in drop:
        del weights[name]
    path = str(W.write_synthetic(tmp_path / "bad.gguf", Spec(seed=72), tok=tok, weights=weights))
    if "attn_output" in message:  # a NextN tensor: the file loads as trunk-only, drafting is refused
        info = mtpllama.inspect(path)
        assert not info.has_mtp and message in info.mtp_problem
        return
    bad_file_fails_clearly(path, message)


class TestStep35(HeadsSuite):
    W = W
    FUZZ_SEED = 7

    def test_writer_and_inspect(self, files):
        """Step35Model's layout: head counts and the window pattern over every block (the NextN blocks
        full attention), the head-wise gate, the NextN blocks MoE with their own head."""
        import gguf

        spec = FILES["q8_0"]
        r = gguf.GGUFReader(files["q8_0"])
        fields = {f.name: f for f in r.fields.values()}
        arr = lambda k: [int(fields["step35." + k].parts[i][0]) for i in fields["step35." + k].data]
        pattern = list(spec.pattern) + [0] * N_HEADS
        assert arr("attention.sliding_window_pattern") == pattern
        assert arr("attention.head_count") == [spec.n_head_swa if p else spec.n_head for p in pattern]
        assert arr("attention.head_count_kv") == [spec.n_head_kv_swa if p else spec.n_head_kv for p in pattern]
        tensors = {t.name: t for t in r.tensors}
        for j in range(N_HEADS):
            p = f"blk.{spec.n_layer + j}."
            assert {p + "nextn.eh_proj.weight", p + "nextn.shared_head_head.weight", p + "nextn.shared_head_norm.weight",
                    p + "attn_gate.weight", p + "ffn_up_shexp.weight", p + "ffn_gate_inp.weight"} <= set(tensors)
            assert p + "nextn.embed_tokens.weight" not in tensors
        assert tensors["blk.1.ffn_gate_inp.weight"].tensor_type == gguf.GGMLQuantizationType.F32
        info = mtpllama.inspect(files["f32"])
        assert info.supported and info.has_mtp and info.n_layer_nextn == N_HEADS
        assert info.attention == "GQA with sliding-window layers (window 12): 4 heads of 16, q/k norms"
