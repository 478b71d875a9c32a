"""The numpy reference of llama.cpp's ``qwen35`` (Qwen3.5/3.6 dense): reference/qwen35moe.py models
both architectures (the hybrid trunk and NextN step are the same; qwen35's FFNs, in the trunk and
in the NextN block, are dense SwiGLU: down @ (silu(gate @ y) * (up @ y))), choosing by the file's
general.architecture."""
from __future__ import annotations

from .qwen35moe import (CATEGORIES, HParams, KVCache, ProvenanceError, RecurrentCache, Reference, ReplayResult,
                        RowError, Variant, load_gguf, rel_err, replay)

__all__ = ["HParams", "Variant", "KVCache", "RecurrentCache", "Reference", "load_gguf", "replay", "rel_err",
           "ProvenanceError", "ReplayResult", "RowError", "CATEGORIES"]
