"""qwen35moe, qwen35 (Qwen3.5/3.6) and qwen3next (Qwen3-Next): a hybrid trunk of gated delta-net
layers with a recurrent state and gated full-attention layers; one NextN block: what glm4moe's tests check, for these
architectures (docs/recurrent.md), and what is new to them, the recurrent state's rollback.

* the test-file writer lays keys and tensors out as llama.cpp's converter does;
* inspect: good files are supported; every rule of csrc/arch/gdn.cpp fails with our message
  instead of a llama.cpp abort (or division by zero);
* greedy MTP == greedy plain, own and tied heads, f32, f16 and q8_0, draft lengths 1..6 (and 8, the
  snapshot depth), with and without a confidence floor;
* without the rollback (a test hook skips restoring the snapshot) greedy output differs;
* verified rows == lone rows (batch invariance); truncation (stop strings, prefix reuse) restores
  a snapshot or rebuilds, and either way continues as a fresh context would;
* split head files, sampling, fuzzing.
The numpy reference's replays are in tests/test_reference_qwen35.py.
"""
from __future__ import annotations

import pytest

import mtpllama
from mtpllama import SessionConfig, SpecConfig
from mtpllama.testing.arch import WRITERS
from mtpllama.testing.fixtures import ONE_THREAD, PROMPTS
from mla_cases import (bad_file_fails_clearly, bools, check_sampled_distribution, check_split_halves,
                       decodes_in_a_child, u32)
from test_batch_invariance import compare
from recurrent_cases import check_chat_turns, check_mtp_ffn_on_output_rows, check_rollback_is_needed
from test_reference import PROMPT

ARCHS = ["qwen35moe", "qwen35", "qwen3next"]


def files_for(arch: str) -> dict:
    Spec = WRITERS[arch].SyntheticSpec
    base = {"qwen35moe": 200, "qwen35": 300, "qwen3next": 400}[arch]
    return {
        "own": Spec(nextn="own", noise=1.0, norm_noise=0.3, seed=base + 1),
        "tied": Spec(nextn="tied", noise=1.0, norm_noise=0.3, seed=base + 2),
        "trunk_only": Spec(nextn="none", seed=base + 3),                     # a quant that dropped the NextN tensors
        "no_mtp": Spec(nextn="none", nextn_declared=False, seed=base + 3),   # the converter's --no-mtp
        "f16": Spec(nextn="own", noise=1.0, dtype="f16", norm_noise=0.3, seed=base + 4),
        "q8_0": Spec(nextn="own", noise=1.0, dtype="q8_0", norm_noise=0.3, seed=base + 5),
    }


@pytest.fixture(scope="module")
def files(tmp_path_factory) -> dict[tuple[str, str], str]:
    out = {}
    for arch in ARCHS:
        d = tmp_path_factory.mktemp(arch)
        for k, spec in files_for(arch).items():
            out[(arch, k)] = str(WRITERS[arch].write_synthetic(d / f"{k}.gguf", spec))
    return out


@pytest.fixture(scope="module")
def models(files):
    opened = {}
    try:
        for arch in ARCHS:
            for k in ("own", "tied"):
                opened[(arch, k)] = mtpllama.Model(files[(arch, k)], session_defaults=ONE_THREAD)
        yield opened
    finally:
        for m in opened.values():
            m.close()


# --- the writer -----------------------------------------------------------------------------------

@pytest.mark.parametrize("arch", ARCHS)
def test_writer_lays_out_as_the_converter(files, arch):
    """Keys and tensors as conversion/qwen.py writes them: the delta net's ssm keys, the layer kinds
    (recurrent_layers, the NextN block not recurrent), four M-RoPE sections, the q+gate attention
    projection, the delta net's projections, and its convolution kept in f32 in a q8_0 file."""
    import gguf

    spec = files_for(arch)["own"]
    r = gguf.GGUFReader(files[(arch, "q8_0")])
    keys = {f.name: f for f in r.fields.values()}
    a = arch + "."
    for k in ("ssm.conv_kernel", "ssm.state_size", "ssm.group_count", "ssm.time_step_rank", "ssm.inner_size",
              "full_attention_interval", "attention.recurrent_layers", "nextn_predict_layers"):
        assert a + k in keys, k
    assert (a + "rope.dimension_sections" in keys) == (arch != "qwen3next")   # Qwen3-Next: plain NeoX rope
    layers = [bool(keys[a + "attention.recurrent_layers"].parts[i][0])
              for i in keys[a + "attention.recurrent_layers"].data]
    assert layers == [spec.recurrent(i) for i in range(spec.n_layer)] + [False]
    if arch != "qwen3next":
        assert [int(keys[a + "rope.dimension_sections"].parts[i][0]) for i in keys[a + "rope.dimension_sections"].data] \
            == list(spec.rope_sections)
    assert (a + "expert_count" in keys) == (arch != "qwen35")
    tensors = {t.name: t for t in r.tensors}
    gdn = {"attn_qkv.weight", "attn_gate.weight", "ssm_conv1d.weight", "ssm_dt.bias", "ssm_a", "ssm_norm.weight",
           "ssm_out.weight"} | ({"ssm_ba.weight"} if arch == "qwen3next" else {"ssm_beta.weight", "ssm_alpha.weight"})
    attn = {"attn_q.weight", "attn_k.weight", "attn_v.weight", "attn_q_norm.weight", "attn_k_norm.weight",
            "attn_output.weight"}
    for i in range(spec.n_layer + 1):
        names = {n[len(f"blk.{i}."):] for n in tensors if n.startswith(f"blk.{i}.")}
        assert (gdn <= names) == spec.recurrent(i) and (attn <= names) == (not spec.recurrent(i)), i
    d, S, Hk, Hv, hd = spec.n_embd, spec.ssm_state, spec.ssm_k_heads, spec.ssm_v_heads, spec.head_dim
    assert list(tensors["blk.0.attn_qkv.weight"].shape) == [d, 2 * Hk * S + Hv * S]
    assert list(tensors["blk.3.attn_q.weight"].shape) == [d, spec.n_head * 2 * hd]
    assert tensors["blk.0.ssm_conv1d.weight"].tensor_type == gguf.GGMLQuantizationType.F32
    assert tensors["blk.0.attn_qkv.weight"].tensor_type == gguf.GGMLQuantizationType.Q8_0


# --- inspect and bad files ------------------------------------------------------------------------

@pytest.mark.parametrize("arch", ARCHS)
def test_inspect(files, arch):
    own, tied, trunk = (mtpllama.inspect(files[(arch, k)]) for k in ("own", "tied", "trunk_only"))
    assert own.arch == arch and own.supported and own.has_mtp and own.n_layer_nextn == 1 and own.kind == "full"
    assert own.attention == ("hybrid: 3 gated delta-net layers (4 value heads, 2 key heads, state 16x16) and "
                             "1 gated attention layers (4 heads, 2 KV heads, head dim 32)")
    assert tied.has_mtp and own.n_tensors_nextn == tied.n_tensors_nextn + 2   # own embed_tokens and head
    assert not trunk.has_mtp and "trunk-only" in trunk.mtp_problem


@pytest.mark.parametrize("arch", ARCHS)
@pytest.mark.parametrize("key", ["trunk_only", "no_mtp"])
def test_trunk_only_file(files, arch, key):
    with pytest.raises(mtpllama.NoMtpHeadError):
        mtpllama.Model(files[(arch, key)], mtp=True)
    with mtpllama.Model(files[(arch, key)], mtp=False, session_defaults=ONE_THREAD) as m:
        assert len(m.generate("def foo(x):", 8).tokens) == 8


def test_split_halves_draft_as_the_full_file(files, tmp_path):
    """extract_mtp / extract_trunk of a qwen35moe file: the trunk with its head file drafts exactly as
    the full file (mla_cases.check_split_halves)."""
    check_split_halves(files[("qwen35moe", "own")], tmp_path)


def _i32s(values):
    import gguf
    return ([int(v) for v in values], gguf.GGUFValueType.ARRAY, gguf.GGUFValueType.INT32)


# (keys to replace (None: drop), what the error says), for the default spec (4 trunk layers, the 4th
# attending; 4 heads of 32, 2 KV heads, rope 8 in sections (2, 1, 1, 0); state 16, 2 key heads, 4 value
# heads, conv 4; 8 experts, 2 used): one row per rule of csrc/arch/gdn.cpp
BAD_KEYS = [
    ({"attention.head_count": u32(0)}, "head_count missing"),
    ({"attention.head_count_kv": u32(3)}, "head_count_kv must divide"),
    ({"attention.key_length": u32(16)}, "key/value lengths must be equal"),
    ({"embedding_length": None}, "embedding_length"),
    ({"context_length": u32(0)}, "context_length"),
    ({"rope.dimension_count": u32(7)}, "rope.dimension_count"),
    ({"rope.dimension_count": u32(64)}, "rope.dimension_count"),
    ({"rope.dimension_sections": None}, "dimension_sections must be an array of 4"),
    ({"rope.dimension_sections": _i32s([2, 1, 1])}, "dimension_sections must be an array of 4"),
    ({"rope.dimension_sections": _i32s([0, 0, 0, 4])}, "must cover between 1"),
    ({"rope.dimension_sections": _i32s([4, 4, 4, 0])}, "must cover between 1"),
    ({"rope.dimension_sections": _i32s([-1, 2, 1, 0])}, "must not be negative"),
    ({"expert_count": None}, "expert_count missing"),
    ({"expert_count": u32(2000)}, "expert_count missing or out of"),
    ({"expert_used_count": u32(9)}, "expert_used_count"),
    ({"expert_feed_forward_length": u32(0)}, "expert_feed_forward_length"),
    ({"ssm.conv_kernel": None}, "ssm.conv_kernel"),
    ({"ssm.conv_kernel": u32(1)}, "ssm.conv_kernel"),
    ({"ssm.state_size": u32(0)}, "ssm.state_size"),
    ({"ssm.group_count": u32(0)}, "ssm.group_count"),
    ({"ssm.group_count": u32(3)}, "multiple of ssm.group_count"),
    ({"ssm.time_step_rank": u32(0)}, "multiple of ssm.group_count"),
    ({"ssm.inner_size": u32(32)}, "ssm.inner_size must be"),
    ({"attention.recurrent_layers": bools([True, True, True, False])}, "bool array with one entry per block"),
    ({"attention.recurrent_layers": _i32s([1, 1, 1, 0, 0])}, "bool array with one entry per block"),
    ({"attention.recurrent_layers": bools([True, True, True, True, False])}, "must mix"),
    ({"attention.recurrent_layers": bools([False] * 5)}, "must mix"),
    ({"attention.recurrent_layers": bools([True, True, True, False, True])}, "marks NextN block 4 recurrent"),
    ({"attention.recurrent_layers": None, "full_attention_interval": u32(0)}, "full_attention_interval must be"),
    ({"attention.recurrent_layers": None, "full_attention_interval": u32(1)}, "must mix"),
    ({"attention.recurrent_layers": None, "full_attention_interval": u32(4000)}, "full_attention_interval must be"),
]


@pytest.mark.parametrize("keys,message", BAD_KEYS, ids=[f"{i}-" + ",".join(k) + ("" if all(k.values()) else "-dropped")
                                                        for i, (k, _) in enumerate(BAD_KEYS)])
def test_bad_hyperparameters_fail_clearly(tmp_path, keys, message):
    """Each is something llama.cpp's loader or the qwen35moe graphs assert on, divide by (the
    interval, the rope sections) or size the state by: inspect and Model refuse it with our message."""
    W = WRITERS["qwen35moe"]
    bad_file_fails_clearly(str(W.write_synthetic(tmp_path / "bad.gguf", W.SyntheticSpec(seed=71), keys=keys)), message)


def test_dense_rules(tmp_path):
    """qwen35 without expert keys needs its dense FFN width."""
    W = WRITERS["qwen35"]
    bad_file_fails_clearly(str(W.write_synthetic(tmp_path / "bad.gguf", W.SyntheticSpec(seed=72),
                                                 keys={"feed_forward_length": None})), "feed_forward_length")


@pytest.mark.parametrize("arch", ARCHS)
@pytest.mark.parametrize("tensor", ["attn_qkv.weight", "attn_gate.weight"])
def test_delta_net_projections_are_required(tmp_path, arch, tensor):
    """The loader leaves a delta-net layer's attn_qkv and attn_gate optional, but its graph
    multiplies by them (a null weight): refused first."""
    W = WRITERS[arch]
    spec = W.SyntheticSpec(seed=73)
    from mtpllama.testing.bpe import train_bpe
    tok = train_bpe(n_merges=spec.n_merges)
    weights = W.synthetic_weights(spec, tok)
    del weights["blk.1." + tensor]
    bad_file_fails_clearly(str(W.write_synthetic(tmp_path / "bad.gguf", spec, tok=tok, weights=weights)),
                           "delta-net layer 1 lacks blk.1." + tensor)


def test_qwen3next_shares_the_delta_net_rules(tmp_path):
    """Qwen3-Next's files follow the same delta-net rules (csrc/arch/gdn.cpp), without the rope
    sections (its files have none: test_writer_lays_out_as_the_converter)."""
    W = WRITERS["qwen3next"]
    for keys, message in [({"ssm.group_count": u32(3)}, "multiple of ssm.group_count"),
                          ({"ssm.inner_size": u32(32)}, "ssm.inner_size must be"),
                          ({"attention.recurrent_layers": bools([False] * 5)}, "must mix")]:
        bad_file_fails_clearly(str(W.write_synthetic(tmp_path / "bad.gguf", W.SyntheticSpec(seed=74), keys=keys)),
                               message)


def test_good_variations_load(tmp_path):
    """Legal files the rules must not refuse: the layer kinds from full_attention_interval alone,
    another interval, as many key heads as value heads, a longer convolution, Qwen3-Next's older
    fused ssm_in."""
    for i, (arch, changes) in enumerate([
        ("qwen35moe", dict(layer_types=False)),
        ("qwen35moe", dict(n_layer=6, full_attention_interval=3)),
        ("qwen35", dict(ssm_k_heads=4, layer_types=False)),
        ("qwen35", dict(ssm_conv=6, rope_sections=(1, 1, 1, 1))),
        ("qwen3next", dict(legacy_ssm_in=True)),
        ("qwen3next", dict(ssm_k_heads=1, layer_types=False)),
    ]):
        W = WRITERS[arch]
        path = str(W.write_synthetic(tmp_path / f"good{i}.gguf", W.SyntheticSpec(seed=74 + i, **changes)))
        assert mtpllama.inspect(path).has_mtp, changes
        with mtpllama.Model(path, session_defaults=ONE_THREAD) as m:
            r = m.generate("def foo(x):", 24, spec=SpecConfig(3, 0.0, adaptive=False))
            assert r.tokens == m.generate("def foo(x):", 24, mtp=False).tokens, changes


def test_missing_shared_expert_names_the_tensor(tmp_path):
    """qwen35moe's loader requires the shared expert (its graphs would skip one that is absent): a
    file without it fails to load, and the error names the missing tensor (llama.cpp's first error
    line, not its last)."""
    W = WRITERS["qwen35moe"]
    path = str(W.write_synthetic(tmp_path / "noshexp.gguf", W.SyntheticSpec(n_ff_shexp=0, seed=80)))
    with pytest.raises(mtpllama.ModelLoadError, match="blk.0.ffn_gate_inp_shexp.weight' not found"):
        mtpllama.Model(path, mtp=False)


def test_quantised_files_decode(files):
    """f16 and q8_0 files decode lone rows and batches in a child process (an abort kills only it)."""
    for key in ("f16", "q8_0"):
        r = decodes_in_a_child(files[("qwen35moe", key)])
        assert r.returncode == 0 and r.stdout.strip() == "24", f"{key}: exit status {r.returncode}: {r.stderr[-2000:]}"


# --- greedy MTP == plain, and the rollback ----------------------------------------------------------

@pytest.fixture(scope="module")
def plain_outputs(models):
    return {(key, p): m.generate(p, 64, mtp=False) for key, m in models.items() for p in PROMPTS}


@pytest.mark.parametrize("arch", ARCHS)
@pytest.mark.parametrize("flavour", ["own", "tied"])
@pytest.mark.parametrize("draft_max", [1, 2, 3, 4, 5, 6, 8])
@pytest.mark.parametrize("p_min", [0.0, 0.85])
def test_mtp_equals_plain(models, plain_outputs, arch, flavour, draft_max, p_min):
    """22 prompts x 64 tokens, fixed draft lengths 1..6 and 8 (every snapshot in use), with and
    without a confidence floor; drafts both accepted and rejected at the first two positions."""
    model = models[(arch, flavour)]
    drafted = [0] * draft_max
    accepted = [0] * draft_max
    for prompt in PROMPTS:
        plain = plain_outputs[((arch, flavour), prompt)]
        mtp = model.generate(prompt, 64, spec=SpecConfig(draft_max, p_min, adaptive=False))
        assert mtp.tokens == plain.tokens, f"prompt {prompt!r}"
        assert mtp.stop_reason == plain.stop_reason
        for i, (d, a) in enumerate(zip(mtp.stats.drafted, mtp.stats.accepted)):
            drafted[i] += d
            accepted[i] += a
    assert accepted[0] > 0 and sum(accepted) < sum(drafted)
    if draft_max >= 2:
        assert accepted[1] > 0


def test_draft_length_is_capped_at_the_snapshot_depth(models):
    """A recurrent trunk keeps 8 snapshots: longer drafts are cut to 8 (and stay lossless)."""
    m = models[("qwen35moe", "own")]
    r = m.generate(PROMPTS[0], 64, spec=SpecConfig(12, 0.0, adaptive=False))
    assert r.tokens == m.generate(PROMPTS[0], 64, mtp=False).tokens
    assert max(k for k, n in enumerate(r.stats.drafts_per_step) if n) == 8


@pytest.mark.parametrize("arch", ARCHS)
@pytest.mark.parametrize("dtype", ["f16", "q8_0"])
@pytest.mark.parametrize("draft_max", [1, 3, 6])
def test_mtp_equals_plain_low_precision(files, arch, dtype, draft_max):
    with mtpllama.Model(files[(arch, dtype)], session_defaults=ONE_THREAD) as m:
        for prompt in PROMPTS[:10]:
            plain = m.generate(prompt, 40, mtp=False)
            mtp = m.generate(prompt, 40, spec=SpecConfig(draft_max, 0.0, adaptive=False))
            assert mtp.tokens == plain.tokens, f"prompt {prompt!r}"


@pytest.mark.parametrize("arch", ARCHS)
def test_adaptive_is_lossless(models, arch):
    model = models[(arch, "own")]
    for prompt in PROMPTS[:6]:
        assert model.generate(prompt, 60, spec=SpecConfig(4, 0.0)).tokens == model.generate(prompt, 60, mtp=False).tokens


@pytest.mark.parametrize("arch", ARCHS)
def test_output_differs_without_the_rollback(models, plain_outputs, arch):
    """The rollback is what keeps MTP lossless here (see recurrent_cases.check_rollback_is_needed)."""
    check_rollback_is_needed(models[(arch, "own")], {p: plain_outputs[((arch, "own"), p)] for p in PROMPTS})


# --- batch invariance ---------------------------------------------------------------------------------

@pytest.mark.parametrize("arch", ARCHS)
@pytest.mark.parametrize("dtype", ["f32", "f16", "q8_0"])
@pytest.mark.parametrize("k", [1, 3])
def test_verified_rows_equal_lone_rows(files, arch, dtype, k):
    """Batches of 2 and 4 rows against plain decoding's lone rows, bit for bit: the delta net runs
    token by token inside a batch (ggml's gated_delta_net), its convolution per row, and the
    products follow patches/0003."""
    key = "own" if dtype == "f32" else dtype
    with mtpllama.Model(files[(arch, key)]) as m:
        same, diff = compare(m, PROMPT, 48, k, threads=1)
    assert same >= 20 and diff == 0, (same, diff)


# --- truncation: stop strings and prefix reuse --------------------------------------------------------

def test_truncation_continues_as_a_fresh_context(models):
    """Reusing a prefix cut back into the caches: a recurrent state restores one of the last pass's
    snapshots (the cut within that pass, no restore pending), else the checkpoint saved 64 tokens
    before the last prompt's end (the kept tokens after it evaluated again), else the kept prefix is
    evaluated again; each way the continuation equals a fresh session's, and each way is taken."""
    m = models[("qwen35moe", "own")]
    spec = SpecConfig(4, 0.0, adaptive=False)
    long_prompt = " ".join(PROMPTS)                  # > 64 tokens: its checkpoint is not at its start
    cases = [(p, cut) for p in PROMPTS[:6] for cut in range(1, 7)] + [(long_prompt, 30), (long_prompt, 130)]
    ways = set()
    for prompt, cut in cases:
        with m.session() as s, m.session() as fresh:
            first = s.generate(prompt, 24, spec=spec)
            context = m.tokenize(prompt) + first.tokens
            new = context[:len(context) - cut] + m.tokenize(" x")
            again = s.generate(new, 16, spec=spec, reuse_prefix=True)
            ref = fresh.generate(new, 16, spec=spec)
            assert again.tokens == ref.tokens, (prompt, cut)
            st = again.stats
            n_keep = st.cached_tokens + st.reevaluated_tokens
            ways.add("rebuilt" if st.reevaluated_tokens == n_keep else
                     "snapshot" if st.reevaluated_tokens <= 1 else "checkpoint")
    assert ways == {"rebuilt", "snapshot", "checkpoint"}, ways


def test_stop_strings(models):
    m = models[("qwen35", "own")]
    for prompt in PROMPTS[:6]:
        plain = m.generate(prompt, 40, mtp=False)
        stop = plain.text[10:13]
        if not stop.strip():
            continue
        a = m.generate(prompt, 40, mtp=False, stop=[stop])
        b = m.generate(prompt, 40, spec=SpecConfig(4, 0.0, adaptive=False), stop=[stop])
        assert a.text == b.text == plain.text[:plain.text.find(stop)]
        with m.session() as s:   # and the session continues after the cut as plain decoding would
            s.generate(prompt, 40, spec=SpecConfig(4, 0.0, adaptive=False), stop=[stop])
            with m.session(mtp=False) as p:
                p.generate(prompt, 40, stop=[stop])
                assert s.generate(" and", 16, spec=SpecConfig(4, 0.0, adaptive=False)).tokens == \
                    p.generate(" and", 16).tokens


def test_snapshots_cost_state_memory(files):
    """The snapshots are llama.cpp's: one copy of every delta-net layer's state per draft position
    (8), on top of the state itself; the attention cache is unchanged."""
    spec = files_for("qwen35moe")["own"]
    n_recurrent = sum(spec.recurrent(i) for i in range(spec.n_layer))
    S, Hv, Hk = spec.ssm_state, spec.ssm_v_heads, spec.ssm_k_heads
    state = (S * S * Hv + (spec.ssm_conv - 1) * (2 * Hk * S + Hv * S)) * 4 * n_recurrent  # bytes per copy
    with mtpllama.Model(files[("qwen35moe", "own")]) as m:
        def kv(n_batch):
            with m.session(mtp=False, config=SessionConfig(n_threads=1, n_ctx=256, n_batch=n_batch)) as s:
                return s.memory()["kv"]
        assert kv(512) - kv(8) == state        # n_batch 8 keeps 7 snapshots: one fewer


# --- sampling and fuzzing -----------------------------------------------------------------------------

@pytest.mark.slow
def test_sampled_mtp_has_plain_sampling_distribution(models):
    """Three drafts a step on a recurrent trunk, verified as the defaults verify: the joint
    distribution of the first 4 tokens equals plain sampling's, and an accept-everything verifier
    is told apart (see mla_cases.check_sampled_distribution)."""
    model = models[("qwen35moe", "own")]
    check_sampled_distribution(model, model.tokenize(PROMPT)[:6], 6000)


@pytest.mark.slow
@pytest.mark.parametrize("arch", ARCHS)
def test_fuzzed_files_never_crash_or_hang(tmp_path, arch):
    """Mutants of a file (qwen35moe with recurrent_layers; qwen35 with the interval rule instead):
    each loads and generates or raises MtpllamaError (tests/fuzz_gguf.py)."""
    import os

    import fuzz_gguf

    W = WRITERS[arch]
    base = W.write_synthetic(tmp_path / "base.gguf", W.SyntheticSpec(nextn="own", layer_types=arch == "qwen35moe",
                                                                     seed=79))
    n = int(os.environ.get("MTPLLAMA_FUZZ_CASES", "1500")) // 4
    failures = fuzz_gguf.run(str(base), n, seed=3, batch=250, timeout_per_case=20.0)
    assert not failures, failures[:5]


def test_mtp_context_reserves_ffn_for_output_rows_only(tmp_path):
    """patches/0015 (0004's half for qwen35moe): the NextN block runs its output projection and FFN
    on output rows only."""
    spec = WRITERS['qwen35moe'].SyntheticSpec(n_expert=8, n_expert_used=4, n_ff_exp=512, seed=3)
    check_mtp_ffn_on_output_rows(WRITERS['qwen35moe'].write_synthetic(tmp_path / "wide_ffn.gguf", spec), spec)


# --- chat on a recurrent trunk -----------------------------------------------------------------------

def test_chat_turns_on_a_recurrent_trunk(tmp_path, templates_dir):
    """Qwen3.5's own chat template (llama.cpp's models/templates) on a qwen35moe file: MTP never
    changes a greedy reply, and a second turn sent as the whole conversation (the first reply's
    empty reasoning block no longer rendered: the text departs near the first prompt's end) reuses
    the first turn's caches from the checkpoint and replies as a fresh session does."""
    path = WRITERS["qwen35moe"].write_synthetic(tmp_path / "chat.gguf", files_for("qwen35moe")["own"],
                                                chat_template=(templates_dir / "Qwen3.5-4B.jinja").read_text())
    st = check_chat_turns(path)
    # not the whole first turn again: from the checkpoint 64 tokens before the first prompt's end
    assert st.reevaluated_tokens <= 64 < st.cached_tokens + st.reevaluated_tokens, st
