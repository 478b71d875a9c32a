"""What a GGUF file holds, as the engine sees it, without loading the model."""
from __future__ import annotations

import os
from dataclasses import dataclass

from . import _lib
from ._lib import ffi, lib


@dataclass(frozen=True)
class FileInfo:
    path: str
    arch: str
    name: str
    supported: bool
    """mtpllama runs this architecture."""
    block_count: int
    """Blocks in the file: trunk and NextN."""
    n_layer_nextn: int
    """NextN (MTP) blocks the file declares."""
    n_tensors: int
    n_tensors_nextn: int
    nextn_bytes: int
    has_mtp: bool
    """The file holds a usable NextN block: what Model(path, mtp=True) needs."""
    mtp_problem: str
    """Why has_mtp is False ("" when it is True)."""
    kind: str = ""
    """"full" (trunk and NextN block), "trunk-only" or "mtp-only" (the NextN block and the tensors it
    shares with the trunk: load it as mtp_path beside a trunk); "" for an unsupported architecture."""
    attention: str = ""
    """The attention kind and its shape, e.g. "MLA: 20 heads, q_lora_rank 768, kv_lora_rank 512, ..."
    or "GQA: 96 heads, 8 KV heads, head dim 128 (rope 64)"; "" for an unsupported architecture."""


def inspect(path: str | os.PathLike) -> FileInfo:
    """Describe a GGUF file.  Raises as Model() would on a missing, corrupt or inconsistent file;
    a file of an unsupported architecture is described (supported=False)."""
    if not isinstance(path, (str, os.PathLike)):
        raise TypeError(f"path must be a str or os.PathLike, got {type(path).__name__}")
    p = os.fspath(path)
    out = ffi.new("mtpl_file_info *")
    _lib.check(lib.mtpl_file_inspect(p.encode(), out), "inspect")
    return FileInfo(
        path=p, arch=ffi.string(out.arch).decode(errors="replace"), name=ffi.string(out.name).decode(errors="replace"),
        supported=bool(out.supported), block_count=out.block_count, n_layer_nextn=out.n_layer_nextn,
        n_tensors=out.n_tensors, n_tensors_nextn=out.n_tensors_nextn, nextn_bytes=out.nextn_bytes,
        has_mtp=bool(out.has_mtp), mtp_problem=ffi.string(out.mtp_problem).decode(errors="replace"),
        kind=ffi.string(out.kind).decode(), attention=ffi.string(out.attention).decode(errors="replace"))
