"""cohere2moe (Cohere's MoE Command models: parallel attention and FFN under LayerNorm, window layers
with RoPE and full-attention layers without, a logit scale, an averaged shared expert; one NextN
block): the writer, the rules of csrc/arch/cohere2moe.cpp, greedy MTP == plain (past the window),
batch invariance, truncation, the split halves, fuzzing, sampling.  No numpy reference."""
from __future__ import annotations

import pytest

import mtpllama
from mtpllama.testing.arch import WRITERS
from mtpllama.testing.bpe import train_bpe
from arch_suite import ArchSuite, files, model, plain_outputs  # noqa: F401 (fixtures the suite uses)
from mla_cases import bad_file_fails_clearly, f32, u32

W = WRITERS["cohere2moe"]
Spec = W.SyntheticSpec

FILES = {
    "f32": Spec(norm_noise=0.3, seed=801),
    "f16": Spec(norm_noise=0.3, dtype="f16", seed=802),
    "q8_0": Spec(norm_noise=0.3, dtype="q8_0", seed=803),
}


BAD_KEYS = [
    ({"attention.sliding_window": None}, "sliding_window missing"),
    ({"attention.sliding_window_pattern": [False] * 4}, "marks no block"),
    ({"attention.sliding_window_pattern": u32(1)}, "leaves no trunk layer"),
    ({"attention.value_length": u32(8)}, "must be equal"),
    ({"rope.dimension_count": u32(8)}, "must be equal"),
    ({"attention.head_count_kv": u32(3)}, "head_count_kv must divide"),
    ({"expert_used_count": u32(9)}, "expert_used_count"),
    ({"expert_feed_forward_length": None}, "expert_feed_forward_length"),
    ({"leading_dense_block_count": None}, "leading_dense_block_count"),
    ({"leading_dense_block_count": u32(5)}, "leading_dense_block_count"),
    ({"logit_scale": None}, "logit_scale is required"),
    ({"logit_scale": f32(float("nan"))}, "logit_scale must be"),
    ({"attention.layer_norm_epsilon": None}, "norm epsilon"),
]


@pytest.mark.parametrize("keys,message", BAD_KEYS, ids=[f"{i}-" + ",".join(k) for i, (k, _) in enumerate(BAD_KEYS)])
def test_bad_hyperparameters_fail_clearly(tmp_path, keys, message):
    """Each is something the cohere2moe graphs, its KV cache or llama.cpp's loader assert on or need."""
    bad_file_fails_clearly(str(W.write_synthetic(tmp_path / "bad.gguf", Spec(seed=71), keys=keys)), message)


def test_a_nextn_block_without_a_router_is_refused(tmp_path):
    """The NextN graph asserts a router: such a file loads as trunk-only, drafting refused."""
    tok = train_bpe(n_merges=Spec().n_merges)
    weights = W.synthetic_weights(Spec(seed=72), tok)
    del weights["blk.4.ffn_gate_inp.weight"]
    path = str(W.write_synthetic(tmp_path / "bad.gguf", Spec(seed=72), tok=tok, weights=weights))
    info = mtpllama.inspect(path)
    assert not info.has_mtp and "no blk.4.ffn_gate_inp.weight" in info.mtp_problem


class TestCohere2moe(ArchSuite):
    W = W
    FUZZ_SEED = 9

    def test_writer_and_inspect(self, files):
        """Cohere2MoeModel's layout: the window pattern over the trunk's layers only, no FFN norm, no
        selection bias, the NextN block a MoE block; the LayerNorm epsilon and the logit scale."""
        import gguf

        spec = FILES["q8_0"]
        r = gguf.GGUFReader(files["q8_0"])
        fields = {f.name: f for f in r.fields.values()}
        pat = fields["cohere2moe.attention.sliding_window_pattern"]
        assert [bool(pat.parts[i][0]) for i in pat.data] == list(spec.pattern)
        assert "cohere2moe.attention.layer_norm_epsilon" in fields and "cohere2moe.logit_scale" in fields
        tensors = {t.name for t in r.tensors}
        n = spec.n_layer
        assert {f"blk.{n}.nextn.eh_proj.weight", f"blk.{n}.ffn_gate_inp.weight", f"blk.{n}.ffn_up_shexp.weight"} <= tensors
        assert not any(t.endswith(("ffn_norm.weight", "exp_probs_b.bias", "exp_probs_b")) for t in tensors)
        info = mtpllama.inspect(files["f32"])
        assert info.supported and info.has_mtp and info.n_layer_nextn == 1
        assert info.attention == "GQA with sliding-window layers (window 12): 4 heads, 2 KV heads, head dim 16"
