"""Test-file writers, one module per architecture, registered in WRITERS.

Each module defines ``ARCH`` (llama.cpp's architecture name), ``SyntheticSpec`` (shape and
behaviour of a file), ``synthetic_weights(spec, tok)`` and ``write_synthetic(path, spec, tok=None,
weights=None)``, laying out keys and tensors as llama.cpp's converter does for that architecture.
Pieces several writers share are in ``common`` (all), ``deepseek2`` (the MLA block and keys) and
``dsa`` (the lightning indexer of glm_dsa and deepseek32) and ``qwen35moe`` (the gated delta-net
hybrids: qwen35 is qwen35moe with dense FFNs, qwen3next its older layout).
"""
from __future__ import annotations

from types import ModuleType

from . import (bailingmoe3, cohere2moe, deepseek2, deepseek4, deepseek32, glm4moe, glm_dsa, hy_v3, mimo2, nemotron_h_moe, qwen3next,
               qwen35, qwen35moe, step35)

WRITERS: dict[str, ModuleType] = {
    glm4moe.ARCH: glm4moe,
    deepseek2.ARCH: deepseek2,
    glm_dsa.ARCH: glm_dsa,
    deepseek32.ARCH: deepseek32,
    qwen35moe.ARCH: qwen35moe,
    qwen35.ARCH: qwen35,
    qwen3next.ARCH: qwen3next,
    nemotron_h_moe.ARCH: nemotron_h_moe,
    bailingmoe3.ARCH: bailingmoe3,
    hy_v3.ARCH: hy_v3,
    mimo2.ARCH: mimo2,
    step35.ARCH: step35,
    cohere2moe.ARCH: cohere2moe,
    deepseek4.ARCH: deepseek4,
}
