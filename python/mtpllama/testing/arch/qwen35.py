"""qwen35 (Qwen3.5/3.6 dense) test files: qwen35moe's layout (``qwen35moe``: the converter's
Qwen3_5TextModel shares Qwen3_5MoeTextModel's code) with dense SwiGLU FFNs in the trunk and the
NextN block, and no expert keys."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..bpe import Tokenizer
from . import qwen35moe

ARCH = "qwen35"


@dataclass(frozen=True)
class SyntheticSpec(qwen35moe.SyntheticSpec):
    """Shape and behaviour of a synthetic qwen35 file (Qwen3.6-27B-like, tiny); the expert fields
    are unused."""

    name: str = "mtpllama-synthetic-qwen35"

    @property
    def moe(self) -> bool:
        return False


def synthetic_weights(spec: SyntheticSpec, tok: Tokenizer) -> dict[str, np.ndarray]:
    """Weights in numpy layout (rows = output features), keyed by GGUF tensor name."""
    return qwen35moe.synthetic_weights(spec, tok)


add_second_successor = qwen35moe.add_second_successor


def write_synthetic(path: str | Path, spec: SyntheticSpec = SyntheticSpec(), tok: Tokenizer | None = None,
                    weights: dict[str, np.ndarray] | None = None, keys: dict[str, object] | None = None,
                    chat_template: str | None = None) -> Path:
    """Write a synthetic qwen35 GGUF file and return its path.  keys: for bad-file tests (see
    qwen35moe.replace_keys)."""
    return qwen35moe.write_file(path, ARCH, spec, tok, weights, keys, chat_template)
