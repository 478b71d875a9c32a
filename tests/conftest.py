"""pytest fixtures: the tiny test files (written once per run) and models opened on them.
Plain values (prompts, flavours) live in mtpllama.testing.fixtures."""
from __future__ import annotations

import importlib.util
import os
from pathlib import Path

import pytest

from mtpllama.testing import write_synthetic
from mtpllama.testing.fixtures import ONE_THREAD, SPECS

REPO = Path(__file__).resolve().parent.parent


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


def upstream_tree() -> Path | None:
    """The llama.cpp tree the build used, found as cmake/fetch_upstream.py finds it (the user's
    MTPLLAMA_LLAMA_CPP_DIR, or the patched copy in the cache), or None."""
    if os.environ.get("MTPLLAMA_LLAMA_CPP_DIR"):
        return Path(os.environ["MTPLLAMA_LLAMA_CPP_DIR"]).expanduser()
    spec = importlib.util.spec_from_file_location("fetch_upstream", REPO / "cmake" / "fetch_upstream.py")
    fu = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(fu)
    phash = fu.patches_hash(fu.patch_files(REPO / "patches"))
    tree = fu.cache_root() / f"llama.cpp-{fu.UPSTREAM_COMMIT[:12]}-p{phash}"
    return tree if (tree / ".mtpllama-ready").exists() else None


@pytest.fixture(scope="session")
def templates_dir() -> Path:
    """llama.cpp's models/templates (read at test time: upstream's templates are not committed here)."""
    tree = upstream_tree()
    if tree is None or not (tree / "models" / "templates").is_dir():
        pytest.skip("the llama.cpp tree of the build (cmake/fetch_upstream.py) is not on this machine")
    return tree / "models" / "templates"


@pytest.fixture(scope="session")
def chat_files(tmp_path_factory, templates_dir):
    """chat_files(template) -> path of a tiny GLM-4.6-shaped file carrying llama.cpp's
    models/templates/<template> as its tokenizer.chat_template (written once per template)."""
    d = tmp_path_factory.mktemp("chat")
    made: dict[str, str] = {}

    def get(template: str) -> str:
        if template not in made:
            made[template] = str(write_synthetic(d / f"{template}.gguf", SPECS["glm46"],
                                                 chat_template=(templates_dir / template).read_text()))
        return made[template]

    return get


@pytest.fixture(scope="session")
def chat_model(chat_files):
    """chat_model(template) -> a Model (one thread) on chat_files(template), opened once."""
    import mtpllama

    opened: dict[str, mtpllama.Model] = {}

    def get(template: str):
        if template not in opened:
            opened[template] = mtpllama.Model(chat_files(template), session_defaults=ONE_THREAD)
        return opened[template]

    yield get
    for m in opened.values():
        m.close()
