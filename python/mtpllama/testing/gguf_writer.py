"""Writing GGUF files for tests and benchmarks: weight storage by type (f32, f16, Q8_0, Q4_0 and
our own Q4_K quantiser) and the keys every file carries (name, context, tokenizer).  The
hyperparameter keys and tensors of an architecture come from its writer in ``arch/``."""
from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np

from .bpe import Tokenizer


def store(arr: np.ndarray, dtype: str):
    """Convert a weight for writing: (data, raw ggml type or None)."""
    import gguf

    if arr.dtype.kind in "iu":                              # index tables (e.g. token-id routing)
        return arr, None
    if arr.ndim == 1 or dtype == "f32":
        return arr.astype(np.float32), None
    if dtype == "f16":
        return arr.astype(np.float16), None
    qtype = {"q8_0": gguf.GGMLQuantizationType.Q8_0, "q4_0": gguf.GGMLQuantizationType.Q4_0,
             "q4_k": gguf.GGMLQuantizationType.Q4_K}[dtype]
    if arr.shape[-1] % gguf.GGML_QUANT_SIZES[qtype][0]:       # rows not whole blocks: f16
        return arr.astype(np.float16), None
    if qtype == gguf.GGMLQuantizationType.Q4_K:
        return quantize_q4_k(arr), qtype
    return gguf.quants.quantize(arr, qtype), qtype


def quantize_q4_k(arr: np.ndarray) -> np.ndarray:
    """Q4_K blocks (the gguf package dequantizes K-quants but does not quantize them).

    Per 256 values: f16 d and dmin, twelve bytes packing eight 6-bit scales and mins (one per
    32 values), and 128 bytes of 4-bit codes; a value is d*scale*q - dmin*min.  A plain
    min/max fit per 32 values, not llama.cpp's search: these files exist to exercise the
    kernels, and the round trip is checked against gguf's dequantizer in the tests."""
    shape = arr.shape
    sub = arr.reshape(-1, 8, 32).astype(np.float32)
    lo = np.minimum(sub.min(axis=2), 0.0)
    hi = sub.max(axis=2)
    # 6-bit mins and scales rounded up, so that every value lies inside its sub-block's 16 codes
    dmin = (-lo.min(axis=1) / 62.0).astype(np.float16).astype(np.float32)
    mn = np.clip(np.ceil(-lo / np.where(dmin > 0, dmin, 1.0)[:, None]), 0, 63).astype(np.uint8)
    step = np.maximum(hi + dmin[:, None] * mn, 1e-12) / 15.0        # per 32 values
    d = (step.max(axis=1) / 62.0).astype(np.float16).astype(np.float32)
    d = np.where(d > 0, d, np.float32(6e-8))
    sc = np.clip(np.ceil(step / d[:, None]), 1, 63).astype(np.uint8)
    q = np.round((sub + (dmin[:, None] * mn)[..., None]) / (d[:, None] * sc)[..., None])
    q = np.clip(q, 0, 15).astype(np.uint8)
    packed = np.empty((sub.shape[0], 12), np.uint8)
    packed[:, 0:4] = sc[:, 0:4] | ((sc[:, 4:8] >> 4) << 6)          # 6 low bits, then the high 2 of 4..7
    packed[:, 4:8] = mn[:, 0:4] | ((mn[:, 4:8] >> 4) << 6)
    packed[:, 8:12] = (sc[:, 4:8] & 0xF) | ((mn[:, 4:8] & 0xF) << 4)
    codes = (q[:, 0::2, :] | (q[:, 1::2, :] << 4)).reshape(-1, 128)  # pairs of 32: low nibble, high nibble
    blocks = np.concatenate([d.astype(np.float16).view(np.uint8).reshape(-1, 2),
                             dmin.astype(np.float16).view(np.uint8).reshape(-1, 2), packed, codes], axis=1)
    return blocks.reshape(*shape[:-1], shape[-1] // 256 * 144)


def write_gguf(path: str | Path, arch: str, name: str, n_ctx_train: int, tok: Tokenizer, tokenizer_pre: str,
               add_hparams: Callable[[object], None], weights: dict[str, np.ndarray], dtype: str,
               keep_f32: Callable[[str], bool] | None = None, chat_template: str | None = None) -> Path:
    """Write a GGUF file: general and tokenizer keys, the architecture's hyperparameters
    (add_hparams(writer)), then the weights stored as dtype (1-D tensors stay f32, and so do the
    tensors keep_f32(name) names, as the converter keeps routers in f32 whatever the outtype).
    chat_template: the tokenizer.chat_template key (none by default)."""
    import gguf

    path = Path(path)
    w = gguf.GGUFWriter(str(path), arch)
    w.add_name(name)
    w.add_context_length(n_ctx_train)
    w.add_vocab_size(tok.n_vocab)
    add_hparams(w)                      # after vocab_size, so a bad-file test can replace it
    w.add_tokenizer_model("gpt2")
    w.add_tokenizer_pre(tokenizer_pre)
    w.add_token_list(tok.tokens)
    w.add_token_types(tok.token_types)
    w.add_token_merges(tok.merges)
    w.add_eos_token_id(tok.eos_id)
    w.add_add_bos_token(False)
    if chat_template is not None:
        w.add_chat_template(chat_template)
    for tname, arr in weights.items():
        data, raw = store(arr, "f32" if keep_f32 is not None and keep_f32(tname) else dtype)
        if raw is None:
            w.add_tensor(tname, data)
        else:
            w.add_tensor(tname, data, raw_shape=data.shape, raw_dtype=raw)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return path
