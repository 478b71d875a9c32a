"""qwen3next (Qwen3-Next) test files: qwen35moe's layout (``qwen35moe``) as the converter's
Qwen3NextModel writes it: plain NeoX rope (no dimension sections), beta and alpha in one projection
``ssm_ba`` (2*Hv, n_embd), per key head [beta (r) | alpha (r)] with r = Hv / Hk, value heads in
HF's order (grouped by key head: value head v reads key head v // r; qwen35's converter reorders
them to ggml's tiled order), the ``qwen2`` pre-tokenizer; with ``legacy_ssm_in`` the older fused
``ssm_in`` (per key head [q (S) | k (S) | v (r S) | z (r S)]) instead of attn_qkv and attn_gate."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..bpe import Tokenizer
from . import qwen35moe

ARCH = "qwen3next"


@dataclass(frozen=True)
class SyntheticSpec(qwen35moe.SyntheticSpec):
    """Shape and behaviour of a synthetic qwen3next file (Qwen3-Next-80B-A3B-like, tiny); the rope
    sections are unused."""

    legacy_ssm_in: bool = False      # the older fused ssm_in instead of attn_qkv + attn_gate
    name: str = "mtpllama-synthetic-qwen3next"

    mrope = False
    fused_ba = True
    tokenizer_pre = "qwen2"


def synthetic_weights(spec: SyntheticSpec, tok: Tokenizer) -> dict[str, np.ndarray]:
    """Weights in numpy layout (rows = output features), keyed by GGUF tensor name."""
    return qwen35moe.synthetic_weights(spec, tok)


add_second_successor = qwen35moe.add_second_successor


def write_synthetic(path: str | Path, spec: SyntheticSpec = SyntheticSpec(), tok: Tokenizer | None = None,
                    weights: dict[str, np.ndarray] | None = None, keys: dict[str, object] | None = None,
                    chat_template: str | None = None) -> Path:
    """Write a synthetic qwen3next GGUF file and return its path.  keys: for bad-file tests (see
    qwen35moe.replace_keys)."""
    return qwen35moe.write_file(path, ARCH, spec, tok, weights, keys, chat_template)
