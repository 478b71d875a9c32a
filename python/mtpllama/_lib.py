"""Finds the native library, declares its C API to cffi from csrc/mtpllama.h
itself, checks that library and package belong together, and maps status codes
to exceptions."""
from __future__ import annotations

import logging
import os
import re
import threading
from pathlib import Path
from typing import NoReturn

from cffi import FFI

from . import _version
from .errors import STATUS_ERRORS, MtpllamaError

_HERE = Path(__file__).resolve().parent
BUFFER_TOO_SMALL = 11


def _header_text(path: Path) -> str:
    # cffi's parser takes plain declarations only: drop preprocessor lines
    lines = [ln for ln in path.read_text().splitlines() if not ln.lstrip().startswith("#")]
    return "\n".join(lines)


def _find_library() -> Path:
    override = os.environ.get("MTPLLAMA_LIBRARY")
    if override:
        return Path(override)
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


def last_error() -> str:
    return ffi.string(lib.mtpl_last_error()).decode("utf-8", "replace")


def raise_for(status: int, context: str = "") -> NoReturn:
    cls = STATUS_ERRORS.get(status, MtpllamaError)
    msg = last_error() or f"native call failed with status {status}"
    raise cls(f"{context}: {msg}" if context else msg)


def check(status: int, context: str = "") -> None:
    if status != 0:
        raise_for(status, context)


# --- llama.cpp log -> logging --------------------------------------------------
_log = logging.getLogger("mtpllama.llama_cpp")
_LEVELS = {1: logging.DEBUG, 2: logging.INFO, 3: logging.WARNING, 4: logging.ERROR}
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
    native = 1 if min_level <= logging.DEBUG else 2 if min_level <= logging.INFO else 3 if min_level <= logging.WARNING else 4
    with _log_lock:
        lib.mtpl_set_log(_log_callback, ffi.NULL, native)


route_log(logging.WARNING)
