"""The exception hierarchy.  _lib maps the engine's status codes (enum mtpl_status) to it, by the
names below."""
from __future__ import annotations


class MtpllamaError(Exception):
    """Base class of every error raised by mtpllama."""


class ModelLoadError(MtpllamaError):
    """The file could not be loaded (corrupt, truncated, inconsistent)."""


class ModelNotFoundError(ModelLoadError, FileNotFoundError):
    """The model path does not exist or is not a regular file."""


class NotGGUFError(ModelLoadError, ValueError):
    """The file is not a GGUF file."""


class UnsupportedArchitectureError(ModelLoadError, ValueError):
    """The GGUF file holds a model of an architecture mtpllama does not run."""


class NoMtpHeadError(MtpllamaError, ValueError):
    """MTP was requested but the model has no usable NextN (MTP) block."""


class MtpMismatchError(ModelLoadError, ValueError):
    """The MTP head file does not belong to the trunk's model (architecture, widths, vocabulary, block index)."""


class SplitError(MtpllamaError, ValueError):
    """A file cannot be split into its MTP head and trunk (no NextN block, already one half, or the output exists)."""


class ContextOverflowError(MtpllamaError, ValueError):
    """The tokens do not fit in the session's context window."""


class DecodeError(MtpllamaError, RuntimeError):
    """llama.cpp failed to evaluate a batch."""


class SessionBusyError(MtpllamaError, RuntimeError):
    """The object is in use by another thread (or still has open sessions)."""


class CancelledError(MtpllamaError):
    """The call was cancelled through cancel()."""


class InvalidArgumentError(MtpllamaError, ValueError):
    """An argument was rejected by the native engine."""


class NoChatTemplateError(MtpllamaError, ValueError):
    """The model file has no chat template (tokenizer.chat_template): chat needs one; completions
    (generate, stream) still work with a prompt you format yourself."""


class ChatTemplateError(MtpllamaError, ValueError):
    """The model's chat template does not parse, or it failed (raised) on these messages."""


class ChatParseError(MtpllamaError, ValueError):
    """Generated text does not match the parser of the model's chat format."""


class NoBackendError(MtpllamaError, RuntimeError):
    """This build of mtpllama has no such backend (CUDA asked of a CPU-only build)."""


# MTPL_ERR_<name> (csrc/mtpllama.h, enum mtpl_status) -> exception class
STATUS_ERRORS: dict[str, type[MtpllamaError]] = {
    "INVALID_ARGUMENT": InvalidArgumentError,
    "FILE_NOT_FOUND": ModelNotFoundError,
    "NOT_GGUF": NotGGUFError,
    "MODEL_LOAD": ModelLoadError,
    "UNSUPPORTED_ARCH": UnsupportedArchitectureError,
    "NO_MTP_HEAD": NoMtpHeadError,
    "MTP_MISMATCH": MtpMismatchError,
    "CONTEXT_FULL": ContextOverflowError,
    "DECODE": DecodeError,
    "BUSY": SessionBusyError,
    "CANCELLED": CancelledError,
    "BUFFER_TOO_SMALL": MtpllamaError,
    "INTERNAL": MtpllamaError,
    "NO_CHAT_TEMPLATE": NoChatTemplateError,
    "CHAT_TEMPLATE": ChatTemplateError,
    "CHAT_PARSE": ChatParseError,
    "NO_BACKEND": NoBackendError,
}
