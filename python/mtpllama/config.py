"""Small frozen configuration records for models, sessions and speculative decoding."""
from __future__ import annotations

from dataclasses import dataclass, field

MAX_DRAFT = 16


def _check_int(name: str, value: object, lo: int, hi: int | None = None) -> None:
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{name} must be an int, got {type(value).__name__}")
    if value < lo or (hi is not None and value > hi):
        rng = f">= {lo}" if hi is None else f"in [{lo}, {hi}]"
        raise ValueError(f"{name} must be {rng}, got {value}")


@dataclass(frozen=True)
class ModelConfig:
    """How to load a GGUF file."""

    path: str
    """Path of the GGUF file (GLM-4.5/4.6/4.7, llama.cpp architecture 'glm4moe')."""
    mtp: bool = True
    """Load the NextN (MTP) block.  False skips its tensors entirely: plain decoding only."""
    n_gpu_layers: int = 0
    """Layers to offload to the GPU (-1: all).  Ignored by a CPU-only build."""
    tensor_overrides: tuple[str, ...] = ()
    """llama.cpp ``-ot`` rules, "REGEX=DEVICE", e.g. ``r"blk\\.46\\..*=CUDA0"`` to keep the MTP block on a GPU."""
    use_mmap: bool = True
    """Memory-map the file instead of reading it into memory."""

    def __post_init__(self) -> None:
        if not isinstance(self.path, str) or not self.path:
            raise TypeError("path must be a non-empty str")
        _check_int("n_gpu_layers", self.n_gpu_layers, -1)
        for rule in self.tensor_overrides:
            if not isinstance(rule, str) or "=" not in rule or "\n" in rule:
                raise ValueError(f"tensor override {rule!r} is not of the form 'REGEX=DEVICE'")


@dataclass(frozen=True)
class SessionConfig:
    """Resources of one session (a trunk context and, with MTP, an MTP context)."""

    n_ctx: int = 0
    """Context window in tokens; 0 = min(4096, the model's training context)."""
    n_batch: int = 0
    """Tokens evaluated per call while processing a prompt; 0 = 512."""
    n_threads: int = 0
    """CPU threads; 0 = all cores."""

    def __post_init__(self) -> None:
        _check_int("n_ctx", self.n_ctx, 0)
        _check_int("n_batch", self.n_batch, 0)
        _check_int("n_threads", self.n_threads, 0)


@dataclass(frozen=True)
class SpecConfig:
    """Speculative decoding with the MTP head."""

    draft_max: int = 3
    """Most tokens drafted per step (0 = plain decoding)."""
    draft_p_min: float = 0.5
    """Stop drafting when the MTP head's top probability (full softmax) falls below this."""

    def __post_init__(self) -> None:
        _check_int("draft_max", self.draft_max, 0, MAX_DRAFT)
        if isinstance(self.draft_p_min, bool) or not isinstance(self.draft_p_min, (int, float)):
            raise TypeError("draft_p_min must be a float")
        if not 0.0 <= float(self.draft_p_min) <= 1.0:
            raise ValueError(f"draft_p_min must be in [0, 1], got {self.draft_p_min}")


PLAIN = SpecConfig(draft_max=0, draft_p_min=0.0)
