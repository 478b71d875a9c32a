"""Shared fixtures: tiny GLM4-MoE files written by the tests themselves."""
from __future__ import annotations

import pytest

from mtpllama import SessionConfig
from mtpllama.gguf_io import SyntheticSpec, write_synthetic

# 20+ prompts: code, prose, digits, unicode, single characters
PROMPTS = [
    "def foo(x):", "import os", "The quick brown", "class Stack:", "hello world 123", "for i in range(10):",
    "    return a + b", "x", "Greedy decoding", "print(name, file=sys.stderr)", "ünïcödé ✓ text", "42",
    "if not self.items:", "a, b = 0, 1", "The model predicts", "raise IndexError(", "# comment\n", "{}[]()",
    "self.items.append(item)", "When the draft is right", "zzzz", "\n\n",
]

SPECS = {
    "glm45": SyntheticSpec(nextn="own", seed=11),
    "glm46": SyntheticSpec(nextn="tied", seed=12),
    "trunk_only": SyntheticSpec(nextn="none", seed=13),
}


@pytest.fixture(scope="session")
def model_files(tmp_path_factory) -> dict[str, str]:
    d = tmp_path_factory.mktemp("models")
    return {k: str(write_synthetic(d / f"{k}.gguf", spec)) for k, spec in SPECS.items()}


# One thread: tiny models gain nothing from more, and a spinning thread pool
# that shares 2 cores with another process slows down a hundredfold.
ONE_THREAD = SessionConfig(n_threads=1)


@pytest.fixture(scope="session")
def glm45(model_files):
    import mtpllama

    with mtpllama.Model(model_files["glm45"], session_defaults=ONE_THREAD) as m:
        yield m


@pytest.fixture(scope="session")
def glm46(model_files):
    import mtpllama

    with mtpllama.Model(model_files["glm46"], session_defaults=ONE_THREAD) as m:
        yield m
