"""Finds the native library, declares its C API to cffi from csrc/mtpllama.h
itself, checks that library and package belong together, reads the header's
constants and maps status codes to exceptions."""
from __future__ import annotations

import logging
import os
import sys
import threading
from pathlib import Path
from typing import NoReturn

from cffi import FFI

from . import _version
from .errors import STATUS_ERRORS, MtpllamaError

_HERE = Path(__file__).resolve().parent


def _header_text(path: Path) -> str:
    # cffi's parser takes plain declarations only: drop preprocessor lines
    lines = [ln for ln in path.read_text().splitlines() if not ln.lstrip().startswith("#")]
    return "\n".join(lines)


def _find_library() -> Path:
    override = os.environ.get("MTPLLAMA_LIBRARY")
    if override:
        return Path(override)
    # next to this file, or (an editable install) in another directory of the package's path
    for d in [_HERE, *map(Path, getattr(sys.modules.get(__package__), "__path__", []))]:
        if (d / "libmtpllama.so").exists():
            return d / "libmtpllama.so"
    return _HERE / "libmtpllama.so"


def _load():
    libpath = _find_library()
    header = libpath.parent / "mtpllama.h"
    if not header.exists():
        header = _HERE / "mtpllama.h"
    if not libpath.exists() or not header.exists():
        raise ImportError(
            f"mtpllama's native library is missing ({libpath}); install the package with "
            "`pip install .` so that it is built, or set MTPLLAMA_LIBRARY")
    ffi = FFI()
    ffi.cdef(_header_text(header))
    lib = ffi.dlopen(str(libpath))
    _handshake(ffi, lib, libpath)
    return ffi, lib


def _handshake(ffi, lib, libpath: Path) -> None:
    got = ffi.string(lib.mtpl_version()).decode()
    if got != _version.__version__:
        raise ImportError(f"{libpath} is mtpllama {got}, but the Python package is {_version.__version__}; "
                          "reinstall the package so both come from one build")
    try:
        from . import _build_info
    except ImportError:
        return  # running from a source tree against MTPLLAMA_LIBRARY
    commit = ffi.string(lib.mtpl_upstream_commit()).decode()
    phash = ffi.string(lib.mtpl_patches_hash()).decode()
    if (commit, phash) != (_build_info.UPSTREAM_COMMIT, _build_info.PATCHES_HASH):
        raise ImportError(f"{libpath} was built from llama.cpp {commit} with patches {phash}, but this package "
                          f"expects {_build_info.UPSTREAM_COMMIT} with patches {_build_info.PATCHES_HASH}")


ffi, lib = _load()


# --- the header's constants ----------------------------------------------------------------
def enum_names(enum: str, prefix: str) -> dict[int, str]:
    """value -> lower-case name without prefix, for every constant of the header's enum."""
    return {v: k[len(prefix):].lower() for k, v in ffi.typeof(f"enum {enum}").relements.items()}


MAX_DRAFT: int = lib.MTPL_MAX_DRAFT
CONF_BUCKETS: int = lib.MTPL_CONF_BUCKETS
N_MIX: int = lib.MTPL_N_MIX
OK: int = lib.MTPL_OK
BUFFER_TOO_SMALL: int = lib.MTPL_ERR_BUFFER_TOO_SMALL
CANCELLED: int = lib.MTPL_ERR_CANCELLED
STOP_REASONS: dict[int, str] = enum_names("mtpl_stop", "MTPL_STOP_")
VERIFY_MODES_ALL: dict[str, int] = {n: v for v, n in enum_names("mtpl_verify", "MTPL_VERIFY_").items()}
VERIFY_MODES: dict[str, int] = {n: v for n, v in VERIFY_MODES_ALL.items() if not n.startswith("test_")}
"""The public verify modes (test hooks, MTPL_VERIFY_TEST_*, left out)."""
_STATUS_CLASSES: dict[int, type[MtpllamaError]] = {
    v: STATUS_ERRORS[name.upper()] for v, name in enum_names("mtpl_status", "MTPL_ERR_").items() if v != OK}


def last_error() -> str:
    return ffi.string(lib.mtpl_last_error()).decode("utf-8", "replace")


def raise_for(status: int, context: str = "", message: str | None = None) -> NoReturn:
    """Raise the exception of status; message: the native error text when the call ran in another
    thread (the engine keeps the last error per thread)."""
    cls = _STATUS_CLASSES.get(status, MtpllamaError)
    msg = (last_error() if message is None else message) or f"native call failed with status {status}"
    raise cls(f"{context}: {msg}" if context else msg)


def check(status: int, context: str = "") -> None:
    if status != 0:
        raise_for(status, context)


# --- llama.cpp log -> logging --------------------------------------------------
_log = logging.getLogger("mtpllama.llama_cpp")
_LEVELS = {lib.MTPL_LOG_DEBUG: logging.DEBUG, lib.MTPL_LOG_INFO: logging.INFO, lib.MTPL_LOG_WARN: logging.WARNING,
           lib.MTPL_LOG_ERROR: logging.ERROR}
_log_lock = threading.Lock()


@ffi.callback("void(int32_t, const char *, void *)")
def _log_callback(level, text, _user):  # never raises into C
    try:
        msg = ffi.string(text).decode("utf-8", "replace")
        if msg.strip():
            _log.log(_LEVELS.get(level, logging.INFO), "%s", msg)
    except Exception:  # pragma: no cover - logging must not break native code
        pass


def route_log(min_level: int = logging.WARNING) -> None:
    """Forward llama.cpp log lines at or above min_level to the 'mtpllama.llama_cpp' logger."""
    native = min((n for n, level in _LEVELS.items() if level >= min_level), default=lib.MTPL_LOG_ERROR)
    with _log_lock:
        lib.mtpl_set_log(_log_callback, ffi.NULL, native)


route_log(logging.WARNING)


class _Closeable:
    """Context manager over close(); the finaliser only calls a guarded close()."""

    def close(self) -> None:  # pragma: no cover - overridden
        raise NotImplementedError

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __del__(self) -> None:
        try:
            self.close()
        except Exception:
            pass
