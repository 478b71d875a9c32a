#!/usr/bin/env python3
"""Provide the pinned, patched llama.cpp source tree for the build.

The tree comes from the registry source distribution llama-cpp-python==0.3.36,
which carries llama.cpp commit 0c1e570 under vendor/llama.cpp.  It is fetched
with pip, checked against a fixed sha256, extracted into a cache directory
outside the repository, and patched with patches/*.patch (in order).  A patched
tree is keyed by the hash of the patch set, so a patch is never applied twice.

Set MTPLLAMA_LLAMA_CPP_DIR to use your own checkout instead; the patches must
then already be applied there (this script checks and says which are missing).

Prints KEY=VALUE lines for CMake: LLAMA_CPP_DIR, UPSTREAM_COMMIT, PATCHES_HASH.
"""
from __future__ import annotations

import argparse
import hashlib
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path

SDIST_NAME = "llama-cpp-python"
SDIST_VERSION = "0.3.36"
SDIST_FILE = "llama_cpp_python-0.3.36.tar.gz"
SDIST_SHA256 = "832db0699007f1be95a7e41ef12e88926b02ba836461e36a36372db2760c1a2e"
UPSTREAM_COMMIT = "0c1e57098bba43ac29e6e3b677cdceebdd22334f"
VENDOR_PREFIX = "llama_cpp_python-0.3.36/vendor/llama.cpp/"


def log(msg: str) -> None:
    print(f"[mtpllama fetch] {msg}", file=sys.stderr, flush=True)


def cache_root() -> Path:
    if os.environ.get("MTPLLAMA_CACHE_DIR"):
        return Path(os.environ["MTPLLAMA_CACHE_DIR"]).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "mtpllama"


def sha256_of(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def patch_files(patches_dir: Path) -> list[Path]:
    return sorted(p for p in patches_dir.glob("*.patch") if p.is_file())


def patches_hash(patches: list[Path]) -> str:
    h = hashlib.sha256()
    for p in patches:
        h.update(p.name.encode() + b"\0" + p.read_bytes() + b"\0")
    return h.hexdigest()[:16]


def fetch_sdist(root: Path) -> Path:
    """Download the pinned sdist with pip (once) and verify its hash."""
    dl = root / "sdist"
    dl.mkdir(parents=True, exist_ok=True)
    target = dl / SDIST_FILE
    if os.environ.get("MTPLLAMA_LLAMA_SDIST"):
        target = Path(os.environ["MTPLLAMA_LLAMA_SDIST"])
    if not target.exists():
        log(f"downloading {SDIST_NAME}=={SDIST_VERSION} with pip into {dl}")
        with tempfile.TemporaryDirectory(dir=dl) as tmp:
            # --no-build-isolation: pip must read the sdist's metadata; in an isolated
            # environment it would try to build cmake from source for that alone.
            cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--no-binary", ":all:",
                   "--no-build-isolation", "--disable-pip-version-check", "-d", tmp,
                   f"{SDIST_NAME}=={SDIST_VERSION}"]
            r = subprocess.run(cmd, stdout=sys.stderr, stderr=sys.stderr)
            got = Path(tmp) / SDIST_FILE
            if r.returncode != 0 or not got.exists():
                raise SystemExit(
                    f"could not download {SDIST_NAME}=={SDIST_VERSION} with pip (exit {r.returncode}). "
                    f"Download {SDIST_FILE} yourself and set MTPLLAMA_LLAMA_SDIST to its path, or set "
                    "MTPLLAMA_LLAMA_CPP_DIR to a llama.cpp checkout of commit " + UPSTREAM_COMMIT)
            os.replace(got, target)
    digest = sha256_of(target)
    if digest != SDIST_SHA256:
        raise SystemExit(f"{target}: sha256 {digest} does not match the pinned {SDIST_SHA256}; "
                         "delete the file and retry")
    return target


def run_git_apply(tree: Path, patch: Path, *extra: str, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(["git", "apply", *extra, str(patch)], cwd=tree, env=env,
                          capture_output=True, text=True)


def extract_and_patch(root: Path, sdist: Path, patches: list[Path], phash: str) -> Path:
    final = root / f"llama.cpp-{UPSTREAM_COMMIT[:12]}-p{phash}"
    if (final / ".mtpllama-ready").exists():
        return final
    tmp = Path(tempfile.mkdtemp(prefix="llama.cpp-tmp-", dir=root))
    try:
        log(f"extracting {VENDOR_PREFIX} from {sdist.name}")
        with tarfile.open(sdist, "r:gz") as tf:
            for m in tf.getmembers():
                if not m.name.startswith(VENDOR_PREFIX):
                    continue
                rel = m.name[len(VENDOR_PREFIX):]
                if not rel or rel == ".git":
                    continue
                m.name = rel
                tf.extract(m, tmp, filter="data")
        # Make the tree its own git root so that `git apply` paths are relative to it
        # even when the cache lies inside another repository.
        subprocess.run(["git", "init", "-q"], cwd=tmp, check=True)
        for p in patches:
            r = run_git_apply(tmp, p, "--check")
            if r.returncode != 0:
                raise SystemExit(f"patch {p.name} does not apply to llama.cpp {UPSTREAM_COMMIT[:12]}:\n{r.stderr}")
            r = run_git_apply(tmp, p)
            if r.returncode != 0:
                raise SystemExit(f"patch {p.name} failed to apply:\n{r.stderr}")
            log(f"applied {p.name}")
        shutil.rmtree(tmp / ".git")
        (tmp / ".mtpllama-ready").write_text(UPSTREAM_COMMIT + "\n" + phash + "\n")
        try:
            os.replace(tmp, final)
        except OSError:
            if not (final / ".mtpllama-ready").exists():  # lost a race to a finished copy: fine
                raise
        return final
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)


def patched_paths(patch: Path) -> set[str]:
    """Files a git-format patch touches, relative to the tree."""
    paths = set()
    for line in patch.read_text(errors="replace").splitlines():
        if line.startswith(("--- a/", "+++ b/")):
            paths.add(line[6:])
    return paths


def first_missing_patch(tree: Path, patches: list[Path]) -> Path | None:
    """The newest patch the tree lacks, if any.  Patches may touch the same lines (a later one
    editing what an earlier one added), so they are taken back one by one, newest first, on a
    scratch copy of the files they touch; the user's tree is only read."""
    with tempfile.TemporaryDirectory(prefix="mtpllama-check-") as scratch:
        for rel in set().union(*(patched_paths(p) for p in patches)):
            if (tree / rel).is_file():
                (Path(scratch) / rel).parent.mkdir(parents=True, exist_ok=True)
                shutil.copy2(tree / rel, Path(scratch) / rel)
        # not inside any repository (TMPDIR could be in one): git would take paths as relative
        # to that repository's root and skip the ones outside the scratch directory
        env = dict(os.environ, GIT_CEILING_DIRECTORIES=str(Path(scratch).parent))
        for p in reversed(patches):
            if run_git_apply(Path(scratch), p.resolve(), "--reverse", env=env).returncode != 0:
                return p
    return None


def check_user_tree(tree: Path, patches: list[Path]) -> str:
    if not (tree / "include" / "llama.h").exists():
        raise SystemExit(f"MTPLLAMA_LLAMA_CPP_DIR={tree} is not a llama.cpp source tree (no include/llama.h)")
    ready = tree / ".mtpllama-ready"
    if ready.is_file() and ready.read_text().split() == [UPSTREAM_COMMIT, patches_hash(patches)]:
        # patched by a tool of ours that writes this marker (benchmarks/gpu_check.sh on machines
        # without git): the patch set it names is this one
        return UPSTREAM_COMMIT
    missing = first_missing_patch(tree, patches)
    if missing is not None:
        raise SystemExit(f"MTPLLAMA_LLAMA_CPP_DIR={tree} lacks mtpllama's patch {missing.name} (or has it out of "
                         f"order). Apply every patch in the repository's patches/ directory, in order, with "
                         f"`git apply`.")
    r = subprocess.run(["git", "rev-parse", "HEAD"], cwd=tree, capture_output=True, text=True)
    return r.stdout.strip() if r.returncode == 0 else "unknown"


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--patches-dir", required=True, type=Path)
    args = ap.parse_args()
    patches = patch_files(args.patches_dir)
    phash = patches_hash(patches)
    user = os.environ.get("MTPLLAMA_LLAMA_CPP_DIR")
    if user:
        tree = Path(user).expanduser().resolve()
        commit = check_user_tree(tree, patches)
    else:
        root = cache_root()
        root.mkdir(parents=True, exist_ok=True)
        tree = extract_and_patch(root, fetch_sdist(root), patches, phash)
        commit = UPSTREAM_COMMIT
    print(f"LLAMA_CPP_DIR={tree}")
    print(f"UPSTREAM_COMMIT={commit}")
    print(f"PATCHES_HASH={phash}")


if __name__ == "__main__":
    main()
