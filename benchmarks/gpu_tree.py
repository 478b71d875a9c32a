#!/usr/bin/env python3
"""The pruned upstream tree and the wheels that travel to a GPU machine with no package registry.

    python3 benchmarks/gpu_tree.py prepare            # build/gpu-carry/: pruned tree + wheels
    python3 benchmarks/gpu_tree.py verify DIR         # DIR: an unpacked pruned tree (exit 1 if tampered)
    python3 benchmarks/gpu_tree.py apply DIR          # apply patches/ to it (git, or the prepared files)
    python3 benchmarks/gpu_tree.py digest             # the manifest digest of a fresh prune

The registry sdist (77 MB) is more than may travel, so `prepare` keeps only what the CUDA build and
upstream's two benchmark tools compile from (CMake files, include/, src/, common/, vendor/, ggml
with its CPU, CUDA and RPC backends, tools/completion, examples/speculative-simple), unpatched, from the
hash-checked sdist (cmake/fetch_upstream.py fetches it), and writes MANIFEST.sha256: the sha256 of
every file kept.  `verify` checks every file against the manifest (none missing, changed or added)
and the manifest against PRUNED_MANIFEST_SHA256 below, so a tree altered together with its manifest
fails too.  benchmarks/gpu_check.sh verifies before it applies patches/ and builds.  A machine
without git gets the files the patches change from `prepare` (patched here, with git), used only
when their recorded patch-set hash is that of this checkout's patches/.
"""
from __future__ import annotations

import argparse
import hashlib
import io
import shutil
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "cmake"))
from fetch_upstream import (UPSTREAM_COMMIT, VENDOR_PREFIX, cache_root, fetch_sdist, patch_files,  # noqa: E402
                            patched_paths, patches_hash)

# sha256 of MANIFEST.sha256 for the pinned sdist and the rules below (`digest` prints it)
PRUNED_MANIFEST_SHA256 = "df8dffe3cde5c9392b90bf1648b1eac3bf7938a8c7ded14095f80d8ac3a6bb06"
MANIFEST = "MANIFEST.sha256"
CARRY = REPO / "build" / "gpu-carry"
TARBALL = "llama.cpp-pruned.tar.gz"
PATCHED = "patched-files.tar.gz"   # the files patches/ changes, patched (for machines without git)

KEEP_DIRS = ("cmake/", "include/", "src/", "common/", "vendor/", "licenses/", "ggml/cmake/", "ggml/include/",
             "ggml/src/ggml-cpu/", "ggml/src/ggml-cuda/", "ggml/src/ggml-rpc/", "tools/completion/",
             "examples/speculative-simple/")
KEEP_FILES = ("CMakeLists.txt", "LICENSE", "ggml/CMakeLists.txt")

# The GPU image (Python 3.12) lacks these; pinned to what this repository is tested with.
WHEELS = ("cffi==2.1.1", "pycparser==3.12", "gguf==0.19.0")


def kept(rel: str) -> bool:
    if rel in KEEP_FILES or rel.startswith(KEEP_DIRS):
        return True
    # ggml/src's own sources (ggml.c, ggml-backend.cpp, ...), not the other backends' folders
    return rel.startswith("ggml/src/") and "/" not in rel[len("ggml/src/"):]


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def manifest_text(files: dict[str, bytes]) -> str:
    return "".join(f"{sha256(files[rel])}  {rel}\n" for rel in sorted(files))


def pruned_files() -> dict[str, bytes]:
    """Relative path -> content of every kept regular file of the pinned sdist's llama.cpp."""
    files: dict[str, bytes] = {}
    with tarfile.open(fetch_sdist(cache_root()), "r:gz") as tf:
        for m in tf.getmembers():
            if not m.isfile() or not m.name.startswith(VENDOR_PREFIX):
                continue
            rel = m.name[len(VENDOR_PREFIX):]
            if kept(rel):
                f = tf.extractfile(m)
                assert f is not None
                files[rel] = f.read()
    return files


def write_tarball(files: dict[str, bytes], out: Path) -> str:
    """A reproducible tar.gz of llama.cpp/<files> plus llama.cpp/MANIFEST.sha256; returns the
    manifest's digest."""
    text = manifest_text(files)
    out.parent.mkdir(parents=True, exist_ok=True)
    with tarfile.open(out, "w:gz", format=tarfile.PAX_FORMAT) as tf:
        for rel, data in sorted(files.items()) + [(MANIFEST, text.encode())]:
            info = tarfile.TarInfo("llama.cpp/" + rel)
            info.size, info.mtime, info.mode = len(data), 0, 0o644
            tf.addfile(info, io.BytesIO(data))
    return sha256(text.encode())


def tar_files(files: dict[str, bytes], out: Path) -> None:
    with tarfile.open(out, "w:gz", format=tarfile.PAX_FORMAT) as tf:
        for rel, data in sorted(files.items()):
            info = tarfile.TarInfo(rel)
            info.size, info.mtime, info.mode = len(data), 0, 0o644
            tf.addfile(info, io.BytesIO(data))


def patched_files(files: dict[str, bytes]) -> dict[str, bytes]:
    """The files patches/ touches, patched with git apply (plus PATCHES_HASH)."""
    patches = patch_files(REPO / "patches")
    with tempfile.TemporaryDirectory() as d:
        tree = Path(d)
        for rel, data in files.items():
            (tree / rel).parent.mkdir(parents=True, exist_ok=True)
            (tree / rel).write_bytes(data)
        subprocess.run(["git", "init", "-q"], cwd=tree, check=True)
        for p in patches:
            subprocess.run(["git", "apply", str(p)], cwd=tree, check=True)
        touched = set().union(*(patched_paths(p) for p in patches)) - {"/dev/null"}
        out = {rel: (tree / rel).read_bytes() for rel in touched if (tree / rel).is_file()}
    out["PATCHES_HASH"] = patches_hash(patches).encode()
    return out


def apply(tree: Path) -> None:
    """Apply patches/ to an unpacked pruned tree; mark it as fetch_upstream.py marks its trees."""
    patches = patch_files(REPO / "patches")
    phash = patches_hash(patches)
    git = shutil.which("git")
    if git:
        subprocess.run([git, "init", "-q"], cwd=tree, check=True)
        for p in patches:
            subprocess.run([git, "apply", str(p)], cwd=tree, check=True)
        shutil.rmtree(tree / ".git")
        how = "git apply"
    else:
        with tarfile.open(CARRY / PATCHED, "r:gz") as tf:
            recorded = tf.extractfile("PATCHES_HASH").read().decode()  # type: ignore[union-attr]
            if recorded != phash:
                raise SystemExit(f"{CARRY / PATCHED} was made for patch set {recorded}, this checkout's is {phash}: "
                                 "run `python3 benchmarks/gpu_tree.py prepare` again")
            for m in tf.getmembers():
                if m.name != "PATCHES_HASH":
                    tf.extract(m, tree, filter="data")
        how = f"the prepared files ({PATCHED}; no git here)"
    (tree / ".mtpllama-ready").write_text(UPSTREAM_COMMIT + "\n" + phash + "\n")
    print(f"[gpu_tree] applied {len(patches)} patches with {how}; patch set {phash}")


def verify(tree: Path, pinned: str = PRUNED_MANIFEST_SHA256) -> list[str]:
    """Problems with an unpacked pruned tree (empty: it is the pinned one)."""
    mpath = tree / MANIFEST
    if not mpath.is_file():
        return [f"{mpath} is missing"]
    text = mpath.read_bytes()
    problems = []
    if sha256(text) != pinned:
        problems.append(f"{MANIFEST} has sha256 {sha256(text)}, not the pinned {pinned}")
    listed = {}
    for line in text.decode().splitlines():
        digest, _, rel = line.partition("  ")
        listed[rel] = digest
    for rel, digest in sorted(listed.items()):
        p = tree / rel
        if not p.is_file():
            problems.append(f"{rel}: missing")
        elif sha256(p.read_bytes()) != digest:
            problems.append(f"{rel}: changed")
    ignore = {MANIFEST, ".mtpllama-ready"}
    for p in sorted(tree.rglob("*")):
        rel = p.relative_to(tree).as_posix()
        if p.is_file() and rel not in listed and rel not in ignore and not rel.startswith(".git/"):
            problems.append(f"{rel}: not in the manifest")
    return problems


def prepare() -> int:
    files = pruned_files()
    digest = write_tarball(files, CARRY / TARBALL)
    tar_files(patched_files(files), CARRY / PATCHED)
    if digest != PRUNED_MANIFEST_SHA256:
        raise SystemExit(f"the pruned tree's manifest digest is {digest}, not the pinned "
                         f"{PRUNED_MANIFEST_SHA256}: update PRUNED_MANIFEST_SHA256 if the rules changed")
    wheels = CARRY / "wheels"
    wheels.mkdir(parents=True, exist_ok=True)
    for old in wheels.glob("*.whl"):
        old.unlink()
    subprocess.run([sys.executable, "-m", "pip", "download", "-q", "--no-deps", "--only-binary=:all:",
                    "--python-version", "3.12", "--implementation", "cp", "--platform", "manylinux_2_28_x86_64",
                    "--platform", "manylinux_2_17_x86_64", "--platform", "manylinux2014_x86_64", "-d", str(wheels),
                    *WHEELS], check=True)
    size = sum(p.stat().st_size for p in CARRY.rglob("*") if p.is_file())
    print(f"{CARRY}: {len(files)} files of llama.cpp ({(CARRY / TARBALL).stat().st_size / 2**20:.1f} MiB packed), "
          f"{len(list(wheels.glob('*.whl')))} wheels; {size / 2**20:.1f} MiB to carry (limit 64 MiB with the checkout)")
    return 0


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    sub.add_parser("prepare")
    v = sub.add_parser("verify")
    v.add_argument("tree", type=Path)
    ap_ = sub.add_parser("apply")
    ap_.add_argument("tree", type=Path)
    sub.add_parser("digest")
    a = ap.parse_args(argv)
    if a.cmd == "prepare":
        return prepare()
    if a.cmd == "apply":
        apply(a.tree)
        return 0
    if a.cmd == "digest":
        with tempfile.TemporaryDirectory() as d:
            print(write_tarball(pruned_files(), Path(d) / TARBALL))
        return 0
    problems = verify(a.tree)
    for p in problems[:50]:
        print(f"[gpu_tree] {p}", file=sys.stderr)
    if problems:
        print(f"[gpu_tree] {a.tree} is not the pinned pruned tree ({len(problems)} problems)", file=sys.stderr)
        return 1
    print(f"[gpu_tree] {a.tree}: every file matches the pinned manifest")
    return 0


if __name__ == "__main__":
    sys.exit(main())
