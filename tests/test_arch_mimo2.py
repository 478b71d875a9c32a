"""mimo2 (MiMo-V2-Flash / V2.5: full-attention and sliding-window layers with their own KV head
counts, attention sinks, K/V head dims of their own, a sigmoid MoE; three NextN blocks chained as
llama.cpp's draft-mtp chains them, docs/heads.md): the writer, the rules of csrc/arch/mimo2.cpp,
greedy MTP == plain at every draft length (beyond the head count too, and past the window), which
head drafts which position, each head's cache, batch invariance, truncation, the split halves,
fuzzing, sampling.  No numpy reference (issue 28 asks one for qwen35moe only)."""
from __future__ import annotations

import pytest

import mtpllama
from mtpllama.testing.arch import WRITERS
from mtpllama.testing.bpe import train_bpe
from mtpllama.testing.fixtures import PROMPTS
from arch_suite import HeadsSuite, files, model, plain_outputs  # noqa: F401 (fixtures the suite uses)
from mla_cases import bad_file_fails_clearly, f32, u32

W = WRITERS["mimo2"]
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
    ({"attention.sliding_window": u32(0)}, "sliding_window missing or 0"),
    ({"attention.sliding_window_pattern": None}, "sliding_window_pattern missing"),
    ({"attention.sliding_window_pattern": [0] * 6}, "marks no block"),
    ({"attention.head_count_kv": [2, 1, 1, 3, 1, 1]}, "head_count_kv must divide"),
    ({"attention.head_count_kv": [2, 1, 1]}, "one per block"),
    ({"rope.dimension_count": u32(18)}, "rope.dimension_count"),
    ({"attention.value_scale": f32(float("nan"))}, "value_scale"),
    ({"expert_used_count": u32(9)}, "expert_used_count"),
    ({"expert_feed_forward_length": None}, "expert_feed_forward_length"),
    ({"feed_forward_length": None}, "feed_forward_length"),
]


@pytest.mark.parametrize("keys,message", BAD_KEYS, ids=[f"{i}-" + ",".join(k) for i, (k, _) in enumerate(BAD_KEYS)])
def test_bad_hyperparameters_fail_clearly(tmp_path, keys, message):
    """Each is something the mimo2 graphs or llama.cpp's loader assert on or need."""
    bad_file_fails_clearly(str(W.write_synthetic(tmp_path / "bad.gguf", Spec(seed=71), keys=keys)), message)


@pytest.mark.parametrize("drop,message", [
    (("blk.3.ffn_gate.weight",), "needs a dense FFN"),
    (("blk.2.ffn_down_exps.weight",), "not all of its experts"),
    (("blk.0.ffn_up.weight",), "neither a router nor a dense FFN"),
    (("blk.4.attn_qkv.weight",), "no blk.4.attn_qkv.weight"),
])
def test_blocks_missing_weights_fail_clearly(tmp_path, drop, message):
    """The graphs build a block's FFN from whatever weights loaded (all optional in the loader), and
    the NextN graph asserts a fused QKV and a dense FFN."""
    tok = train_bpe(n_merges=Spec().n_merges)
    weights = W.synthetic_weights(Spec(seed=72), tok)
    for name in drop:
        del weights[name]
    path = str(W.write_synthetic(tmp_path / "bad.gguf", Spec(seed=72), tok=tok, weights=weights))
    if "attn_qkv" in message:  # a NextN tensor: the file loads as trunk-only, drafting is refused
        info = mtpllama.inspect(path)
        assert not info.has_mtp and message in info.mtp_problem
        return
    bad_file_fails_clearly(path, message)


class TestMimo2(HeadsSuite):
    W = W
    FUZZ_SEED = 7

    def sampled_prompt(self, model) -> list[int]:
        # this file's trunk is nearly sure after the shared test prompt's first tokens: a prompt after
        # which the first 4 tokens vary enough for the test's degrees of freedom
        return model.tokenize(PROMPTS[7])

    def test_writer_and_inspect(self, files):
        """MimoV2Model's layout: the window pattern extended over the NextN blocks, one KV head count per
        block, fused QKV, the NextN blocks dense with their final norm as layer_output_norm."""
        import gguf

        spec = FILES["q8_0"]
        r = gguf.GGUFReader(files["q8_0"])
        fields = {f.name: f for f in r.fields.values()}
        arr = lambda k: [int(fields["mimo2." + k].parts[i][0]) for i in fields["mimo2." + k].data]
        pattern = list(spec.pattern) + [1] * N_HEADS
        assert arr("attention.sliding_window_pattern") == pattern
        assert arr("attention.head_count_kv") == [spec.n_head_kv_swa if p else spec.n_head_kv for p in pattern]
        tensors = {t.name: t for t in r.tensors}
        for j in range(N_HEADS):
            p = f"blk.{spec.n_layer + j}."
            assert {p + "nextn.eh_proj.weight", p + "layer_output_norm.weight", p + "attn_qkv.weight",
                    p + "ffn_up.weight", p + "attn_sinks.weight"} <= set(tensors)
            assert p + "ffn_gate_inp.weight" not in tensors and p + "nextn.shared_head_head.weight" not in tensors
        assert tensors["blk.1.ffn_gate_inp.weight"].tensor_type == gguf.GGMLQuantizationType.F32
        assert "blk.0.attn_sinks.weight" not in tensors  # full attention: no sinks
        info = mtpllama.inspect(files["f32"])
        assert info.supported and info.has_mtp and info.n_layer_nextn == N_HEADS
        assert info.attention == "GQA with sliding-window layers (window 12): 4 heads, K/V head dims 16/12"
