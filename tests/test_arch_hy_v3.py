"""hy_v3 (Tencent Hy3: GQA with q/k norms, sigmoid MoE with a shared expert, several NextN blocks
chained as llama.cpp's draft-mtp chains them): the writer, the rules of csrc/arch/hy_v3.cpp, greedy
MTP == plain at every draft length (beyond the head count too), which head drafts which position,
each head's cache kept in step lazily (csrc/draft.h), batch invariance, truncation, the split
halves, fuzzing, sampling.  No numpy reference (issue 28 asks one for qwen35moe only)."""
from __future__ import annotations

import pytest

import mtpllama
from mtpllama.testing.arch import WRITERS
from mtpllama.testing.bpe import train_bpe
from arch_suite import HeadsSuite, files, model, plain_outputs  # noqa: F401 (fixtures the suite uses)
from mla_cases import bad_file_fails_clearly, u32

W = WRITERS["hy_v3"]
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
    ({"attention.value_length": u32(8)}, "must be equal"),
    ({"rope.dimension_count": u32(8)}, "must be equal"),
    ({"attention.head_count_kv": u32(3)}, "head_count_kv must divide"),
    ({"expert_used_count": u32(9)}, "expert_used_count"),
    ({"expert_feed_forward_length": None}, "expert_feed_forward_length"),
    ({"expert_gating_func": u32(7)}, "expert_gating_func"),
]


@pytest.mark.parametrize("keys,message", BAD_KEYS, ids=[f"{i}-" + ",".join(k) for i, (k, _) in enumerate(BAD_KEYS)])
def test_bad_hyperparameters_fail_clearly(tmp_path, keys, message):
    """Each is something the hy_v3 graphs assert on or the loader needs."""
    bad_file_fails_clearly(str(W.write_synthetic(tmp_path / "bad.gguf", Spec(seed=71), keys=keys)), message)


@pytest.mark.parametrize("drop,message", [
    (("blk.1.ffn_up_shexp.weight",), "lacks its shared expert"),
    (("blk.2.ffn_down_exps.weight",), "not all of its experts"),
    (("blk.0.ffn_gate.weight",), "neither a router nor a dense FFN"),
])
def test_blocks_missing_ffn_weights_fail_clearly(tmp_path, drop, message):
    """The graphs pick a block's FFN by its router and build it from whatever weights loaded (all
    optional in the loader): a missing one is a null weight at the first decode."""
    tok = train_bpe(n_merges=Spec().n_merges)
    weights = W.synthetic_weights(Spec(seed=72), tok)
    for name in drop:
        del weights[name]
    bad_file_fails_clearly(str(W.write_synthetic(tmp_path / "bad.gguf", Spec(seed=72), tok=tok, weights=weights)),
                           message)


class TestHyV3(HeadsSuite):
    W = W
    FUZZ_SEED = 7

    def test_writer_and_inspect(self, files):
        """HYV3Model's layout: the NextN blocks appended after the trunk, each a full MoE block with the
        final norm as nextn.shared_head_norm and no MTP embeddings or head of its own."""
        import gguf

        r = gguf.GGUFReader(files["q8_0"])
        keys = {f.name: int(f.parts[f.data[0]][0]) for f in r.fields.values() if f.name.startswith("hy_v3.") and f.data}
        spec = FILES["q8_0"]
        assert keys["hy_v3.block_count"] == spec.n_layer + N_HEADS and keys["hy_v3.nextn_predict_layers"] == N_HEADS
        tensors = {t.name: t for t in r.tensors}
        for j in range(N_HEADS):
            p = f"blk.{spec.n_layer + j}."
            assert {p + "nextn.eh_proj.weight", p + "nextn.shared_head_norm.weight", p + "ffn_up_shexp.weight",
                    p + "attn_q_norm.weight"} <= set(tensors)
            assert p + "nextn.embed_tokens.weight" not in tensors and p + "nextn.shared_head_head.weight" not in tensors
        assert "blk.0.ffn_up.weight" in tensors and "blk.1.ffn_up_exps.weight" in tensors
        assert tensors["blk.1.ffn_gate_inp.weight"].tensor_type == gguf.GGMLQuantizationType.F32
        info = mtpllama.inspect(files["f32"])
        assert info.supported and info.has_mtp and info.n_layer_nextn == N_HEADS
        assert info.attention == "GQA: 4 heads, 2 KV heads, head dim 16 (q/k norms)"
