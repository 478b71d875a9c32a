"""Independent numpy references of the architectures' forward passes and NextN steps, one module
per architecture, registered in REFERENCES (llama.cpp's architecture name -> module).  Each module
has ``load_gguf(path) -> (hparams, weights, f16)``, ``Reference(hparams, weights, f16)`` and
``replay(reference, events)``
(reference/dsa.py holds what the DSA architectures glm-dsa and deepseek32 share;
reference/qwen35moe.py models the gated delta-net hybrids, qwen35moe, qwen35 and qwen3next)."""
from __future__ import annotations

from types import ModuleType

from . import deepseek2, deepseek32, glm4moe, glm_dsa, qwen3next, qwen35, qwen35moe

REFERENCES: dict[str, ModuleType] = {
    "glm4moe": glm4moe,
    "deepseek2": deepseek2,
    "glm-dsa": glm_dsa,
    "deepseek32": deepseek32,
    "qwen35moe": qwen35moe,
    "qwen35": qwen35,
    "qwen3next": qwen3next,
}
