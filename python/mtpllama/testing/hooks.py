"""Test hooks into the engine (csrc/mtpllama.h, "test hooks"): settings and calls that are not
part of mtpllama's API because they are not lossless or exist only to test one piece alone."""
from __future__ import annotations

from dataclasses import replace

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
