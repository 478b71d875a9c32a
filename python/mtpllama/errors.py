"""The exception hierarchy; native status codes are mapped to it in one place."""
from __future__ import annotations


class MtpllamaError(Exception):
    """Base class of every error raised by mtpllama."""


class ModelLoadError(MtpllamaError):
    """The file could not be loaded as a GLM4-MoE model (corrupt, truncated, inconsistent)."""


class ModelNotFoundError(ModelLoadError, FileNotFoundError):
    """The model path does not exist or is not a regular file."""


class NotGGUFError(ModelLoadError, ValueError):
    """The file is not a GGUF file."""


class UnsupportedArchitectureError(ModelLoadError, ValueError):
    """The GGUF file holds a model of an architecture mtpllama does not run."""


class NoMtpHeadError(MtpllamaError, ValueError):
    """MTP was requested but the model has no usable NextN (MTP) block."""


class ContextOverflowError(MtpllamaError, ValueError):
    """The tokens do not fit in the session's context window."""


class DecodeError(MtpllamaError, RuntimeError):
    """llama.cpp failed to evaluate a batch."""


class SessionBusyError(MtpllamaError, RuntimeError):
    """The object is in use by another thread (or still has open sessions)."""


class Cancelled(MtpllamaError):
    """The call was cancelled through cancel()."""


class InvalidArgumentError(MtpllamaError, ValueError):
    """An argument was rejected by the native engine."""


# status code (csrc/mtpllama.h, enum mtpl_status) -> exception class
STATUS_ERRORS: dict[int, type[MtpllamaError]] = {
    1: InvalidArgumentError,
    2: ModelNotFoundError,
    3: NotGGUFError,
    4: ModelLoadError,
    5: UnsupportedArchitectureError,
    6: NoMtpHeadError,
    7: ContextOverflowError,
    8: DecodeError,
    9: SessionBusyError,
    10: Cancelled,
    11: MtpllamaError,
    12: MtpllamaError,
}
