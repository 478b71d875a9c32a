"""Test hooks into the engine (csrc/mtpllama.h, "test hooks"): settings and calls that are not
part of mtpllama's API because they are not lossless or exist only to test one piece alone."""
from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np

from .. import _lib
from ..config import SamplingConfig, SpecConfig
from ..model import gen_params

ffi, lib = _lib.ffi, _lib.lib


def spec_with_verify(spec: SpecConfig, verify: str) -> SpecConfig:
    """spec with any verify mode of the header, test hooks included ("test_accept_all": keep every
    draft, which is not lossless: the statistical tests' power check)."""
    if verify not in _lib.VERIFY_MODES_ALL:
        raise ValueError(f"verify must be one of {sorted(_lib.VERIFY_MODES_ALL)}")
    out = replace(spec)
    object.__setattr__(out, "verify", verify)
    return out


def verify_rows(rows: np.ndarray, tokens: list[int], n_before: int, q: np.ndarray | None,
                sampling: SamplingConfig, spec: SpecConfig = SpecConfig(), seed: int = 0) -> tuple[int, int]:
    """The engine's verifier on hand-made rows: rows (n_drafts + 1, n_vocab) trunk logits, tokens the
    context through the pending token followed by the drafts, q (n_drafts, n_vocab) the draft
    distributions or None.  Returns (drafts accepted, next token)."""
    rows = np.ascontiguousarray(rows, dtype=np.float32)
    n_drafts = rows.shape[0] - 1
    toks = ffi.new("int32_t[]", list(tokens))
    qp = ffi.NULL
    if q is not None:
        q = np.ascontiguousarray(q, dtype=np.float32)
        qp = ffi.cast("float *", q.ctypes.data)
    acc, nxt = ffi.new("int32_t *"), ffi.new("int32_t *")
    _lib.check(lib.mtpl_test_verify(ffi.cast("float *", rows.ctypes.data), rows.shape[1], toks, n_before, n_drafts,
                                    qp, gen_params(spec, sampling), seed, acc, nxt), "verify")
    return acc[0], nxt[0]


@dataclass(frozen=True)
class SimHead:
    """How a simulated MTP head behaves at each draft position i: its confidence in draft i is
    uniform on [conf_lo[i], conf_hi[i]], and the draft is accepted (the drafts before it accepted)
    with probability clamp(accept[i] + slope[i] (confidence - the range's middle), 0, 1).  A list
    shorter than the positions repeats its last value."""

    accept: tuple[float, ...]
    conf_lo: tuple[float, ...] = (0.0,)
    conf_hi: tuple[float, ...] = (1.0,)
    slope: tuple[float, ...] = (0.0,)

    def at(self, field_name: str, i: int) -> float:
        values = getattr(self, field_name)
        return values[min(i, len(values) - 1)]


@dataclass(frozen=True)
class SimCosts:
    """Seconds of a simulated step's parts: the trunk pass over k drafts (verify[k], k = 0..k_max),
    the head call, each further MTP decode, the rest of the step, the catch-up per position the
    MTP cache missed during plain steps, and what a trunk pass adds when it reports the states the
    head drafts from (over RPC: reading them back from a worker)."""

    verify: tuple[float, ...]
    head: float
    draft: float
    other: float = 0.0
    catch_up: float = 0.0
    states: float = 0.0


def simulate_controller(costs: SimCosts, head: SimHead, n_steps: int, *, adaptive: bool = True, k_max: int | None = None,
                        p_min: float = 0.0, noise: float = 0.05, seed: int = 0, head_after: SimHead | None = None,
                        switch_step: int = -1, speed_after: float = 0.0,
                        burst: tuple[int, int, float] = (0, 0, 1.0), text_steps: int = 0) -> tuple[list[int], float, float]:
    """The engine's controller (adaptive) or a fixed policy (k_max drafts, none below p_min) against
    a simulated model (mtpl_controller_simulate).  text_steps > 0: a new text (a session reset) every
    text_steps steps, texts alternating between head and head_after.  Returns (drafts verified per
    step, tokens, seconds)."""
    sim = ffi.new("mtpl_controller_sim *")
    sim.k_max = len(costs.verify) - 1 if k_max is None else k_max
    sim.n_steps = n_steps
    sim.adaptive = int(adaptive)
    sim.p_min = p_min
    for k, t in enumerate(costs.verify):
        sim.verify_s[k] = t
    sim.head_s, sim.draft_s, sim.other_s, sim.catch_up_s = costs.head, costs.draft, costs.other, costs.catch_up
    sim.states_s = costs.states
    sim.noise = noise
    for i in range(_lib.MAX_DRAFT):
        sim.conf_lo[i], sim.conf_hi[i] = head.at("conf_lo", i), head.at("conf_hi", i)
        sim.accept[i], sim.slope[i] = head.at("accept", i), head.at("slope", i)
        sim.accept_after[i] = (head_after or head).at("accept", i)
    sim.switch_step = switch_step
    sim.speed_after = speed_after
    sim.burst_start, sim.burst_steps, sim.burst_speed = burst
    sim.text_steps = text_steps
    sim.seed = seed
    drafts = ffi.new("int32_t[]", max(n_steps, 1))
    tokens, seconds = ffi.new("double *"), ffi.new("double *")
    _lib.check(lib.mtpl_controller_simulate(sim, drafts, tokens, seconds), "simulate")
    return list(drafts)[:n_steps], tokens[0], seconds[0]


def mtp_entries(session, head: int = 0) -> list[tuple[int, int]]:
    """NextN block head's MTP cache entries as (trunk position, token), in MTP position order (the
    engine's bookkeeping)."""
    n = ffi.new("int32_t *")
    _lib.check(lib.mtpl_test_mtp_entries(session._ptr(), head, ffi.NULL, ffi.NULL, 0, n), "mtp_entries")
    pos, tok = ffi.new("int32_t[]", max(1, n[0])), ffi.new("int32_t[]", max(1, n[0]))
    _lib.check(lib.mtpl_test_mtp_entries(session._ptr(), head, pos, tok, n[0], n), "mtp_entries")
    return list(zip(pos[0:n[0]], tok[0:n[0]]))


def states_gap_every(session, every: int) -> None:
    """Every every-th verification pass leaves out the states the MTP head drafts from (the
    controller does this on plain steps far from drafting where it pays)."""
    _lib.check(lib.mtpl_test_states_gap_every(session._ptr(), every), "states_gap_every")


def group_cap_rates(group, n_seq: int, tokens_per_s: list[float]) -> None:
    """Seed a group's draft cap bandit for steps of n_seq sessions: cap c as if measured for a second
    at tokens_per_s[c] (so that tests choose what drafting pays without timing it)."""
    rates = ffi.new("double[]", [float(x) for x in tokens_per_s])
    _lib.check(lib.mtpl_test_group_cap_rates(group._ptr(), n_seq, rates, len(tokens_per_s)), "group_cap_rates")
