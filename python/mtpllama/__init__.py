"""mtpllama: fast, lossless Multi-Token-Prediction speculative decoding on llama.cpp.

    import mtpllama
    with mtpllama.Model("GLM-4.5-Air-Q4.gguf") as model:
        print(model.generate("def fib(n):", max_tokens=64).text)
"""
from __future__ import annotations

import logging

from ._version import __version__
from .config import ModelConfig, SamplingConfig, SessionConfig, SpecConfig
from .errors import (
    CancelledError,
    ContextOverflowError,
    DecodeError,
    InvalidArgumentError,
    ModelLoadError,
    ModelNotFoundError,
    MtpllamaError,
    MtpMismatchError,
    NoMtpHeadError,
    NotGGUFError,
    SessionBusyError,
    SplitError,
    UnsupportedArchitectureError,
)
from .fileinfo import FileInfo, inspect
from .split import extract_mtp, extract_trunk
from .model import (GenerationResult, GenerationStats, Model, ModelInfo, Session, batch_invariant, huge_pages,
                    set_batch_invariant, set_huge_pages)

logging.getLogger("mtpllama").addHandler(logging.NullHandler())

__all__ = [
    "__version__", "Model", "Session", "ModelInfo", "GenerationResult", "GenerationStats",
    "ModelConfig", "SessionConfig", "SpecConfig", "SamplingConfig",
    "MtpllamaError", "ModelLoadError", "ModelNotFoundError", "NotGGUFError", "UnsupportedArchitectureError",
    "NoMtpHeadError", "ContextOverflowError", "DecodeError", "SessionBusyError", "CancelledError",
    "InvalidArgumentError", "set_batch_invariant", "batch_invariant",
    "set_huge_pages", "huge_pages", "inspect", "FileInfo",
    "MtpMismatchError", "SplitError", "extract_mtp", "extract_trunk",
]
