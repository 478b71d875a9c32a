"""Bad files and bad arguments raise clear exceptions instead of crashing."""
from __future__ import annotations

import os
import subprocess
import sys

import numpy as np
import pytest

import mtpllama
from mtpllama.testing.fixtures import ONE_THREAD


def test_missing_path(tmp_path):
    with pytest.raises(mtpllama.ModelNotFoundError, match="not found") as e:
        mtpllama.Model(str(tmp_path / "nope.gguf"))
    assert isinstance(e.value, FileNotFoundError)


def test_directory_path(tmp_path):
    with pytest.raises(mtpllama.ModelNotFoundError, match="not a regular file"):
        mtpllama.Model(str(tmp_path))


def test_not_gguf(tmp_path):
    p = tmp_path / "model.gguf"
    p.write_bytes(b"this is not a model at all" * 10)
    with pytest.raises(mtpllama.NotGGUFError, match="not a GGUF"):
        mtpllama.Model(str(p))
    p.write_bytes(b"")
    with pytest.raises(mtpllama.NotGGUFError):
        mtpllama.Model(str(p))


@pytest.mark.parametrize("keep", [0.05, 0.3, 0.6, 0.95, 0.9999])
def test_truncated_gguf(model_files, tmp_path, keep):
    data = open(model_files["glm45"], "rb").read()
    p = tmp_path / "trunc.gguf"
    p.write_bytes(data[: max(4, int(len(data) * keep))])
    with pytest.raises(mtpllama.ModelLoadError, match="truncated|corrupt"):
        mtpllama.Model(str(p))


def test_trunk_only_file(model_files):
    path = model_files["trunk_only"]
    with pytest.raises(mtpllama.NoMtpHeadError) as e:
        mtpllama.Model(path, mtp=True)
    msg = str(e.value)
    assert "trunk-only" in msg and "mtp=False" in msg and "nextn" in msg
    with mtpllama.Model(path, mtp=False, session_defaults=ONE_THREAD) as m:
        assert not m.info.file_has_mtp and m.info.n_layer_nextn == 1
        assert len(m.generate("def foo(x):", 8).tokens) == 8


def test_unsupported_architecture(tmp_path):
    import gguf

    p = tmp_path / "llama.gguf"
    w = gguf.GGUFWriter(str(p), "llama")
    w.add_block_count(1)
    w.add_tensor("token_embd.weight", np.zeros((4, 8), np.float32))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    with pytest.raises(mtpllama.UnsupportedArchitectureError, match="glm4moe"):
        mtpllama.Model(str(p))


def test_mtp_false_loads_no_nextn_tensor(model_files):
    path = model_files["glm45"]
    with mtpllama.Model(path, mtp=True, use_mmap=False) as a, mtpllama.Model(path, mtp=False, use_mmap=False) as b:
        assert a.info.nextn_bytes_file > 0 and b.info.mtp_loaded is False
        with a.session(mtp=False) as sa, b.session() as sb:
            wa, wb = sa.memory()["weights"], sb.memory()["weights"]
        # the weights allocated without MTP lack the NextN block's bytes (buffers add alignment padding)
        missing = wa - wb
        assert abs(missing - a.info.nextn_bytes_file) <= 64 * a.info.n_tensors_nextn_file, (wa, wb)


def _mapped(path: str) -> bool:
    real = os.path.realpath(path)
    with open("/proc/self/maps") as f:
        return any(line.rstrip("\n").endswith(" " + real) for line in f)


@pytest.mark.skipif(not os.path.exists("/proc/self/maps"), reason="needs Linux's /proc")
@pytest.mark.parametrize("use_mmap", [True, False, None])
def test_use_mmap_maps_or_reads_the_file(model_files, use_mmap):
    """use_mmap=True leaves the file mapped while the model lives; False reads it and maps nothing;
    None reads a file this small (a few MB against the machine's free memory)."""
    path = model_files["glm45"]
    assert not _mapped(path)
    with mtpllama.Model(path, use_mmap=use_mmap, session_defaults=ONE_THREAD) as m:
        assert m.info.use_mmap is (use_mmap is True)
        assert _mapped(path) is m.info.use_mmap
        assert len(m.generate("x", 4, draft_max=2).tokens) == 4
    assert not _mapped(path)


@pytest.mark.parametrize("size_gib, available_gib, expect", [
    (1, 8, False),     # reads a file that fits
    (6, 8, False),     # 3/4 of what is available still fits
    (6.5, 8, True),    # more than that is mapped
    (1, None, True),   # the available memory is unknown: map, as llama.cpp does
])
def test_use_mmap_none_reads_only_what_fits(tmp_path, size_gib, available_gib, expect):
    path = tmp_path / "sparse.gguf"
    with open(path, "wb") as f:
        f.truncate(int(size_gib * 2**30))   # a sparse file: only its size matters here
    cfg = mtpllama.ModelConfig(str(path))
    assert mtpllama.config.resolve_use_mmap(cfg, None if available_gib is None else available_gib * 2**30) is expect
    if available_gib is None:
        return
    # an explicit choice wins over the rule
    assert mtpllama.config.resolve_use_mmap(mtpllama.ModelConfig(str(path), use_mmap=not expect),
                                            available_gib * 2**30) is (not expect)


def test_tensor_override_to_cpu_works(model_files):
    with mtpllama.Model(model_files["glm45"], tensor_overrides=["blk\\.2\\..*=CPU"], session_defaults=ONE_THREAD) as m:
        assert len(m.generate("x", 4, draft_max=2).tokens) == 4


def test_bad_file_does_not_kill_interpreter(tmp_path, model_files):
    # flip bytes in the tensor-info region and load in a child: it must exit normally
    data = bytearray(open(model_files["glm46"], "rb").read())
    for off in range(4000, 4600, 37):
        data[off] ^= 0xFF
    p = tmp_path / "flipped.gguf"
    p.write_bytes(bytes(data))
    code = (f"import mtpllama\n"
            f"try:\n    m = mtpllama.Model({str(p)!r}); m.generate('x', 4)\n"
            f"except mtpllama.MtpllamaError as e:\n    print('raised', type(e).__name__)\n")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr[-2000:]
