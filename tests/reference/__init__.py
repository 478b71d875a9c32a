"""Independent numpy references of the architectures' forward passes and NextN steps, one module
per architecture, registered in REFERENCES (llama.cpp's architecture name -> module).  Each module
has ``load_gguf(path) -> (hparams, weights, f16)``, ``Reference(hparams, weights, f16)`` and
``replay(reference, events)``."""
from __future__ import annotations

from types import ModuleType

from . import deepseek2, glm4moe

REFERENCES: dict[str, ModuleType] = {
    "glm4moe": glm4moe,
    "deepseek2": deepseek2,
}
