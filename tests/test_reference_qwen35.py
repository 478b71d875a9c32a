"""qwen35moe, qwen35 (Qwen3.5/3.6) and qwen3next (Qwen3-Next): gated delta-net + gated attention
hybrids, against the numpy reference (reference/qwen35moe.py, which models all three).

Real generations with MTP drafting are recorded (every trunk and MTP row, every rollback) and
replayed through the reference, which keeps the recurrent state after every position and restores
it at each rollback, as llama.cpp's state snapshots do for the engine: every trunk logit row,
trunk hand-over state, MTP logit row and MTP output state must be within tolerance, and broken
references (no state rollback, the conv taps reversed, HF's value-head order, ...) are far off.
qwen3next's own conventions (plain NeoX rope, beta and alpha from one ssm_ba per key head, value heads
grouped by key head, the legacy fused ssm_in) are each caught when broken.

Tolerances: TOL_F32 (2e-3) for f32 weights: the engine sits at ~5e-5 to 1.5e-4.  f16 weights:
TOL_F16_GDN (1e-2).  An f16 product sees f16-rounded activations, and f32 noise flips some of those
roundings by one f16 ulp; these hybrids amplify such flips more than glm4moe's trunk does: the
reference against itself with a 3e-7 relative jitter in every f16 product's activation differs by
up to 1.4e-3 to 3.9e-3 per row (60 rows; spec-dependent), and the engine's f16 run below sits at
~2.7e-3 (logits) and ~3.6e-3 (states), so TOL_F16 (5e-3) leaves no margin.

patches/0015: upstream's graph_mtp of qwen35moe.cpp and qwen35.cpp set res->t_h_nextn before
gathering the output rows, and the MTP context is masked (llama_set_embeddings_nextn(ctx, true,
true)): llama_context copies the first n_outputs rows of t_h_nextn, so a multi-row MTP batch
whose output row is not row 0 reported row 0's state (err_vs_row0 ~ 1e-7), which fed the next
recursive draft (test_mtp_output_state_of_multi_row_batch).  Generation stays lossless, so only
the reference sees it.  test_engine_matches_reference compares MTP output states of single-row
evaluations only, so that it holds with or without the patch.  qwen3next's graph_mtp (qwen3next.cpp)
gathers the output rows right after attention, upstream, so its multi-row MTP output states match
without a patch.
"""
from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from mtpllama.testing.arch import WRITERS
from reference import REFERENCES
from mla_cases import check_batch_equals_incremental, check_broken_reference, check_rope_is_relative, make_runs, tie_end
from test_reference import LONG_PROMPT, PROMPT, TOL_F32, Flavour, table_line

R = REFERENCES["qwen35moe"]
assert REFERENCES["qwen35"].Reference is R.Reference  # one reference models all three
assert REFERENCES["qwen3next"].Reference is R.Reference
MOE, DENSE, NEXT = WRITERS["qwen35moe"], WRITERS["qwen35"], WRITERS["qwen3next"]
TOL_F16_GDN = 1e-2


@dataclasses.dataclass(frozen=True)
class ArchFlavour(Flavour):
    arch: str = "qwen35moe"


# Every option at least once, on tiny models: MoE and dense FFNs, tied and own NextN heads, layer kinds
# from attention.recurrent_layers and from full_attention_interval (1 and 2 of 4 layers attend), value
# heads tiled over 2 key heads and Hv == Hk, conv kernels 4 and 3, GQA 2 and 4, IMROPE with and without
# an unrotated ("e") pair, f32 and f16; short (one_chunk) and >= 64-token (tiled) prompt batches.
# qwen3next: value heads grouped by key head (Hv/Hk = 2 and 3), beta/alpha from ssm_ba, NeoX rope, the
# split attn_qkv/attn_gate and the legacy fused ssm_in (Hk = 2, so its per-key-head split matters).
FLAVOURS = {
    "moe_tied": ArchFlavour(MOE.SyntheticSpec(norm_noise=0.3, seed=101), PROMPT, 180, 0.0, TOL_F32),
    # sections (2, 0, 1, 1) over 16 pairs (the sectors wrap around): pairs 1, 5, 9, 13 take p_e, which
    # llama.cpp sets to 0 for text tokens (not rotated)
    "dense_own_e_pair": ArchFlavour(DENSE.SyntheticSpec(nextn="own", full_attention_interval=2, n_head_kv=1, n_rot=32,
                                                        rope_sections=(2, 0, 1, 1), rope_base=10000.0, ssm_k_heads=4,
                                                        ssm_conv=3, norm_noise=0.3, seed=103),
                                    LONG_PROMPT, 150, 0.2, TOL_F32, arch="qwen35"),
    "moe_own_f16_interval2": ArchFlavour(MOE.SyntheticSpec(nextn="own", dtype="f16", layer_types=False,
                                                           full_attention_interval=2, norm_noise=0.3, seed=102),
                                         PROMPT, 180, 0.0, TOL_F16_GDN, near_tie=1e-3),
    "next_tied": ArchFlavour(NEXT.SyntheticSpec(norm_noise=0.3, seed=401), PROMPT, 180, 0.0, TOL_F32, arch="qwen3next"),
    # noise 1.8: the default's drafts are accepted too often for 20 rollbacks
    "next_legacy_own": ArchFlavour(NEXT.SyntheticSpec(nextn="own", legacy_ssm_in=True, ssm_k_heads=2, ssm_v_heads=6,
                                                      full_attention_interval=2, layer_types=False, n_head_kv=1,
                                                      n_rot=16, ssm_conv=3, noise=1.8, norm_noise=0.3, seed=402),
                                   LONG_PROMPT, 150, 0.2, TOL_F32, arch="qwen3next"),
}


class _Writers:
    """make_runs takes one writer module; the flavours name theirs."""

    @staticmethod
    def write_synthetic(path, spec):
        w = NEXT if isinstance(spec, NEXT.SyntheticSpec) else MOE if spec.moe else DENSE
        return w.write_synthetic(path, spec)


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """Generate with each flavour (recording events) and replay it through the reference, once."""
    return make_runs(tmp_path_factory.mktemp("qwen35_reference"), _Writers, R, FLAVOURS)


# --- the reference on its own ------------------------------------------------------------------

SMALL = {"qwen35moe": ("qwen35moe", {}), "qwen35": ("qwen35", {}), "qwen3next": ("qwen3next", {}),
         # the legacy fused ssm_in, 3 value heads per key head
         "qwen3next_legacy": ("qwen3next", dict(legacy_ssm_in=True, ssm_v_heads=6))}


@pytest.fixture(scope="module", params=list(SMALL))
def small_ref(request, tmp_path_factory):
    arch, kw = SMALL[request.param]
    W = WRITERS[arch]
    spec = W.SyntheticSpec(nextn="own", norm_noise=0.3, seed=5, **kw)
    hp, Wt, f16 = R.load_gguf(W.write_synthetic(tmp_path_factory.mktemp("q35_ref") / "small.gguf", spec))
    assert hp.arch == arch and hp.recurrent == (True, True, True, False)
    assert (hp.rope_type, hp.v_head_order) == (("neox", "grouped") if arch == "qwen3next" else ("imrope", "tiled"))
    return R.Reference(hp, Wt, f16, R.Variant(kv_f16=False, attn="exact"))


def test_reference_batch_equals_incremental(small_ref):
    """One batch over a sequence == the same rows one at a time: the recurrence and the conv window
    carried across calls, the attention cache, the MTP block's cache."""
    check_batch_equals_incremental(small_ref, 40)


def test_reference_rope_is_relative(small_ref):
    """A common shift of positions changes nothing (the delta net ignores positions, IMROPE or
    NeoX rope rotates q and k alike); a different spacing does."""
    check_rope_is_relative(small_ref, R.rel_err, 20)


def test_reference_rollback_restores_the_state(small_ref):
    """Forgetting positions >= 18 of a 30-row cache and going on with other tokens == evaluating the
    kept 18 and the new tokens from scratch (the recurrent state restored to position 17's); without
    the restore it is not."""
    ref = small_ref
    rng = np.random.default_rng(1)
    toks = rng.integers(0, ref.hp.n_vocab, 30).tolist()
    alt = rng.integers(0, ref.hp.n_vocab, 8).tolist()
    want, _ = ref.trunk(ref.trunk_cache(), toks[:18] + alt, np.arange(26))
    for r, ok in ((ref, True), (ref.with_variant(rollback=False), False)):
        cache = r.trunk_cache()
        r.trunk(cache, toks[:25], np.arange(25))
        r.trunk(cache, toks[25:], np.arange(25, 30))
        for c in cache:
            c.forget(18)
        assert all(len(c) == 18 for c in cache)
        got, _ = r.trunk(cache, alt, np.arange(18, 26))
        err = R.rel_err(got, want[18:])
        assert (err < 1e-11) if ok else (err > 1e-2), err


def test_reference_delta_rule_is_the_ggml_kernel(small_ref):
    """The reference's delta-net layer for one token from a given state, against ggml's
    gated_delta_net kernel loop written out on its own transposed layout (s[j*S + i] = M[i][j]):
    scale the state by exp(g); delta[j] = (v[j] - sum_i s[j*S+i] k[i]) * beta; s[j*S+i] += k[i] delta[j];
    out[j] = sum_i s[j*S+i] q[i] / sqrt(S).  The projections are read head by head as the graphs
    lay them out: qwen35*'s attn_qkv, ssm_beta, ssm_alpha, value head h reading key head h % Hk;
    qwen3next's ssm_ba (key head kh: [beta (r) | alpha (r)], value head kh*r + j), legacy ssm_in
    (key head kh: [q (S) | k (S) | v (r S) | z (r S)]) and value head h reading key head h // r."""
    ref, hp = small_ref, small_ref.hp
    S, Hk, Hv = hp.ssm_state, hp.ssm_k_heads, hp.ssm_v_heads
    r = Hv // Hk
    rng = np.random.default_rng(2)
    cache = ref.trunk_cache()[0]
    ref.delta_net(0, rng.standard_normal((5, hp.n_embd)), cache)    # some state to start from
    window, M0 = cache.state()
    x = rng.standard_normal((1, hp.n_embd))
    got_state = None

    class Probe(R.RecurrentCache):
        def add(self, conv, ssm):
            nonlocal got_state
            got_state = ssm
    probe = Probe(window, M0)
    ref.delta_net(0, x, probe)

    p, W = "blk.0.", ref.W
    next_ = hp.arch == "qwen3next"
    assert (p + "ssm_ba.weight" in W) == next_ and (p + "ssm_in.weight" in W) == (Hv == 6)
    if p + "ssm_in.weight" in W:
        m = x[0] @ W[p + "ssm_in.weight"].T
        blk = [m[kh * (2 * S + 2 * r * S):(kh + 1) * (2 * S + 2 * r * S)] for kh in range(Hk)]
        qkv = np.concatenate([b[:S] for b in blk] + [b[S:2 * S] for b in blk] + [b[2 * S:2 * S + r * S] for b in blk])
    else:
        qkv = x[0] @ W[p + "attn_qkv.weight"].T
    if next_:
        ba = x[0] @ W[p + "ssm_ba.weight"].T
        b_logit = np.array([ba[(h // r) * 2 * r + h % r] for h in range(Hv)])
        a_logit = np.array([ba[(h // r) * 2 * r + r + h % r] for h in range(Hv)])
    else:
        b_logit, a_logit = x[0] @ W[p + "ssm_beta.weight"].T, x[0] @ W[p + "ssm_alpha.weight"].T
    c = np.concatenate([window, qkv[None]])
    c = np.array([c[:, ch] @ W[p + "ssm_conv1d.weight"][ch] for ch in range(c.shape[1])])   # tap K-1: now
    c = c / (1 + np.exp(-c))
    beta = 1 / (1 + np.exp(-b_logit))
    g = np.log1p(np.exp(a_logit + W[p + "ssm_dt.bias"])) * W[p + "ssm_a"]
    for h in range(Hv):
        kh = h // r if next_ else h % Hk
        q = c[kh * S:(kh + 1) * S]
        k = c[Hk * S + kh * S: Hk * S + (kh + 1) * S]
        v = c[2 * Hk * S + h * S: 2 * Hk * S + (h + 1) * S]
        q, k = q / np.sqrt(q @ q + hp.eps), k / np.sqrt(k @ k + hp.eps)
        s = M0[h].T.reshape(-1) * np.exp(g[h])          # ggml's layout
        delta = np.array([(v[j] - s[j * S:(j + 1) * S] @ k) * beta[h] for j in range(S)])
        for j in range(S):
            s[j * S:(j + 1) * S] += k * delta[j]
        np.testing.assert_allclose(got_state[h], s.reshape(S, S).T, rtol=0, atol=1e-12)


@pytest.mark.parametrize("small_ref", ["qwen3next_legacy"], indirect=True)
def test_reference_legacy_ssm_in_output_gate(small_ref):
    """A legacy file's z (the output gate) is each key head's last r S rows of ssm_in, value head
    kh*r + j reading rows [2S + r S + j S, 2S + r S + (j+1) S) of key head kh's block."""
    ref, hp = small_ref, small_ref.hp
    S, Hk, Hv = hp.ssm_state, hp.ssm_k_heads, hp.ssm_v_heads
    r, n = Hv // Hk, 2 * S + 2 * (Hv // Hk) * S
    x = np.random.default_rng(3).standard_normal((2, hp.n_embd))
    _, z = ref.qkvz(0, x)
    m = x @ ref.W["blk.0.ssm_in.weight"].T
    for h in range(Hv):
        kh, j = divmod(h, r)
        z0 = kh * n + 2 * S + r * S + j * S
        np.testing.assert_array_equal(z[:, h], m[:, z0:z0 + S])


# --- the engine against the reference -------------------------------------------------------------

def rollbacks(events) -> int:
    """Trunk forgets that dropped evaluated positions (restored a recurrent-state snapshot)."""
    n, top = 0, -1
    for e in events:
        if e["kind"] == "trunk":
            top = max(top, e["pos"])
        elif e["kind"] == "trunk_forget":
            n += e["pos"] <= top
            top = min(top, e["pos"] - 1)
        elif e["kind"] == "reset":
            top = -1
    return n


@pytest.mark.parametrize("name", list(FLAVOURS))
def test_engine_matches_reference(runs, name):
    """Every recorded row within tolerance up to the first flipped routing near-tie (most of the run).
    MTP output states: single-row evaluations only (multi-row ones: test_mtp_output_state_of_multi_row_batch)."""
    run, fl = runs(name), FLAVOURS[name]
    res, st = run.replay, run.result.stats
    print(f"\n{table_line(name, res)}  [{run.seconds:.1f}s, {rollbacks(run.events)} rollbacks]")
    assert run.ref.hp.arch == fl.arch
    assert len(run.result.tokens) == fl.n_gen
    assert 200 <= run.n_prompt + fl.n_gen < 512  # the reference does not model the split-KV kernel (>= 512)
    assert sum(st.accepted) > 0 and sum(st.accepted) < sum(st.drafted), (st.drafted, st.accepted)
    assert sum(st.accepted[1:]) > 0  # recursive drafts accepted too
    assert res.mtp_inputs["trunk"] > 0 and res.mtp_inputs["draft"] > 0
    assert rollbacks(run.events) >= 20  # the recurrent state was restored often
    end = tie_end(res, fl)
    assert end >= 0.6 * len(run.events), f"{name}: a near-tie flipped at event {end} of {len(run.events)}"
    for cat in ("trunk_logits", "trunk_h", "mtp_logits", "mtp_h"):
        rows = [r for r in res.select(cat, False if cat == "mtp_h" else None) if r.event < end]
        assert len(rows) >= 60, f"{len(rows)} {cat} rows before event {end}"
        worst = max(rows, key=lambda r: r.err)
        print(f"  {cat}: worst {worst.err:.1e} over {len(rows)} rows")
        assert worst.err < fl.tol, f"{name} {cat}: {worst}"


@pytest.mark.parametrize("name", ["moe_tied", "dense_own_e_pair", "next_tied", "next_legacy_own"])
def test_mtp_output_state_of_multi_row_batch(runs, name):
    """The MTP output state of the output row of a multi-row MTP batch (the state the next draft
    is fed with).  Without patches/0015 upstream's qwen35moe and qwen35 return the batch's row 0 state
    (err_vs_row0 ~ 1e-7); qwen3next's graph_mtp gathers the output rows after attention upstream."""
    res = runs(name).replay
    rows = [r for r in res.select("mtp_h", batched=True) if r.row > 0]
    assert len(rows) > 10
    worst = max(rows, key=lambda r: r.err)
    diag = max(r.err_vs_row0 for r in rows)
    assert worst.err < FLAVOURS[name].tol, (f"{worst}; the engine's state is that of the batch's row 0 (max error "
                                            f"against it {diag:.1e}): is patches/0015 applied?")


# --- a broken reference is detected ------------------------------------------------------------------

BROKEN = [
    # (flavour, variant, how MTP rows get trunk states, the category that must catch it)
    ("moe_tied", dict(rollback=False), "engine", "trunk_logits"),          # rejected drafts left in the state
    ("moe_tied", dict(conv="reversed"), "engine", "trunk_logits"),         # conv taps in the wrong order
    ("moe_tied", dict(kv_heads="grouped"), "engine", "trunk_logits"),      # HF's value-head order, not ggml's tiling
    ("moe_tied", dict(attn_gate=False), "engine", "trunk_logits"),         # attention output gate dropped
    ("moe_tied", dict(shexp_gate=False), "engine", "trunk_logits"),        # shared expert ungated
    ("moe_tied", dict(qk_norm=False), "engine", "trunk_logits"),           # q/k norms ignored
    ("moe_tied", dict(rope="norm"), "engine", "trunk_logits"),             # GPT-J pairs instead of NeoX's
    ("dense_own_e_pair", dict(rope="neox"), "engine", "trunk_logits"),     # the "e" pair rotated as well
    ("dense_own_e_pair", dict(rollback=False), "engine", "trunk_logits"),
    ("moe_tied", dict(concat="h_e"), "engine", "mtp_logits"),              # eh_proj input halves swapped
    ("moe_tied", dict(trunk_h="pre_norm"), "engine", "trunk_h"),           # hand-over before output_norm
    ("moe_tied", dict(trunk_h="pre_norm"), "reference", "mtp_logits"),     # ... seen through the MTP head
    ("moe_tied", dict(mtp_h="pre_norm"), "engine", "mtp_h"),               # fed back before shared_head_norm
    # qwen3next's own conventions
    ("next_tied", dict(kv_heads="tiled"), "engine", "trunk_logits"),       # qwen35's tiled value heads, not grouped
    ("next_legacy_own", dict(kv_heads="tiled"), "engine", "trunk_logits"),  # ... with 3 value heads per key head
    ("next_tied", dict(ba="alpha_beta"), "engine", "trunk_logits"),        # ssm_ba's beta and alpha halves swapped
    ("next_legacy_own", dict(ssm_in="flat"), "engine", "trunk_logits"),    # ssm_in as [q | k | v | z], not per key head
    ("next_legacy_own", dict(rope="norm"), "engine", "trunk_logits"),      # GPT-J pairs instead of NeoX's
    ("next_legacy_own", dict(rollback=False), "engine", "trunk_logits"),
]


@pytest.mark.parametrize("name,variant,trunk_h_from,category", BROKEN,
                         ids=[f"{n}-{'-'.join(f'{k}={v}' for k, v in v_.items())}-{m}" for n, v_, m, _ in BROKEN])
def test_broken_reference_is_detected(runs, name, variant, trunk_h_from, category):
    run = runs(name)
    good = run.replay if trunk_h_from == "engine" else R.replay(run.ref, run.events, trunk_h_from=trunk_h_from)
    bad = R.replay(run.ref.with_variant(**variant), run.events, trunk_h_from=trunk_h_from)
    check_broken_reference(run, FLAVOURS[name], good, bad, category)
