"""The numpy reference of llama.cpp's ``glm-dsa`` forward pass and NextN step: reference/dsa.py (deepseek2's
MLA with DeepSeek Sparse Attention's lightning indexer) for glm-dsa (GLM-5/5.1/5.2): full and shared indexer layers (GLM-5.2's attention.indexer.types), NORM rope in the indexer, sigmoid gating when the key is absent, no yarn_log_multiplier, LayerNorm eps 0."""
from __future__ import annotations

from pathlib import Path

import numpy as np

from .dsa import (CATEGORIES, DSACache, HParams, KVCache, ProvenanceError, Reference, ReplayResult, RowError, Variant,
                  hadamard, rel_err, replay)
from .dsa import load_gguf as _load

ARCH = "glm-dsa"

__all__ = ["HParams", "Variant", "KVCache", "DSACache", "Reference", "load_gguf", "replay", "rel_err",
           "ProvenanceError", "ReplayResult", "RowError", "CATEGORIES", "hadamard", "ARCH"]


def load_gguf(path: str | Path) -> tuple[HParams, dict[str, np.ndarray], set[str]]:
    """Hyper-parameters, float64 weights and the names of the f16 tensors of a glm-dsa file."""
    return _load(path, ARCH)
