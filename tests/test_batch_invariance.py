"""Verification rows are computed exactly as plain decoding computes a lone row (patches/0003).

Greedy MTP output equals plain output only if the trunk's logits for a position do not depend
on how many rows its batch had.  llama.cpp's CPU backend picks kernels by batch size (tinyBLAS
for 2+ rows of an f32/f16 product, split-KV attention for a lone row over >= 512 cache cells);
mtpllama turns on the patched-in batch-invariant mode (which keeps tinyBLAS for Q8_0/Q4_0
weights, whose tiles compute each row as a lone row), and these tests compare, bit for bit,
the trunk logits of every row verified in a batch with plain decoding's logits at the same
position.  With the mode off the same comparison finds differences (the tests can fail).
"""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import mtpllama
from mtpllama import SessionConfig, SpecConfig
from mtpllama.testing import SyntheticSpec, write_synthetic

PROMPT = "def fibonacci(n):\n    a, b = 0, 1\n"


@pytest.fixture
def invariance():
    """Yields mtpllama.set_batch_invariant; always restores the default (on)."""
    assert mtpllama.batch_invariant(), "batch invariance must be on by default"
    try:
        yield mtpllama.set_batch_invariant
    finally:
        mtpllama.set_batch_invariant(True)


def write_files(d) -> dict[str, str]:
    """One small file per weight type (f32, f16, q8_0, q4_0, q4_k) in folder d (also tests/test_gpu.py's)."""
    out = {}
    for dtype in ("f32", "f16", "q8_0", "q4_0"):
        spec = SyntheticSpec(nextn="own", dtype=dtype, n_embd=128, n_ff=256, n_ff_exp=64, head_dim=32,
                             norm_noise=0.3, seed=41)
        out[dtype] = str(write_synthetic(d / f"{dtype}.gguf", spec))
    # K-quant blocks hold 256 values: every matrix's rows must be a multiple of that long
    spec = SyntheticSpec(nextn="own", dtype="q4_k", n_embd=256, n_ff=512, n_ff_exp=256, head_dim=32,
                         norm_noise=0.3, seed=41)
    out["q4_k"] = str(write_synthetic(d / "q4_k.gguf", spec))
    return out


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    return write_files(tmp_path_factory.mktemp("invariance"))


def trunk_rows(session, prompt, n: int, k: int) -> tuple[list[int], dict]:
    """Generate; return the tokens and {(pos, token): (logits, rows in its batch)} of the trunk."""
    session.reset()
    session.debug_record()
    spec = SpecConfig(draft_max=k, draft_p_min=0.0, adaptive=False) if k else None
    r = session.generate(prompt, n, spec=spec)
    events = [e for e in session.debug_events() if e["kind"] == "trunk"]
    session.debug_record(False)
    batch = {}
    for e in events:
        batch[e["call"]] = batch.get(e["call"], 0) + 1
    rows = {(e["pos"], e["token"]): (e["logits"], batch[e["call"]]) for e in events if e["logits"] is not None}
    return r.tokens, rows


def compare(model, prompt, n: int, k: int, threads: int) -> tuple[int, int]:
    """(identical, different) verification rows of batches of 2+ against plain decoding's rows."""
    cfg = SessionConfig(n_threads=threads, n_ctx=1024)
    with model.session(cfg, mtp=False) as plain, model.session(cfg) as s:
        _, lone = trunk_rows(plain, prompt, n, 0)
        _, batched = trunk_rows(s, prompt, n, k)
    same = diff = 0
    for key, (logits, nrows) in batched.items():
        if nrows > 1 and key in lone and lone[key][1] == 1:
            if np.array_equal(logits, lone[key][0]):
                same += 1
            else:
                diff += 1
    return same, diff


@pytest.mark.parametrize("dtype", ["f32", "f16", "q8_0", "q4_0", "q4_k"])
@pytest.mark.parametrize("k", [1, 2, 3, 4])
def test_verified_rows_equal_lone_rows(files, dtype, k):
    """Batches of 2..5 rows.  Q8_0/Q4_0 products keep llamafile's tiled kernels in this mode on
    AVX2 builds (patches/0003): every tile shape of them must give a lone row's bits.  Q4_K
    weights are repacked on AVX2 builds, and the repacked gemm for each 4 rows of a batch summed
    differently from gemv (patches/0009: 4- and 5-row batches failed without it)."""
    with mtpllama.Model(files[dtype]) as m:
        same, diff = compare(m, PROMPT, 48, k, threads=1)
    assert same >= 20 and diff == 0, (same, diff)


def test_q4_k_file_holds_q4_k_blocks(files):
    """The Q4_K file is what it says (mtpllama.testing.quantize_q4_k, checked against the gguf
    package's dequantizer), so the Q4_K rows above test K-quant kernels."""
    import gguf

    from mtpllama.testing import quantize_q4_k

    types = {t.name: t.tensor_type for t in gguf.GGUFReader(files["q4_k"]).tensors}
    assert types["blk.0.attn_q.weight"] == gguf.GGMLQuantizationType.Q4_K
    assert sum(t == gguf.GGMLQuantizationType.Q4_K for t in types.values()) >= 10
    x = np.random.default_rng(0).standard_normal((16, 512)).astype(np.float32) * np.linspace(0.1, 3, 512)
    y = gguf.quants.dequantize(quantize_q4_k(x), gguf.GGMLQuantizationType.Q4_K)
    step = (x.reshape(16, -1, 32).max(axis=2) - np.minimum(x.reshape(16, -1, 32).min(axis=2), 0)) / 15
    err = np.abs(y - x).reshape(16, -1, 32).max(axis=2)
    # half a code step, widened by the 6-bit scales (rounded up); a clipped value would be a step off
    assert np.all(err <= 0.75 * step), float((err / step).max())


def test_without_invariance_rows_differ(files, invariance):
    """The check above has power: llama.cpp's batched f32 kernels round differently.  (Its batched
    f16 kernels did too on the AVX2 and AVX-512 machines this was written on, but gave a lone
    row's bits on one with AVX512-FP16 and AMX, so f16 is not asserted here.)"""
    invariance(False)
    with mtpllama.Model(files["f32"]) as m:
        same, diff = compare(m, PROMPT, 48, 3, threads=1)
    assert diff > 0, (same, diff)


def test_lone_rows_past_split_kv(files, invariance):
    """2 threads, past 256 positions (a 512-cell attention view): a lone decode row would take the
    split-KV attention kernel.  Invariant: rows equal; not invariant: they differ (q8_0 weights,
    whose products agree across batch sizes anyway, isolate the attention kernel)."""
    with mtpllama.Model(files["q8_0"]) as m:
        prompt = m.tokenize(PROMPT * 40)[:300]
        same, diff = compare(m, prompt, 64, 3, threads=2)
        assert same >= 20 and diff == 0, (same, diff)
        invariance(False)
        same, diff = compare(m, prompt, 64, 3, threads=2)
        assert diff > 0, (same, diff)


def cpu_flags() -> set[str]:
    try:
        lines = Path("/proc/cpuinfo").read_text().splitlines()
    except OSError:
        return set()
    return next((set(line.split(":", 1)[1].split()) for line in lines if line.startswith("flags")), set())


@pytest.mark.skipif("amx_int8" not in cpu_flags(), reason="the CPU has no AMX-INT8: patches/0008 changes nothing here")
def test_q8_0_products_on_amx_tiles(files):
    """patches/0008: a native build on a CPU with AMX multiplies Q8_0 weights with AMX tiles, and
    GCC dropped the stores that configure the tiles, so the first tile instruction killed the
    process (SIGILL).  In a child process, so that a crash fails this test and not the run; the
    tests above then hold the rows those products compute to lone rows' bits."""
    code = ("import sys, mtpllama\n"
            "with mtpllama.Model(sys.argv[1]) as m:\n"
            "    print(len(m.generate(sys.argv[2], 8).tokens))\n")
    r = subprocess.run([sys.executable, "-c", code, files["q8_0"], PROMPT], capture_output=True, text=True,
                       timeout=300)
    assert r.returncode == 0, f"exit status {r.returncode}: {r.stderr[-2000:]}"
    assert int(r.stdout.strip()) >= 1
