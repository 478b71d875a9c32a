"""pytest fixtures: the tiny test files (written once per run) and models opened on them.
Plain values (prompts, flavours) live in mtpllama.testing.fixtures."""
from __future__ import annotations

import pytest

from mtpllama.testing import write_synthetic
from mtpllama.testing.fixtures import ONE_THREAD, SPECS


@pytest.fixture(scope="session")
def model_files(tmp_path_factory) -> dict[str, str]:
    d = tmp_path_factory.mktemp("models")
    return {k: str(write_synthetic(d / f"{k}.gguf", spec)) for k, spec in SPECS.items()}


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
