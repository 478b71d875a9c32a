"""The build's check of a user's own llama.cpp checkout (MTPLLAMA_LLAMA_CPP_DIR).

cmake/fetch_upstream.py accepts a user tree only if it carries every patch in patches/.  Our
patches overlap (0004 edits lines that 0001 added), so a tree with the whole series applied must
pass and a tree missing any one of them must be refused, naming it.  These tests build a tiny
tree and a two-patch series with the same overlap, using git only.
"""
from __future__ import annotations

import importlib.util
import shutil
import subprocess
import tempfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent

pytestmark = pytest.mark.skipif(shutil.which("git") is None, reason="needs git")


def _load_fetch_upstream():
    spec = importlib.util.spec_from_file_location("fetch_upstream", REPO / "cmake" / "fetch_upstream.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


fu = _load_fetch_upstream()


def _git(cwd: Path, *args: str) -> str:
    return subprocess.run(["git", "-c", "user.name=t", "-c", "user.email=t@t", *args], cwd=cwd,
                          check=True, capture_output=True, text=True).stdout


def _series(tmp: Path) -> tuple[Path, list[Path], list[str]]:
    """A tree with include/llama.h, src/a.c and src/b.c, and two patches: the first adds a line to
    a.c and changes b.c, the second edits the line the first added.  Returns (tree, patches,
    contents of a.c after 0, 1 and 2 patches)."""
    tree = tmp / "tree"
    (tree / "include").mkdir(parents=True)
    (tree / "src").mkdir()
    (tree / "include" / "llama.h").write_text("// header\n")
    versions = ["int a;\nint b;\nint c;\n",
                "int a;\nint b;\nint added_by_first;\nint c;\n",
                "int a;\nint b;\nint edited_by_second;\nint c;\n"]
    (tree / "src" / "a.c").write_text(versions[0])
    (tree / "src" / "b.c").write_text("int x;\n")
    _git(tree, "init", "-q")
    _git(tree, "add", ".")
    _git(tree, "commit", "-qm", "base")
    patches = []
    for i, text in enumerate(versions[1:], start=1):
        (tree / "src" / "a.c").write_text(text)
        if i == 1:
            (tree / "src" / "b.c").write_text("int x_first;\n")
        _git(tree, "commit", "-qam", f"patch {i}")
        p = tmp / "patches" / f"000{i}-p.patch"
        p.parent.mkdir(exist_ok=True)
        p.write_text(_git(tree, "format-patch", "-1", "--stdout"))
        patches.append(p)
    return tree, patches, versions


def test_tree_with_overlapping_series_applied_is_accepted(tmp_path):
    tree, patches, versions = _series(tmp_path)
    # the first patch alone does not reverse on the final tree: a check patch by patch refuses it
    assert fu.run_git_apply(tree, patches[0].resolve(), "--reverse", "--check").returncode != 0
    assert fu.first_missing_patch(tree, patches) is None
    assert fu.check_user_tree(tree, patches)  # returns the checkout's commit
    assert (tree / "src" / "a.c").read_text() == versions[2]  # the user's tree is left as it was
    assert not _git(tree, "status", "--porcelain")


@pytest.mark.parametrize("state", [0, 1])
def test_tree_missing_the_later_patch_is_refused_by_name(tmp_path, state):
    tree, patches, versions = _series(tmp_path)
    (tree / "src" / "a.c").write_text(versions[state])
    assert fu.first_missing_patch(tree, patches).name == "0002-p.patch"
    with pytest.raises(SystemExit, match="0002-p.patch"):
        fu.check_user_tree(tree, patches)
    assert (tree / "src" / "a.c").read_text() == versions[state]


def test_tree_missing_the_earlier_patch_is_refused_by_name(tmp_path):
    tree, patches, versions = _series(tmp_path)
    (tree / "src" / "b.c").write_text("int x;\n")  # a.c as after both patches, b.c never patched
    assert fu.first_missing_patch(tree, patches).name == "0001-p.patch"
    with pytest.raises(SystemExit, match="0001-p.patch"):
        fu.check_user_tree(tree, patches)


def test_check_works_when_the_temporary_directory_is_inside_a_repository(tmp_path, monkeypatch):
    """git run inside another repository would resolve the patch's paths against that
    repository's root and skip them, so a missing patch would pass unnoticed."""
    tree, patches, versions = _series(tmp_path)
    outer = tmp_path / "outer"
    outer.mkdir()
    _git(outer, "init", "-q")
    monkeypatch.setattr(tempfile, "tempdir", str(outer))
    (tree / "src" / "a.c").write_text(versions[1])
    assert fu.first_missing_patch(tree, patches).name == "0002-p.patch"
    (tree / "src" / "a.c").write_text(versions[2])
    assert fu.first_missing_patch(tree, patches) is None


def test_marker_of_this_patch_set_is_trusted_and_a_stale_one_is_not(tmp_path):
    """benchmarks/gpu_check.sh patches a pruned tree on machines that may lack git and marks it with
    the patch set's hash, as fetch_upstream.py marks its own trees: the check trusts a marker naming
    this patch set (no git involved) and checks the tree itself when the marker names another."""
    tree, patches, versions = _series(tmp_path)
    (tree / "src" / "a.c").write_text(versions[0])  # neither patch applied
    (tree / "src" / "b.c").write_text("int x;\n")
    marker = tree / ".mtpllama-ready"
    marker.write_text(f"{fu.UPSTREAM_COMMIT}\n{fu.patches_hash(patches)}\n")
    assert fu.check_user_tree(tree, patches) == fu.UPSTREAM_COMMIT
    marker.write_text(f"{fu.UPSTREAM_COMMIT}\n0123456789abcdef\n")
    with pytest.raises(SystemExit, match=patches[-1].name):
        fu.check_user_tree(tree, patches)
