#!/usr/bin/env python3
"""Build upstream llama.cpp's own tools from the same pinned, patched tree the package uses.

    python3 benchmarks/build_upstream.py            # configure + build (incremental), print paths
    python3 benchmarks/build_upstream.py --print    # only print the paths (exit 1 if not built)

The tree comes from ``cmake/fetch_upstream.py --patches-dir patches`` (the script the package's
CMake build runs), so the binaries run exactly the llama.cpp our engine links.  The build
directory lives outside the repository (default ``~/.cache/mtpllama/upstream-tools-build``,
or ``$MTPLLAMA_CACHE_DIR/upstream-tools-build``); nothing here is ever committed.

Configuration: Release, GGML_NATIVE=ON, static libraries, no curl/OpenSSL, ccache as the
compiler launcher when installed, and position-independent code (as the package's build
of the same sources: it changes nothing measurable on x86-64 and lets ccache share objects).
Three targets are built:

* ``llama-speculative-simple`` (examples/speculative-simple): the upstream speculative loop,
  ``--spec-type draft-mtp --spec-draft-n-max N --spec-draft-p-min P``; it prints
  ``decoded N tokens in S seconds, speed: X t/s`` (time after the prompt) and per-position
  acceptance (``#acc rate/pos``).
* ``llama-completion`` (tools/completion): plain decoding; its perf report prints
  ``eval time = MS ms / N runs (... tokens per second)`` (single-token decodes only).
* ``llama-server`` (tools/server), without its web UI: ``--parallel N --spec-type draft-mtp``, the
  serving benchmark's reference (benchmarks/serve_bench.py).

Prints ``KEY=VALUE`` lines: UPSTREAM_DIR, UPSTREAM_COMMIT, PATCHES_HASH, BUILD_DIR, SPECULATIVE,
COMPLETION, BUILD_SECONDS (this call) and LAST_REAL_BUILD_SECONDS (the last build that compiled).
Measured on the 2-core machines: a cold build takes about 7.5 minutes (136 ninja steps); after a
patch-set change, with ccache warm, about 4 minutes.
"""
from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "cmake"))
from fetch_upstream import cache_root  # noqa: E402  (one definition of the cache location)

TARGETS = {"SPECULATIVE": "llama-speculative-simple", "COMPLETION": "llama-completion", "SERVER": "llama-server"}


def log(msg: str) -> None:
    print(f"[build_upstream] {msg}", file=sys.stderr, flush=True)


def upstream_tree() -> dict[str, str]:
    """Run the package's fetch script; returns its KEY=VALUE output."""
    out = subprocess.run([sys.executable, str(REPO / "cmake" / "fetch_upstream.py"), "--patches-dir",
                          str(REPO / "patches")], check=True, stdout=subprocess.PIPE, text=True, cwd=REPO).stdout
    kv = dict(line.split("=", 1) for line in out.splitlines() if "=" in line)
    if "LLAMA_CPP_DIR" not in kv:
        raise SystemExit(f"fetch_upstream.py printed no LLAMA_CPP_DIR:\n{out}")
    return kv


def default_build_dir() -> Path:
    return cache_root() / "upstream-tools-build"


def binary_paths(build_dir: Path) -> dict[str, Path]:
    return {k: build_dir / "bin" / v for k, v in TARGETS.items()}


def _run_logged(cmd: list[str], logf) -> None:
    """Run cmd with its output going to logf (or to stderr when logf is None)."""
    log(" ".join(cmd))
    out = logf if logf is not None else sys.stderr
    r = subprocess.run(cmd, stdout=out, stderr=out)
    if r.returncode != 0:
        if logf is not None:
            logf.flush()
            log(f"failed; the last lines of {logf.name}:")
            print("".join(open(logf.name, errors="replace").readlines()[-40:]), file=sys.stderr)
        raise SystemExit(f"command failed ({r.returncode}): {' '.join(cmd)}")


def configure(src: Path, build_dir: Path, logf) -> None:
    defs = {
        "CMAKE_BUILD_TYPE": "Release",
        "GGML_NATIVE": "ON",
        "LLAMA_CURL": "OFF",
        "LLAMA_OPENSSL": "OFF",
        "BUILD_SHARED_LIBS": "OFF",
        "CMAKE_POSITION_INDEPENDENT_CODE": "ON",
        "LLAMA_BUILD_TESTS": "OFF",
        "LLAMA_BUILD_EXAMPLES": "ON",
        "LLAMA_BUILD_TOOLS": "ON",
        "LLAMA_BUILD_SERVER": "ON",
        "LLAMA_BUILD_UI": "OFF",
        "LLAMA_USE_PREBUILT_UI": "OFF",
        "LLAMA_BUILD_APP": "OFF",
        "LLAMA_BUILD_COMMON": "ON",
        "GGML_BACKEND_DL": "OFF",
    }
    ccache = shutil.which("ccache")
    if ccache:
        defs["CMAKE_C_COMPILER_LAUNCHER"] = ccache
        defs["CMAKE_CXX_COMPILER_LAUNCHER"] = ccache
    cmd = ["cmake", "-S", str(src), "-B", str(build_dir), "-G", "Ninja"] + [f"-D{k}={v}" for k, v in defs.items()]
    _run_logged(cmd, logf)


def build(force_configure: bool = False, jobs: int | None = None, build_dir: Path | None = None,
          verbose: bool = False) -> dict[str, str]:
    """Configure (when needed) and build the tools; the build's output goes to BUILD_DIR/build.log
    unless verbose."""
    kv = upstream_tree()
    src = Path(kv["LLAMA_CPP_DIR"])
    build_dir = build_dir or default_build_dir()
    build_dir.mkdir(parents=True, exist_ok=True)
    # a different tree (new pin or patch set) needs a fresh configure: the cache records its source dir
    stamp = build_dir / ".mtpllama-source"
    # the configuration's own stamp: a changed target set configures again (keeping the objects)
    conf_stamp = build_dir / ".mtpllama-targets"
    if not conf_stamp.exists() or conf_stamp.read_text().strip() != " ".join(TARGETS.values()):
        force_configure = True
    logf = None if verbose else open(build_dir / "build.log", "w")
    if force_configure or not (build_dir / "build.ninja").exists() or \
            not stamp.exists() or stamp.read_text().strip() != str(src):
        if stamp.exists() and stamp.read_text().strip() != str(src):
            log(f"source tree changed ({stamp.read_text().strip()} -> {src}): reconfiguring from scratch")
            for child in build_dir.iterdir():
                if child.name != "build.log":
                    shutil.rmtree(child) if child.is_dir() else child.unlink()
        configure(src, build_dir, logf)
        stamp.write_text(str(src) + "\n")
        conf_stamp.write_text(" ".join(TARGETS.values()) + "\n")
    cmd = ["cmake", "--build", str(build_dir), "--target", *TARGETS.values()]
    if jobs:
        cmd += ["-j", str(jobs)]
    t0 = time.perf_counter()
    _run_logged(cmd, logf)
    dt = time.perf_counter() - t0
    if logf is not None:
        logf.close()
    paths = binary_paths(build_dir)
    for p in paths.values():
        if not p.exists():
            raise SystemExit(f"expected binary missing after the build: {p}")
    out = {"UPSTREAM_DIR": str(src), "UPSTREAM_COMMIT": kv.get("UPSTREAM_COMMIT", "?"),
           "PATCHES_HASH": kv.get("PATCHES_HASH", "?"), "BUILD_DIR": str(build_dir)}
    out.update({k: str(v) for k, v in paths.items()})
    out["BUILD_SECONDS"] = f"{dt:.1f}"
    # the duration of the last build that compiled something (an up-to-date build takes ~0 s)
    last = build_dir / ".mtpllama-last-build-seconds"
    if dt > 10 or not last.exists():
        last.write_text(f"{dt:.1f}\n")
    out["LAST_REAL_BUILD_SECONDS"] = last.read_text().strip()
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--build-dir", type=Path, default=None, help="default: ~/.cache/mtpllama/upstream-tools-build")
    ap.add_argument("--reconfigure", action="store_true", help="run cmake's configure step again")
    ap.add_argument("-j", "--jobs", type=int, default=None)
    ap.add_argument("--print", action="store_true", help="print the binary paths without building")
    ap.add_argument("-v", "--verbose", action="store_true", help="show the build's output (default: BUILD_DIR/build.log)")
    a = ap.parse_args(argv)
    if a.print:
        paths = binary_paths(a.build_dir or default_build_dir())
        for k, p in paths.items():
            print(f"{k}={p}")
        return 0 if all(p.exists() for p in paths.values()) else 1
    for k, v in build(a.reconfigure, a.jobs, a.build_dir, a.verbose).items():
        print(f"{k}={v}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
