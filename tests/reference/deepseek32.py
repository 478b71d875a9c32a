"""The numpy reference of llama.cpp's ``deepseek32`` forward pass and NextN step: reference/dsa.py (deepseek2's
MLA with DeepSeek Sparse Attention's lightning indexer) for deepseek32 (DeepSeek-V3.2): an indexer in every trunk layer, NEOX rope in the indexer, a required gating key, yarn_log_multiplier read, LayerNorm eps 1e-6."""
from __future__ import annotations

from pathlib import Path

import numpy as np

from .dsa import (CATEGORIES, DSACache, HParams, KVCache, ProvenanceError, Reference, ReplayResult, RowError, Variant,
                  hadamard, rel_err, replay)
from .dsa import load_gguf as _load

ARCH = "deepseek32"

__all__ = ["HParams", "Variant", "KVCache", "DSACache", "Reference", "load_gguf", "replay", "rel_err",
           "ProvenanceError", "ReplayResult", "RowError", "CATEGORIES", "hadamard", "ARCH"]


def load_gguf(path: str | Path) -> tuple[HParams, dict[str, np.ndarray], set[str]]:
    """Hyper-parameters, float64 weights and the names of the f16 tensors of a deepseek32 file."""
    return _load(path, ARCH)
