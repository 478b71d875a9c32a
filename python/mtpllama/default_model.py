"""The default model used by `mtpllama` with no arguments.

A small GLM-4.5-shaped MoE model (4 trunk layers, 8 experts, 2 per token, one
shared expert) with its NextN block, trained on the Python standard library by
training/train.py and shipped in the package as models/default.gguf; its
provenance and measured quality are in models/default.json.
"""
from __future__ import annotations

import json
from pathlib import Path

from .errors import ModelNotFoundError

MODELS_DIR = Path(__file__).resolve().parent / "models"

DEMO_PROMPT = '''class Queue:
    """A first-in, first-out queue."""

    def __init__(self):
'''


def default_model_path() -> Path:
    path = MODELS_DIR / "default.gguf"
    if not path.exists():
        raise ModelNotFoundError(f"the default model is missing from the package: {path} "
                                 "(reinstall mtpllama, or train it with training/train.py)")
    return path


def default_model_manifest() -> dict:
    """Training recipe, corpus, metrics and sha256 of the shipped model."""
    return json.loads((MODELS_DIR / "default.json").read_text())
