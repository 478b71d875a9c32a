"""The pruned upstream tree that travels to a GPU machine (benchmarks/gpu_tree.py): derived from the
hash-checked sdist, pinned by its manifest's digest, and refused when a file is changed, missing
or added, or when the manifest is edited along with a file."""
from __future__ import annotations

import hashlib
import shutil
import sys
import tarfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "benchmarks"))
import gpu_tree  # noqa: E402


@pytest.fixture(scope="module")
def pruned(tmp_path_factory) -> Path:
    d = tmp_path_factory.mktemp("pruned")
    digest = gpu_tree.write_tarball(gpu_tree.pruned_files(), d / gpu_tree.TARBALL)
    assert digest == gpu_tree.PRUNED_MANIFEST_SHA256, "the prune rules changed: update PRUNED_MANIFEST_SHA256"
    with tarfile.open(d / gpu_tree.TARBALL) as tf:
        tf.extractall(d, filter="data")
    return d / "llama.cpp"


@pytest.fixture
def tree(pruned, tmp_path) -> Path:
    t = tmp_path / "llama.cpp"
    shutil.copytree(pruned, t)
    return t


def test_pruned_tree_verifies_and_holds_what_the_build_needs(tree):
    assert gpu_tree.verify(tree) == []
    for rel in ("CMakeLists.txt", "src/llama-model.cpp", "ggml/src/ggml-cuda/ggml-cuda.cu",
                "ggml/src/ggml-cpu/ggml-cpu.c", "common/chat.cpp", "tools/completion/main.cpp",
                "examples/speculative-simple/speculative-simple.cpp"):
        assert (tree / rel).is_file(), rel
    assert not (tree / "docs").exists() and not (tree / "ggml/src/ggml-vulkan").exists()
    size = sum(p.stat().st_size for p in tree.rglob("*") if p.is_file())
    assert size < 40 * 2**20, size


def test_a_changed_file_fails(tree):
    p = tree / "src" / "llama-model.cpp"
    p.write_bytes(p.read_bytes() + b"\n// tampered\n")
    assert gpu_tree.verify(tree) == ["src/llama-model.cpp: changed"]


def test_a_missing_or_added_file_fails(tree):
    (tree / "ggml" / "src" / "ggml-cuda" / "fattn.cu").unlink()
    (tree / "src" / "extra.cpp").write_text("int x;\n")
    assert gpu_tree.verify(tree) == ["ggml/src/ggml-cuda/fattn.cu: missing", "src/extra.cpp: not in the manifest"]


def test_a_manifest_edited_with_the_file_fails(tree):
    p = tree / "src" / "llama.cpp"
    data = p.read_bytes() + b"\n// tampered\n"
    p.write_bytes(data)
    m = tree / gpu_tree.MANIFEST
    old = hashlib.sha256(data[:-len(b"\n// tampered\n")]).hexdigest()
    m.write_text(m.read_text().replace(old, hashlib.sha256(data).hexdigest()))
    problems = gpu_tree.verify(tree)
    assert len(problems) == 1 and "not the pinned" in problems[0]


def test_cli_exit_status(tree, capsys):
    assert gpu_tree.main(["verify", str(tree)]) == 0
    (tree / "include" / "llama.h").write_text("tampered")
    assert gpu_tree.main(["verify", str(tree)]) == 1
    assert "include/llama.h: changed" in capsys.readouterr().err


def test_patches_apply_without_git(tree, tmp_path, monkeypatch):
    """Where no git is installed the prepared patched files are used, and only for this patch set."""
    files = {p.relative_to(tree).as_posix(): p.read_bytes() for p in tree.rglob("*") if p.is_file()}
    monkeypatch.setattr(gpu_tree, "CARRY", tmp_path / "carry")
    (tmp_path / "carry").mkdir()
    gpu_tree.tar_files(gpu_tree.patched_files(files), tmp_path / "carry" / gpu_tree.PATCHED)
    with_git = tmp_path / "with-git"
    shutil.copytree(tree, with_git)
    gpu_tree.apply(with_git)
    monkeypatch.setattr(gpu_tree.shutil, "which", lambda name: None)
    gpu_tree.apply(tree)
    for p in with_git.rglob("*"):
        if p.is_file():
            assert (tree / p.relative_to(with_git)).read_bytes() == p.read_bytes(), p
    assert b"nextn_device" in (tree / "include" / "llama.h").read_bytes()
    # files prepared for another patch set are refused
    gpu_tree.tar_files({**gpu_tree.patched_files(files), "PATCHES_HASH": b"0123456789abcdef"},
                       tmp_path / "carry" / gpu_tree.PATCHED)
    with pytest.raises(SystemExit, match="patch set 0123456789abcdef"):
        gpu_tree.apply(tree)
