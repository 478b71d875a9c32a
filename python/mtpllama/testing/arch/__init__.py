"""Test-file writers, one module per architecture, registered in WRITERS.

Each module defines ``ARCH`` (llama.cpp's architecture name), ``SyntheticSpec`` (shape and
behaviour of a file), ``synthetic_weights(spec, tok)`` and ``write_synthetic(path, spec, tok=None,
weights=None)``, laying out keys and tensors as llama.cpp's converter does for that architecture.
Pieces several writers share are in ``common``.
"""
from __future__ import annotations

from types import ModuleType

from . import deepseek2, glm4moe

WRITERS: dict[str, ModuleType] = {
    glm4moe.ARCH: glm4moe,
    deepseek2.ARCH: deepseek2,
}
