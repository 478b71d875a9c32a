"""GGUF fuzzing: mutate a valid tiny file, load each mutant in a child process.

Each case is a deterministic function of (seed, index).  A child process runs a
batch of cases, writing the index of the case it starts to a progress file, so
the parent knows which case a crash, abort or hang belongs to and resumes after
it.  Every case must either load and generate, or raise MtpllamaError.

    python tests/fuzz_gguf.py BASE.gguf --cases 20000      # the long run
"""
from __future__ import annotations

import os
import random
import struct
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

# (key, gguf value type, bad values): metadata the loader trusts
BAD_VALUES = {
    "glm4moe.block_count": [0, 1, 2, 10_000, 2**31 - 1, 2**32 - 1],
    "glm4moe.nextn_predict_layers": [0, 2, 3, 2**32 - 1],
    "glm4moe.embedding_length": [0, 1, 63, 65, 2**31],
    "glm4moe.attention.head_count": [0, 3, 5, 64, 2**32 - 1],
    "glm4moe.attention.head_count_kv": [0, 3, 4, 8, 2**32 - 1],
    "glm4moe.attention.key_length": [0, 8, 17, 2**20],
    "glm4moe.attention.value_length": [0, 8, 17, 2**20],
    "glm4moe.rope.dimension_count": [0, 1, 7, 17, 64, 2**31],
    "glm4moe.expert_count": [0, 1, 7, 9, 100_000],
    "glm4moe.expert_used_count": [0, 3, 9, 100_000],
    "glm4moe.expert_shared_count": [0, 2, 100],
    "glm4moe.leading_dense_block_count": [0, 2, 3, 1000],
    "glm4moe.expert_feed_forward_length": [0, 16, 33, 2**31],
    "glm4moe.feed_forward_length": [0, 64, 2**31],
    "glm4moe.context_length": [0, 1, 2**32 - 1],
    "glm4moe.expert_gating_func": [0, 1, 3, 99],
    "tokenizer.ggml.eos_token_id": [2**31, 2**32 - 1, 10_000],
    # deepseek2 (MLA): ranks, lengths and counts its graphs size tensors and caches by
    "deepseek2.block_count": [0, 1, 2, 27, 10_000, 2**32 - 1],
    "deepseek2.nextn_predict_layers": [0, 2, 2**32 - 1],
    "deepseek2.embedding_length": [0, 1, 63, 65, 2**31],
    "deepseek2.attention.head_count": [0, 3, 5, 64, 2**32 - 1],
    "deepseek2.attention.head_count_kv": [0, 2, 4, 2**32 - 1],
    "deepseek2.attention.q_lora_rank": [0, 1, 47, 2**31],
    "deepseek2.attention.kv_lora_rank": [0, 1, 31, 33, 2**31],
    "deepseek2.attention.key_length": [0, 16, 47, 49, 2**20],
    "deepseek2.attention.value_length": [0, 16, 31, 2**20],
    "deepseek2.attention.key_length_mla": [0, 16, 31, 33, 2**20],
    "deepseek2.attention.value_length_mla": [0, 15, 17, 2**20],
    "deepseek2.rope.dimension_count": [0, 1, 15, 17, 32, 2**31],
    "deepseek2.expert_count": [0, 1, 7, 9, 100_000],
    "deepseek2.expert_used_count": [0, 3, 9, 100_000],
    "deepseek2.expert_shared_count": [0, 2, 100],
    "deepseek2.leading_dense_block_count": [0, 2, 3, 1000],
    "deepseek2.expert_feed_forward_length": [0, 16, 33, 2**31],
    "deepseek2.feed_forward_length": [0, 64, 2**31],
    "deepseek2.expert_gating_func": [0, 1, 3, 99],
    "deepseek2.expert_group_count": [1, 3, 8, 2**32 - 1],
    "deepseek2.expert_group_used_count": [0, 4, 2**32 - 1],
}
# glm-dsa and deepseek32 (MLA + the DSA indexer): deepseek2's MLA keys, and the indexer's sizes (its
# key length sizes a Hadamard rotation, its top_k a per-row selection)
for _arch in ("glm-dsa", "deepseek32"):
    BAD_VALUES.update({_arch + k[len("deepseek2"):]: v for k, v in BAD_VALUES.items() if k.startswith("deepseek2.")})
    BAD_VALUES.update({
        _arch + ".attention.indexer.head_count": [0, 1, 7, 2**16, 2**32 - 1],
        _arch + ".attention.indexer.key_length": [0, 16, 63, 96, 128, 2**20],
        _arch + ".attention.indexer.top_k": [0, 1, 15, 2**31, 2**32 - 1],
    })

# qwen35moe, qwen35 and qwen3next (gated delta-net hybrids): the delta net's sizes (they shape its state, its
# convolution and the head grouping), the layer pattern and the attention and expert sizes
for _arch in ("qwen35moe", "qwen35", "qwen3next"):
    BAD_VALUES.update({_arch + "." + k: v for k, v in {
        "block_count": [0, 1, 2, 4, 10_000, 2**32 - 1],
        "nextn_predict_layers": [0, 2, 5, 2**32 - 1],
        "embedding_length": [0, 1, 63, 65, 2**31],
        "attention.head_count": [0, 3, 5, 64, 2**32 - 1],
        "attention.head_count_kv": [0, 3, 4, 8, 2**32 - 1],
        "attention.key_length": [0, 8, 31, 33, 2**20],
        "attention.value_length": [0, 8, 31, 33, 2**20],
        "rope.dimension_count": [0, 1, 6, 7, 32, 33, 2**31],
        "expert_count": [0, 1, 7, 9, 100_000],
        "expert_used_count": [0, 3, 9, 100_000],
        "expert_feed_forward_length": [0, 16, 33, 2**31],
        "expert_shared_feed_forward_length": [0, 16, 33, 2**31],
        "feed_forward_length": [0, 64, 2**31],
        "context_length": [0, 1, 2**32 - 1],
        "ssm.conv_kernel": [0, 1, 2, 3, 5, 100, 2**31],
        "ssm.inner_size": [0, 32, 65, 2**31],
        "ssm.state_size": [0, 1, 8, 15, 17, 2**20],
        "ssm.time_step_rank": [0, 1, 2, 3, 8, 2**31],
        "ssm.group_count": [0, 1, 3, 4, 8, 2**31],
        "full_attention_interval": [0, 1, 2, 3, 5, 2**32 - 1],
    }.items()})

# nemotron_h_moe: Mamba-2's sizes (heads, groups, inner size, state), and the expert sizes (its
# per-layer kinds live in arrays, which only the byte flips reach)
BAD_VALUES.update({"nemotron_h_moe." + k: v for k, v in {
    "block_count": [0, 1, 2, 6, 10_000, 2**32 - 1],
    "nextn_predict_layers": [0, 2, 7, 2**32 - 1],
    "embedding_length": [0, 1, 63, 65, 2**31],
    "attention.head_count": [0, 3, 5, 64, 2**32 - 1],
    "attention.key_length": [0, 8, 15, 17, 2**20],
    "attention.value_length": [0, 8, 15, 17, 2**20],
    "expert_count": [0, 1, 7, 9, 100_000],
    "expert_used_count": [0, 3, 9, 100_000],
    "expert_feed_forward_length": [0, 16, 33, 2**31],
    "expert_shared_feed_forward_length": [0, 16, 47, 2**31],
    "expert_group_count": [0, 2, 3, 2**32 - 1],
    "ssm.conv_kernel": [0, 1, 2, 5, 100, 2**31],
    "ssm.inner_size": [0, 64, 100, 127, 2**31],
    "ssm.state_size": [0, 1, 8, 15, 2**20],
    "ssm.time_step_rank": [0, 1, 3, 7, 16, 2**31],
    "ssm.group_count": [0, 1, 3, 4, 2**31],
}.items()})

# bailingmoe3: the KDA head size and convolution, the MLA ranks and lengths, the expert sizes
BAD_VALUES.update({"bailingmoe3." + k: v for k, v in {
    "block_count": [0, 1, 2, 4, 10_000, 2**32 - 1],
    "nextn_predict_layers": [0, 2, 5, 2**32 - 1],
    "embedding_length": [0, 1, 63, 65, 2**31],
    "attention.head_count": [0, 3, 5, 64, 2**32 - 1],
    "attention.q_lora_rank": [0, 1, 47, 2**31],
    "attention.kv_lora_rank": [0, 1, 31, 33, 2**31],
    "attention.key_length": [0, 16, 47, 49, 2**20],
    "attention.value_length": [0, 16, 31, 2**20],
    "attention.key_length_mla": [0, 16, 31, 33, 2**20],
    "attention.value_length_mla": [0, 15, 17, 2**20],
    "rope.dimension_count": [0, 1, 15, 17, 32, 2**31],
    "kda.head_dim": [0, 1, 8, 15, 17, 2**20],
    "ssm.conv_kernel": [0, 1, 2, 5, 100, 2**31],
    "expert_count": [0, 1, 7, 9, 100_000],
    "expert_used_count": [0, 3, 9, 100_000],
    "expert_gating_func": [0, 1, 3, 99],
    "expert_feed_forward_length": [0, 16, 33, 2**31],
    "expert_shared_count": [0, 2, 100],
    "leading_dense_block_count": [0, 2, 4, 1000],
    "feed_forward_length": [0, 64, 2**31],
}.items()})


# the architectures with several NextN blocks, and cohere2moe: the block and head counts, the
# attention and expert sizes, the window (per-block head counts and window patterns that live in
# arrays only the byte flips reach)
for _arch in ("hy_v3", "mimo2", "step35", "cohere2moe"):
    BAD_VALUES.update({_arch + "." + k: v for k, v in {
        "block_count": [0, 1, 2, 4, 6, 10_000, 2**32 - 1],
        "nextn_predict_layers": [0, 1, 2, 4, 9, 2**32 - 1],
        "embedding_length": [0, 1, 63, 65, 2**31],
        "attention.head_count": [0, 3, 5, 64, 2**32 - 1],
        "attention.head_count_kv": [0, 3, 4, 8, 2**32 - 1],
        "attention.key_length": [0, 8, 15, 17, 2**20],
        "attention.value_length": [0, 8, 11, 17, 2**20],
        "rope.dimension_count": [0, 1, 6, 7, 32, 2**31],
        "attention.sliding_window": [0, 1, 2**32 - 1],
        "expert_count": [0, 1, 7, 9, 100_000],
        "expert_used_count": [0, 3, 9, 100_000],
        "expert_feed_forward_length": [0, 16, 33, 2**31],
        "expert_shared_feed_forward_length": [0, 16, 33, 2**31],
        "feed_forward_length": [0, 64, 2**31],
        "context_length": [0, 1, 2**32 - 1],
        "expert_gating_func": [0, 1, 3, 99],
        "leading_dense_block_count": [0, 2, 4, 5, 1000],
        "attention.sliding_window_pattern": [0, 1, 2, 3, 2**32 - 1],
    }.items()})

# deepseek4: the attention, indexer, compressor, hyper-connection and routing keys
BAD_VALUES.update({"deepseek4." + k: v for k, v in {
    "block_count": [0, 1, 2, 4, 6, 10_000, 2**32 - 1],
    "nextn_predict_layers": [0, 1, 2, 4, 2**32 - 1],
    "embedding_length": [0, 1, 63, 65, 2**31],
    "attention.head_count": [0, 3, 5, 64, 2**32 - 1],
    "attention.head_count_kv": [0, 2, 4, 2**32 - 1],
    "attention.key_length": [0, 8, 64, 127, 2**20],
    "attention.value_length": [0, 8, 64, 127, 2**20],
    "rope.dimension_count": [0, 1, 7, 64, 256, 2**31],
    "attention.q_lora_rank": [0, 1, 33, 2**31],
    "attention.output_group_count": [0, 1, 3, 8, 2**32 - 1],
    "attention.output_lora_rank": [0, 1, 31, 2**31],
    "attention.sliding_window": [0, 1, 2**32 - 1],
    "attention.indexer.head_count": [0, 1, 3, 2**32 - 1],
    "attention.indexer.key_length": [0, 32, 63, 128, 2**20],
    "attention.indexer.top_k": [0, 1, 2**32 - 1],
    "hyper_connection.count": [0, 1, 2, 8, 2**32 - 1],
    "hyper_connection.sinkhorn_iterations": [0, 1, 2**32 - 1],
    "hash_layer_count": [0, 2, 4, 5, 2**32 - 1],
    "expert_count": [0, 1, 7, 9, 100_000],
    "expert_used_count": [0, 3, 9, 100_000],
    "expert_feed_forward_length": [0, 16, 33, 2**31],
    "expert_shared_count": [0, 2, 100],
    "expert_gating_func": [0, 1, 2, 3, 99],
    "context_length": [0, 1, 2**32 - 1],
}.items()})


def read_kv_layout(data: bytes):
    """Offsets of the scalar integer KV values in a GGUF file: {key: (offset, struct format)}."""
    off = 4 + 4
    n_tensors, n_kv = struct.unpack_from("<QQ", data, off)
    off += 16
    fmt = {0: "<B", 1: "<b", 2: "<H", 3: "<h", 4: "<I", 5: "<i", 6: "<f", 7: "<?", 10: "<Q", 11: "<q", 12: "<d"}
    out = {}

    def read_str(o):
        (n,) = struct.unpack_from("<Q", data, o)
        return data[o + 8:o + 8 + n].decode("utf-8", "replace"), o + 8 + n

    def skip_value(t, o):
        if t in fmt:
            return o + struct.calcsize(fmt[t])
        if t == 8:
            return read_str(o)[1]
        if t == 9:
            at, n = struct.unpack_from("<IQ", data, o)
            o += 12
            for _ in range(n):
                o = skip_value(at, o)
            return o
        raise ValueError(f"type {t}")

    for _ in range(n_kv):
        key, off = read_str(off)
        (t,) = struct.unpack_from("<I", data, off)
        off += 4
        if t in fmt and t not in (6, 7, 12):
            out[key] = (off, fmt[t])
        off = skip_value(t, off)
    return out, off  # off: start of the tensor-info table


def mutate(base: bytes, seed: int, index: int) -> tuple[str, bytes]:
    rng = random.Random(seed * 1_000_003 + index)
    layout, tinfo = read_kv_layout(base)
    kind = rng.choice(["truncate", "flip_header", "flip_tensor_info", "flip_any", "bad_value", "bad_value",
                       "bad_pair"])
    data = bytearray(base)
    if kind == "truncate":
        return kind, bytes(data[: rng.randrange(0, len(data))])
    if kind in ("bad_value", "bad_pair"):
        for _ in range(1 if kind == "bad_value" else 2):
            key = rng.choice([k for k in BAD_VALUES if k in layout])
            off, f = layout[key]
            v = rng.choice(BAD_VALUES[key])
            size = struct.calcsize(f)
            v &= (1 << (8 * size)) - 1
            if f in ("<b", "<h", "<i", "<q") and v >= 1 << (8 * size - 1):
                v -= 1 << (8 * size)
            struct.pack_into(f, data, off, v)
        return kind, bytes(data)
    lo, hi = {"flip_header": (0, tinfo), "flip_tensor_info": (tinfo, min(len(data), tinfo + 4096)),
              "flip_any": (0, len(data))}[kind]
    for _ in range(rng.randint(1, 8)):
        pos = rng.randrange(lo, hi)
        data[pos] = rng.choice([0x00, 0xFF, 0x7F, 0x80, rng.randrange(256), data[pos] ^ (1 << rng.randrange(8))])
    return kind, bytes(data)


CHILD = r"""
import os, sys
sys.path[:0] = [p for p in os.environ.get('FUZZ_PYTHONPATH', '').split(os.pathsep) if p]
import mtpllama
from fuzz_gguf import mutate
base = open(sys.argv[1], 'rb').read()
seed, start, stop, progress, work = int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4]), sys.argv[5], sys.argv[6]
cfg = mtpllama.SessionConfig(n_threads=1, n_ctx=64)
for i in range(start, stop):
    with open(progress, 'w') as f:
        f.write(str(i))
    kind, data = mutate(base, seed, i)
    path = os.path.join(work, 'case.gguf')
    with open(path, 'wb') as f:
        f.write(data)
    for mtp in (True, False):
        try:
            with mtpllama.Model(path, mtp=mtp, session_defaults=cfg) as m:
                m.generate([1, 2, 3], 2, mtp=mtp)
                if mtp:
                    m.generate([1, 2, 3], 3, draft_max=2)
        except mtpllama.MtpllamaError:
            pass
with open(progress, 'w') as f:
    f.write('done')
"""


def run(base_path: str, n_cases: int, seed: int = 0, batch: int = 500, timeout_per_case: float = 20.0):
    """Run n_cases; returns a list of (index, kind, how) for cases that crashed or hung."""
    import time

    base = Path(base_path).read_bytes()
    failures = []
    here = os.path.dirname(os.path.abspath(__file__))
    env = dict(os.environ, FUZZ_PYTHONPATH=os.pathsep.join([here, os.environ.get("PYTHONPATH", "")]))
    with tempfile.TemporaryDirectory() as work:
        progress = os.path.join(work, "progress")
        i = 0
        while i < n_cases:
            stop = min(n_cases, i + batch)
            with open(progress, "w") as f:
                f.write(str(i))
            proc = subprocess.Popen([sys.executable, "-c", CHILD, base_path, str(seed), str(i), str(stop), progress, work],
                                    stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=env, cwd=here)
            last, since, how = None, time.monotonic(), None
            while proc.poll() is None:
                time.sleep(0.05)
                try:
                    state = open(progress).read()
                except OSError:
                    state = last
                if state != last:
                    last, since = state, time.monotonic()
                elif time.monotonic() - since > timeout_per_case:
                    proc.kill()
                    proc.wait()
                    how = "hang"
                    break
            err = proc.stderr.read().decode(errors="replace") if proc.stderr else ""
            state = open(progress).read()
            if how is None and proc.returncode == 0 and state == "done":
                i = stop
                continue
            how = how or f"exit {proc.returncode}: {err[-500:]}"
            bad = int(state) if state.isdigit() else stop - 1
            failures.append((bad, mutate(base, seed, bad)[0], how))
            i = bad + 1
    return failures


if __name__ == "__main__":
    import argparse

    ap = argparse.ArgumentParser()
    ap.add_argument("base")
    ap.add_argument("--cases", type=int, default=20000)
    ap.add_argument("--seed", type=int, default=1)
    a = ap.parse_args()
    fails = run(a.base, a.cases, a.seed)
    for f in fails:
        print(f)
    print(f"{a.cases} cases, {len(fails)} crashes or hangs")
    sys.exit(1 if fails else 0)
