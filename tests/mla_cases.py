"""Cases and helpers the DSA architectures' test files share (tests/test_arch_glm_dsa.py,
tests/test_arch_deepseek32.py): the bad-key rows of the MLA rules they share with deepseek2
(csrc/arch/mla.cpp), the DSA indexer's rows, the reference-replay runner and its near-tie cut.
tests/test_arch_deepseek2.py keeps its own copies (it came first)."""
from __future__ import annotations

import dataclasses
import subprocess
import sys
import time

import mtpllama
from mtpllama.testing.fixtures import ONE_THREAD
from test_reference import PROMPT, spec_config


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


def make_runs(directory, writer, reference, flavours: dict, follow: float):
    """A function name -> Run: generate with the flavour (recording events) and replay it through the
    reference once, following indexer near-ties closer than `follow` (reference/dsa.py's replay)."""
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
            res = reference.replay(ref, events, follow=(fl.tol, follow))
            cache[name] = Run(ref, events, result, len(prompt), res, time.perf_counter() - t0)
        return cache[name]

    return get


def tie_end(res, fl) -> int:
    """The first event whose row differs because a near-tie (expert routing, or an indexer choice the
    replay could not follow) was decided the other way."""
    cats = ("trunk_logits", "trunk_h", "mtp_logits", "mtp_h")
    ties = [r for c in cats for r in res.select(c, None) if r.err >= fl.tol and r.margin < fl.near_tie]
    return min((r.event for r in ties), default=1 << 62)


def err_before(res, category: str, end: int) -> float:
    """The largest error of a category's rows before event end (a flipped near-tie's)."""
    return max((r.err for r in res.select(category, None) if r.event < end), default=0.0)
