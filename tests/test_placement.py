"""Placement of the MTP block (mtp_device, patches/0019) and the device list, as far as a CPU-only
machine can check them: names are validated before llama.cpp loads anything, "CPU" keeps output
identical, and the per-buffer memory report adds up.  tests/test_gpu.py checks placement on a GPU."""
from __future__ import annotations

import pytest

import mtpllama
from mtpllama.testing.fixtures import ONE_THREAD, PROMPTS


def test_devices_list_the_cpu_first():
    devs = mtpllama.devices()
    assert devs and devs[0].name == "CPU" and devs[0].kind == "cpu"
    assert all(d.kind in ("cpu", "gpu", "igpu", "accel") for d in devs)
    assert len({d.name for d in devs}) == len(devs)


def test_unknown_mtp_device_names_the_known_ones(model_files):
    with pytest.raises(mtpllama.InvalidArgumentError, match=r"mtp_device 'NPU7' is unknown; available: CPU"):
        mtpllama.Model(model_files["glm45"], mtp_device="NPU7")


@pytest.mark.parametrize("kwargs, exc", [
    ({"mtp_device": "CPU", "mtp": False}, ValueError),
    ({"mtp_device": ""}, TypeError),
    ({"mtp_device": 0}, TypeError),
    ({"mtp_device": "CP\0U"}, TypeError),
])
def test_bad_mtp_device_arguments(model_files, kwargs, exc):
    with pytest.raises(exc):
        mtpllama.Model(model_files["glm45"], **kwargs)


@pytest.mark.parametrize("name", ["glm45", "glm46"])
def test_mtp_device_cpu_keeps_output(model_files, name):
    """mtp_device="CPU" (any case) loads the block on the CPU; greedy output equals plain decoding's."""
    with mtpllama.Model(model_files[name], session_defaults=ONE_THREAD) as m:
        plain = [m.generate(p, 24, mtp=False).tokens for p in PROMPTS[:4]]
    with mtpllama.Model(model_files[name], session_defaults=ONE_THREAD, mtp_device="cpu") as m:
        assert m.info.mtp_device == "CPU"
        assert [m.generate(p, 24).tokens for p in PROMPTS[:4]] == plain


def test_mtp_device_of_a_trunk_only_model_with_a_head_file(tmp_path, model_files):
    mtp_file = mtpllama.extract_mtp(model_files["glm45"], tmp_path / "head.gguf")
    with mtpllama.Model(model_files["trunk_only"], mtp_path=mtp_file, mtp_device="CPU",
                        session_defaults=ONE_THREAD) as m:
        assert m.info.mtp_device == "CPU" and m.info.mtp_separate
    with mtpllama.Model(model_files["trunk_only"], mtp=False) as m:
        assert m.info.mtp_device == ""


def test_memory_by_buffer_adds_up(glm45):
    with glm45.session() as s:
        s.generate("def foo(x):", 8)
        total = s.memory()
        trunk, mtp = s.memory_by_buffer(), s.memory_by_buffer(mtp=True)
        assert set(trunk) and set(mtp)
        assert sum(u.kv for u in trunk.values()) + sum(u.kv for u in mtp.values()) == total["kv"]
        assert sum(u.compute for u in trunk.values()) + sum(u.compute for u in mtp.values()) == total["compute"]
        assert sum(u.weights for u in trunk.values()) == total["weights"]
        assert all(u.kv > 0 for u in mtp.values() if u.kv) and sum(u.kv for u in mtp.values()) > 0
    with glm45.session(mtp=False) as s:
        assert s.memory_by_buffer(mtp=True) == {}


def test_cuda_graph_counts_need_the_cuda_backend():
    has_cuda = any(d.name.startswith("CUDA") for d in mtpllama.devices())
    try:
        counts = mtpllama.cuda_graph_counts()
    except mtpllama.NoBackendError as e:
        assert not has_cuda and "no CUDA backend" in str(e)
    else:
        assert set(counts) == {"reused", "captured", "direct"} and all(v >= 0 for v in counts.values())
