"""Layers on RPC workers (llama.cpp's RPC backend; `mtpllama-rpc-server` on loopback): output equal to
a local run with MTP on and off, the MTP block placed locally or remotely (patches/0019), and a worker
that cannot be reached, dies or stalls raising in Python instead of killing the process
(patches/0022; without it each of those tests takes the test process down)."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import pytest

import mtpllama
from mtpllama import SpecConfig
from mtpllama.testing import SyntheticSpec, write_synthetic
from mtpllama.testing.fixtures import ONE_THREAD, PROMPTS
from mtpllama.testing.rpc import Worker, free_port

GREEDY = [None, SpecConfig(draft_max=1, draft_p_min=0.0, adaptive=False),
          SpecConfig(draft_max=3, draft_p_min=0.0, adaptive=False), SpecConfig()]


@pytest.fixture(scope="module")
def workers():
    ws = [Worker(), Worker()]
    yield ws
    for w in ws:
        w.stop()


@pytest.fixture
def timeout():
    """Yields mtpllama.set_rpc_timeout; restores the default after the test."""
    before = mtpllama.rpc_timeout()
    yield mtpllama.set_rpc_timeout
    mtpllama.set_rpc_timeout(before)


@pytest.fixture(scope="module")
def files(tmp_path_factory, model_files):
    d = tmp_path_factory.mktemp("rpc")
    out = dict(model_files)
    # more layers than workers, and a file whose products are quantised
    out["q8_0"] = str(write_synthetic(d / "q8_0.gguf", SyntheticSpec(nextn="own", dtype="q8_0", n_layer=4,
                                                                      n_dense_lead=1, seed=23)))
    return out


def generate_all(m, n: int = 32) -> dict:
    return {(p, i): m.generate(p, n, spec=spec, mtp=spec is not None).tokens
            for p in PROMPTS[:4] for i, spec in enumerate(GREEDY)}


@pytest.mark.parametrize("name", ["glm45", "glm46", "q8_0"])
def test_output_over_rpc_equals_local(files, workers, name):
    with mtpllama.Model(files[name], session_defaults=ONE_THREAD) as m:
        local = generate_all(m)
        with m.session() as s:
            s.generate(PROMPTS[0], 32, spec=GREEDY[2])
            local_acc = s.stats().accepted
    with mtpllama.Model(files[name], session_defaults=ONE_THREAD, n_gpu_layers=-1,
                        rpc_servers=[w.endpoint for w in workers]) as m:
        assert generate_all(m) == local
        with m.session() as s:
            s.generate(PROMPTS[0], 32, spec=GREEDY[2])
            assert s.stats().accepted == local_acc
    # every MTP output equals plain output (greedy parity holds over RPC too)
    for (p, i), toks in local.items():
        assert toks == local[(p, 0)], (p, i)


def test_layers_split_over_both_workers(files, workers):
    with mtpllama.Model(files["q8_0"], session_defaults=ONE_THREAD, n_gpu_layers=-1,
                        rpc_servers=[w.endpoint for w in workers]) as m, m.session() as s:
        s.generate("def foo(x):", 4)
        trunk = s.memory_by_buffer()
        remote = {n: u for n, u in trunk.items() if n.startswith("RPC")}
        assert len(remote) == 2 and all(u.weights > 0 for u in remote.values()), trunk
        assert {n.split("[")[1].rstrip("]") for n in remote} == {w.endpoint for w in workers}


@pytest.mark.parametrize("where", ["CPU", "RPC1", "RPC0"])
def test_mtp_device_places_the_block_locally_or_on_a_worker(files, workers, where):
    """patches/0019 on real devices: the MTP context's KV cache sits where mtp_device says, whatever
    n_gpu_layers did with the layer; output stays equal to plain decoding."""
    eps = [w.endpoint for w in workers]
    names = {d.description: d.name for d in mtpllama.devices() if d.name.startswith("RPC")}
    with mtpllama.Model(files["q8_0"], session_defaults=ONE_THREAD, mtp=False) as m:
        want = m.generate(PROMPTS[1], 24).tokens
    # RPC0/RPC1 are this process's names, given in registration order: map them to our workers
    dev = {"CPU": "CPU", "RPC0": names.get(eps[0], "RPC0"), "RPC1": names.get(eps[1], "RPC1")}[where]
    with mtpllama.Model(files["q8_0"], session_defaults=ONE_THREAD, n_gpu_layers=-1 if where == "CPU" else 0,
                        rpc_servers=eps, mtp_device=dev) as m, m.session() as s:
        assert m.info.mtp_device == dev
        assert s.generate(PROMPTS[1], 24, spec=GREEDY[2]).tokens == want
        mtp = s.memory_by_buffer(mtp=True)
        kv_at = {n for n, u in mtp.items() if u.kv > 0}
        if where == "CPU":
            assert kv_at == {"CPU"}, mtp
        else:
            endpoint = eps[0] if where == "RPC0" else eps[1]
            assert len(kv_at) == 1 and endpoint in kv_at.pop(), mtp
            assert {n for n, u in s.memory_by_buffer().items() if u.kv > 0} == {"CPU"}  # trunk stays local


def test_names_of_a_models_own_workers_resolve_on_its_first_load(files, workers):
    """A fresh process: the workers are registered before mtp_device and -ot names are resolved."""
    code = (f"import mtpllama\n"
            f"m = mtpllama.Model({files['q8_0']!r}, rpc_servers={[w.endpoint for w in workers]!r}, "
            f"mtp_device='RPC1', tensor_overrides=('blk\\\\.0\\\\.=RPC0',))\n"
            f"print(m.info.mtp_device)\n")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0 and r.stdout.strip() == "RPC1", r.stderr[-2000:]


def test_the_head_stays_local_by_default_and_goes_where_named(files, workers):
    eps = [w.endpoint for w in workers]
    with mtpllama.Model(files["q8_0"], session_defaults=ONE_THREAD, n_gpu_layers=-1, rpc_servers=eps) as m:
        assert m.info.mtp_device == "CPU"  # no round trip per drafted token
        with m.session() as s:
            s.generate("x", 4)
            assert {n for n, u in s.memory_by_buffer(mtp=True).items() if u.kv} == {"CPU"}
    with mtpllama.Model(files["q8_0"], session_defaults=ONE_THREAD, n_gpu_layers=-1, rpc_servers=eps,
                        mtp_device=eps[1]) as m, m.session() as s:  # a worker named by its endpoint
        s.generate("x", 4)
        kv_at = [n for n, u in s.memory_by_buffer(mtp=True).items() if u.kv]
        assert len(kv_at) == 1 and eps[1] in kv_at[0]


def test_tensor_overrides_name_rpc_devices(files, workers):
    """-ot rules take a worker's device name: the named tensors go there, the rest stays local."""
    eps = [w.endpoint for w in workers]
    names = {d.description: d.name for d in mtpllama.devices() if d.name.startswith("RPC")}
    with mtpllama.Model(files["q8_0"], session_defaults=ONE_THREAD, mtp=False) as m:
        want = m.generate(PROMPTS[3], 16).tokens
    with mtpllama.Model(files["q8_0"], session_defaults=ONE_THREAD, n_gpu_layers=0, rpc_servers=eps,
                        tensor_overrides=(r"blk\.1\.=" + names.get(eps[1], "RPC1"),)) as m, m.session() as s:
        assert s.generate(PROMPTS[3], 16, spec=GREEDY[2]).tokens == want
        trunk = s.memory_by_buffer()
        remote = {n: u.weights for n, u in trunk.items() if n.startswith("RPC") and u.weights}
        assert len(remote) == 1 and eps[1] in next(iter(remote)), trunk  # only the named worker holds weights
        assert trunk["CPU"].weights > next(iter(remote.values())) > 0, trunk


def test_unreachable_worker_raises_naming_it(files):
    port = free_port()
    with pytest.raises(mtpllama.ModelLoadError, match=f"RPC worker 127.0.0.1:{port} cannot be reached"):
        mtpllama.Model(files["glm45"], n_gpu_layers=-1, rpc_servers=[f"127.0.0.1:{port}"])
    with mtpllama.Model(files["glm45"], session_defaults=ONE_THREAD) as m:  # the process goes on
        assert m.generate("x", 4).tokens


@pytest.mark.parametrize("bad", ["localhost", "127.0.0.1:", ":50052", "127.0.0.1:99999", "127.0.0.1:5x"])
def test_bad_worker_addresses(files, bad):
    with pytest.raises(ValueError, match="HOST:PORT"):
        mtpllama.Model(files["glm45"], rpc_servers=[bad])


def test_rpc_servers_must_be_a_sequence(files):
    with pytest.raises(TypeError):
        mtpllama.Model(files["glm45"], rpc_servers="127.0.0.1:50052")


def test_bad_timeouts():
    for bad in (-1, float("nan"), "2", True):
        with pytest.raises(ValueError):
            mtpllama.set_rpc_timeout(bad)


def _lose_worker_mid_generation(files, timeout, how: str) -> tuple[Exception, float, str]:
    timeout(2.0)
    w = Worker()
    try:
        with mtpllama.Model(files["q8_0"], session_defaults=ONE_THREAD, n_gpu_layers=-1,
                            rpc_servers=[w.endpoint]) as m, m.session() as s:
            it = s.stream(PROMPTS[0], 4000, spec=GREEDY[2])
            next(it)
            if how == "kill":
                w.proc.kill()
            else:
                os.kill(w.proc.pid, signal.SIGSTOP)
            t0 = time.monotonic()
            with pytest.raises(mtpllama.DecodeError) as e:
                for _ in it:
                    pass
            return e.value, time.monotonic() - t0, w.endpoint
    finally:
        w.stop()


def test_worker_killed_mid_generation_raises(files, timeout):
    err, waited, endpoint = _lose_worker_mid_generation(files, timeout, "kill")
    assert f"RPC worker {endpoint} stopped answering" in str(err)
    assert waited < 2.5
    # the dead worker's device is still listed, with no memory
    assert [d.memory_total for d in mtpllama.devices() if d.description == endpoint] == [0]
    # a new model loads afterwards, on a new worker at the same or another address
    w = Worker()
    try:
        with mtpllama.Model(files["q8_0"], session_defaults=ONE_THREAD, n_gpu_layers=-1,
                            rpc_servers=[w.endpoint]) as m:
            with mtpllama.Model(files["q8_0"], session_defaults=ONE_THREAD) as local:
                assert m.generate(PROMPTS[2], 16).tokens == local.generate(PROMPTS[2], 16).tokens
    finally:
        w.stop()


def test_worker_stalled_mid_generation_raises_within_the_timeout(files, timeout):
    err, waited, _ = _lose_worker_mid_generation(files, timeout, "stop")
    assert "stalled for more than 2000 ms" in str(err)
    assert 1.5 < waited < 4.0, waited


def test_worker_command_rejects_bad_arguments():
    r = subprocess.run([sys.executable, "-m", "mtpllama.rpc", "--port", "0"], capture_output=True, text=True)
    assert r.returncode == 2 and "--port" in r.stderr
