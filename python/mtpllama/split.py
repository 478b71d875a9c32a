"""Split a full GGUF file into its MTP head and its trunk, as llama.cpp's converter writes them
(`convert_hf_to_gguf.py --mtp` and `--no-mtp`), so that a head can be paired with any quant of the
same model (``Model(trunk, mtp_path=head)``).  Tensors are copied byte for byte, in any type.

- MTP-only: every key unchanged (block_count counts the NextN block, nextn_predict_layers kept);
  the NextN block's tensors and the global ones (token embedding, output norm, output head), which
  its graph shares with the trunk.
- Trunk-only: block_count without the NextN block, no nextn_predict_layers, per-layer arrays cut
  to the trunk's layers; every tensor but the NextN block's.
"""
from __future__ import annotations

import os
from pathlib import Path

from .errors import SplitError


def _layer(name: str) -> int | None:
    if not name.startswith("blk."):
        return None
    return int(name.split(".")[1])


def _layout(reader) -> tuple[str, int, int]:
    """(architecture, block_count, NextN blocks) of a full file; raises SplitError otherwise."""
    import gguf

    arch_f = reader.fields.get(gguf.Keys.General.ARCHITECTURE)
    if arch_f is None:
        raise SplitError("general.architecture is missing")
    arch = arch_f.contents()
    bc_f = reader.fields.get(f"{arch}.block_count")
    nn_f = reader.fields.get(f"{arch}.nextn_predict_layers")
    if bc_f is None or not isinstance(bc_f.contents(), int):
        raise SplitError(f"{arch}.block_count is missing")
    n_block = bc_f.contents()
    n_nextn = nn_f.contents() if nn_f is not None else 0
    if not isinstance(n_nextn, int) or n_nextn < 1 or n_nextn >= n_block:
        raise SplitError(f"the file has no NextN block ({arch}.nextn_predict_layers absent or out of range): "
                         "nothing to split")
    names = {t.name for t in reader.tensors}
    n_layer = n_block - n_nextn
    if f"blk.{n_layer}.nextn.eh_proj.weight" not in names:
        raise SplitError(f"blk.{n_layer}.nextn.eh_proj.weight is missing: the file is trunk-only already")
    if "blk.0.attn_norm.weight" not in names:
        raise SplitError("blk.0.attn_norm.weight is missing: the file is MTP-only already")
    return arch, n_block, n_nextn


def _write(src: str | os.PathLike, dst: str | os.PathLike, head: bool, force: bool) -> Path:
    import gguf

    src, dst = Path(src), Path(dst)
    if dst.exists() and dst.resolve() == src.resolve():
        raise SplitError(f"{dst} is the input file")
    if dst.exists() and not force:
        raise SplitError(f"{dst} exists (force=True / --force to overwrite it)")
    reader = gguf.GGUFReader(str(src))
    arch, n_block, n_nextn = _layout(reader)
    n_layer = n_block - n_nextn

    def keep(name: str) -> bool:
        b = _layer(name)
        return b is None or (b >= n_layer) == head

    tmp = dst.with_name(dst.name + ".tmp")
    writer = gguf.GGUFWriter(str(tmp), arch, endianess=reader.endianess)
    try:
        align = reader.fields.get(gguf.Keys.General.ALIGNMENT)
        if align is not None:
            writer.data_alignment = align.contents()
        for f in reader.fields.values():
            # the writer adds the architecture itself; GGUF.* are the reader's header fields
            if f.name == gguf.Keys.General.ARCHITECTURE or f.name.startswith("GGUF."):
                continue
            vtype = f.types[0]
            sub = f.types[-1] if vtype == gguf.GGUFValueType.ARRAY else None
            value = f.contents()
            if not head:
                if f.name == f"{arch}.nextn_predict_layers":
                    continue
                if f.name == f"{arch}.block_count":
                    value = n_layer
                elif sub is not None and f.name.startswith(arch + ".") and len(value) == n_block:
                    value = value[:n_layer]  # per-layer arrays hold block_count entries
            writer.add_key_value(f.name, value, vtype, sub_type=sub)
        tensors = [t for t in reader.tensors if keep(t.name)]
        for t in tensors:
            writer.add_tensor_info(t.name, t.data.shape, t.data.dtype, t.data.nbytes, raw_dtype=t.tensor_type)
        writer.write_header_to_file()
        writer.write_kv_data_to_file()
        writer.write_ti_data_to_file()
        for t in tensors:
            writer.write_tensor_data(t.data, tensor_endianess=reader.endianess)
        writer.close()
        os.replace(tmp, dst)
    except BaseException:
        writer.close()
        tmp.unlink(missing_ok=True)
        raise
    return dst


def extract_mtp(full: str | os.PathLike, out: str | os.PathLike, *, force: bool = False) -> Path:
    """Write the MTP-only half of a full file to `out` (not over an existing file unless force)."""
    return _write(full, out, head=True, force=force)


def extract_trunk(full: str | os.PathLike, out: str | os.PathLike, *, force: bool = False) -> Path:
    """Write the trunk-only half of a full file to `out` (not over an existing file unless force)."""
    return _write(full, out, head=False, force=force)
