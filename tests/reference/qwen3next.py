"""The numpy reference of llama.cpp's ``qwen3next`` (Qwen3-Next): reference/qwen35moe.py models it
with qwen35moe and qwen35 (the same hybrid trunk, MoE FFNs with a gated shared expert and NextN
step), choosing by the file's general.architecture what differs: plain NeoX rope on n_rot dims (no
M-RoPE sections), beta and alpha from one ssm_ba projection (per key head [beta (r) | alpha (r)]),
value heads grouped by key head (value head v reads key head v // r; qwen35's are tiled, v % Hk),
and, in legacy files, q, k, v and z from one ssm_in projection (per key head [q | k | v | z])."""
from __future__ import annotations

from .qwen35moe import (CATEGORIES, HParams, KVCache, ProvenanceError, RecurrentCache, Reference, ReplayResult,
                        RowError, Variant, load_gguf, rel_err, replay)

__all__ = ["HParams", "Variant", "KVCache", "RecurrentCache", "Reference", "load_gguf", "replay", "rel_err",
           "ProvenanceError", "ReplayResult", "RowError", "CATEGORIES"]
