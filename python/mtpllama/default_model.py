"""The default model used by `mtpllama` with no arguments.

Until the trained model ships (issue 5), this is a synthetic GLM4-MoE file
generated on first use and cached: its MTP head agrees with the trunk by
construction, so acceptance and speed are real but the text is not language.
"""
from __future__ import annotations

import os
from pathlib import Path

from .gguf_io import SyntheticSpec, write_synthetic

DEMO_SPEC = SyntheticSpec(n_embd=256, n_layer=4, n_head=8, n_head_kv=2, head_dim=32, n_rot=16, n_ff=512,
                          n_expert=16, n_expert_used=4, n_ff_exp=128, noise=0.3, dtype="q8_0",
                          name="mtpllama-demo-synthetic", seed=1)


def _cache_dir() -> Path:
    base = os.environ.get("MTPLLAMA_CACHE_DIR") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache"), "mtpllama")
    return Path(base)


def default_model_path() -> Path:
    shipped = Path(__file__).resolve().parent / "models" / "default.gguf"
    if shipped.exists():
        return shipped
    path = _cache_dir() / "models" / f"demo-synthetic-{DEMO_SPEC.seed}.gguf"
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".tmp")
        write_synthetic(tmp, DEMO_SPEC)
        os.replace(tmp, path)
    return path
