"""On a CUDA device (marked gpu; skipped where this build has none): greedy MTP output equals plain
output with the layers offloaded, verified rows equal lone rows (patches/0020), the NextN block and
its KV cache sit where mtp_device says (patches/0019), and decode steps launch reused CUDA graphs
(patches/0021).  benchmarks/gpu_check.sh runs these on a lent GPU machine."""
from __future__ import annotations

import pytest

import mtpllama
from mtpllama import SessionConfig, SpecConfig
from mtpllama.testing.fixtures import PROMPTS

CUDA = [d.name for d in mtpllama.devices() if d.name.startswith("CUDA")]
pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not CUDA, reason="no CUDA device in this build or machine")]

GREEDY = [SpecConfig(draft_max=k, draft_p_min=0.0, adaptive=False) for k in (1, 3, 6)] + [SpecConfig()]
# full offload; the GLM recipe (routed experts in RAM, the rest and the whole head on the GPU); the
# head alone on the GPU; everything on the GPU but the head
PLACEMENTS = {
    "full": dict(n_gpu_layers=-1),
    "recipe": dict(n_gpu_layers=-1, tensor_overrides=("exps=CPU",), mtp_device="CUDA0"),
    "head-gpu": dict(n_gpu_layers=0, mtp_device="CUDA0"),
    "head-cpu": dict(n_gpu_layers=-1, mtp_device="CPU"),
}


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    from test_batch_invariance import write_files

    return write_files(tmp_path_factory.mktemp("gpu"))


@pytest.mark.parametrize("placement", sorted(PLACEMENTS))
@pytest.mark.parametrize("dtype", ["f32", "f16", "q8_0", "q4_0", "q4_k"])
def test_greedy_mtp_equals_plain(files, dtype, placement):
    cfg = SessionConfig(n_threads=2, n_ctx=1024)
    with mtpllama.Model(files[dtype], session_defaults=cfg, **PLACEMENTS[placement]) as m:
        for p in PROMPTS[:6]:
            want = m.generate(p, 48, mtp=False).tokens
            for spec in GREEDY:
                assert m.generate(p, 48, spec=spec).tokens == want, (dtype, placement, p, spec)


def test_greedy_mtp_equals_plain_on_trained_model():
    """The trained default model's held-out functions: its near-ties flip on any last-bit difference."""
    from test_default_model import MODEL, function_prompts, held_out_texts

    with mtpllama.Model(str(MODEL), n_gpu_layers=-1) as m, m.session(mtp=False) as plain, m.session() as s:
        for p in function_prompts(held_out_texts()):
            plain.reset()
            want = plain.generate(p, 96).tokens
            for k in (1, 2, 3, 4):
                s.reset()
                got = s.generate(p, 96, spec=SpecConfig(draft_max=k, draft_p_min=0.0, adaptive=False)).tokens
                assert got == want, f"draft_max {k}: MTP output differs from plain decoding on CUDA for {p!r}"


@pytest.mark.parametrize("k", [1, 3, 6])
@pytest.mark.parametrize("dtype", ["f32", "f16", "q8_0", "q4_0", "q4_k"])
def test_verified_rows_equal_lone_rows(files, dtype, k):
    from test_batch_invariance import PROMPT, compare

    with mtpllama.Model(files[dtype], n_gpu_layers=-1) as m:
        same, diff = compare(m, PROMPT, 64, k, threads=2)
    assert same > 0 and diff == 0, f"{diff} of {same + diff} verified rows differ from lone rows on CUDA"


def test_mtp_device_places_block_kv_and_compute(files):
    gpu = CUDA[0]
    with mtpllama.Model(files["q8_0"], **PLACEMENTS["head-gpu"]) as m, m.session() as s:
        assert m.info.mtp_device == gpu
        s.generate("def foo(x):", 8)
        trunk, mtp = s.memory_by_buffer(), s.memory_by_buffer(mtp=True)
        assert sum(u.kv for n, u in trunk.items() if n.startswith("CUDA")) == 0, trunk
        assert sum(u.kv for n, u in mtp.items() if n.startswith("CUDA")) > 0, mtp
        assert sum(u.weights for n, u in mtp.items() if n.startswith("CUDA")) > 0, mtp
    with mtpllama.Model(files["q8_0"], **PLACEMENTS["head-cpu"]) as m, m.session() as s:
        assert m.info.mtp_device == "CPU"
        s.generate("def foo(x):", 8)
        trunk, mtp = s.memory_by_buffer(), s.memory_by_buffer(mtp=True)
        assert sum(u.kv for n, u in trunk.items() if n.startswith("CUDA")) > 0, trunk
        assert sum(u.kv for n, u in mtp.items() if n.startswith("CUDA")) == 0, mtp


def test_recipe_keeps_trunk_experts_in_ram_and_the_head_on_the_gpu(files):
    with mtpllama.Model(files["q8_0"], **PLACEMENTS["recipe"]) as m, m.session() as s:
        assert m.info.mtp_device == CUDA[0]
        s.generate("def foo(x):", 8)
        trunk, mtp = s.memory_by_buffer(), s.memory_by_buffer(mtp=True)
        cpu_weights = sum(u.weights for n, u in trunk.items() if not n.startswith("CUDA"))
        assert cpu_weights > 0, trunk  # the routed experts
        assert sum(u.kv for n, u in trunk.items() if n.startswith("CUDA")) > 0, trunk
        assert sum(u.kv for n, u in mtp.items() if n.startswith("CUDA")) > 0, mtp


def test_cuda_graphs_reused(files):
    with mtpllama.Model(files["q8_0"], n_gpu_layers=-1) as m:
        m.generate(PROMPTS[0], 32, mtp=False)
        before = mtpllama.cuda_graph_counts()
        m.generate(PROMPTS[0], 64, mtp=False)
        plain = {k: v - before[k] for k, v in mtpllama.cuda_graph_counts().items()}
        assert plain["reused"] >= 48, plain
        spec = SpecConfig(draft_max=3, draft_p_min=0.0, adaptive=False)
        m.generate(PROMPTS[1], 64, spec=spec)
        before = mtpllama.cuda_graph_counts()
        m.generate(PROMPTS[1], 64, spec=spec)
        mtp = {k: v - before[k] for k, v in mtpllama.cuda_graph_counts().items()}
        assert mtp["reused"] > mtp["captured"] + mtp["direct"], mtp
