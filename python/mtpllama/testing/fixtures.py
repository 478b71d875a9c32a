"""Shared fixtures of tests and benchmarks: prompts and the tiny test files' flavours."""
from __future__ import annotations

from ..config import SessionConfig
from .arch.glm4moe import SyntheticSpec

# 20+ prompts: code, prose, digits, unicode, single characters
PROMPTS = [
    "def foo(x):", "import os", "The quick brown", "class Stack:", "hello world 123", "for i in range(10):",
    "    return a + b", "x", "Greedy decoding", "print(name, file=sys.stderr)", "ünïcödé ✓ text", "42",
    "if not self.items:", "a, b = 0, 1", "The model predicts", "raise IndexError(", "# comment\n", "{}[]()",
    "self.items.append(item)", "When the draft is right", "zzzz", "\n\n",
]

# the tiny test files: GLM-4.5's own NextN head, GLM-4.6's tied one, and a trunk-only file
SPECS = {
    "glm45": SyntheticSpec(nextn="own", seed=11),
    "glm46": SyntheticSpec(nextn="tied", seed=12),
    "trunk_only": SyntheticSpec(nextn="none", seed=13),
}

# One thread: tiny models gain nothing from more, and a spinning thread pool
# that shares 2 cores with another process slows down a hundredfold.
ONE_THREAD = SessionConfig(n_threads=1)
