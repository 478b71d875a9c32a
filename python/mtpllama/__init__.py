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
    ChatParseError,
    ChatTemplateError,
    ContextOverflowError,
    DecodeError,
    InvalidArgumentError,
    ModelLoadError,
    ModelNotFoundError,
    MtpllamaError,
    MtpMismatchError,
    NoBackendError,
    NoChatTemplateError,
    NoMtpHeadError,
    NotGGUFError,
    SessionBusyError,
    SplitError,
    UnsupportedArchitectureError,
)
from .chat import ChatDelta, ChatMessage, ChatPrompt, ChatResult, ChatStream, ToolCall, ToolCallDelta
from .fileinfo import FileInfo, inspect
from .split import extract_mtp, extract_trunk
from .group import Group, GroupStats
from .model import (Device, GenerationResult, GenerationStats, MemoryUse, Model, ModelInfo, Session, batch_invariant,
                    cuda_graph_counts, devices, huge_pages, rpc_timeout, set_batch_invariant, set_huge_pages,
                    set_rpc_timeout)

logging.getLogger("mtpllama").addHandler(logging.NullHandler())

__all__ = [
    "__version__", "Model", "Session", "Group", "GroupStats", "ModelInfo", "GenerationResult", "GenerationStats",
    "ModelConfig", "SessionConfig", "SpecConfig", "SamplingConfig",
    "MtpllamaError", "ModelLoadError", "ModelNotFoundError", "NotGGUFError", "UnsupportedArchitectureError",
    "NoMtpHeadError", "ContextOverflowError", "DecodeError", "SessionBusyError", "CancelledError",
    "InvalidArgumentError", "set_batch_invariant", "batch_invariant",
    "set_huge_pages", "huge_pages", "inspect", "FileInfo",
    "MtpMismatchError", "SplitError", "extract_mtp", "extract_trunk",
    "ChatMessage", "ChatResult", "ChatDelta", "ChatPrompt", "ChatStream", "ToolCall", "ToolCallDelta",
    "NoChatTemplateError", "ChatTemplateError", "ChatParseError", "NoBackendError",
    "MemoryUse", "cuda_graph_counts", "Device", "devices", "set_rpc_timeout", "rpc_timeout",
]
