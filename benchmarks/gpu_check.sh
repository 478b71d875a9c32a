#!/usr/bin/env bash
# The GPU check: build with CUDA, run the gpu tests, benchmark.  For a person with a GPU machine and
# for a lent one (H100/H200, 16 cores, CUDA toolkit, cmake, ninja, numpy, pytest, scikit-build-core,
# no package registry, 10 minutes per command, 15 in all).
#
# Here, once per patch set (writes build/gpu-carry/: the pruned, hash-checked upstream tree, the
# files the patches change, and wheels of cffi, pycparser and gguf; about 4 MiB):
#   python3 benchmarks/gpu_tree.py prepare
# There, from the checkout's root, with build/gpu-carry carried along:
#   bash benchmarks/gpu_check.sh build test      # ~5 + 1.5 min
#   bash benchmarks/gpu_check.sh bench           # ~1 + 3 min (the build stays in build/gpu)
#   bash benchmarks/gpu_check.sh all             # both, where one command may run 10+ minutes
# Phases print as they go and stop at their time box; logs and gpu_bench.json land in $OUT
# (default build/gpu-check-out).  GPU_CHECK_CPU=1 rehearses every phase on a machine without a GPU
# (a CPU build, the gpu tests skip, a smaller file and fewer tokens).
set -uo pipefail

REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$REPO"
OUT=${OUT:-$REPO/build/gpu-check-out}
WORK=$REPO/build/gpu-work
BUILD=$REPO/build/gpu
CARRY=$REPO/build/gpu-carry
CPU_ONLY=${GPU_CHECK_CPU:-0}
PY=${PYTHON:-python3}
mkdir -p "$OUT" "$WORK"
export PYTHONUNBUFFERED=1
t0=$(date +%s)
say() { echo "[gpu-check +$(( $(date +%s) - t0 ))s] $*" | tee -a "$OUT/gpu_check.log"; }
# run a phase under a time box; its output goes to $OUT/<name>.log and to the terminal
box() {
  local name=$1 secs=$2; shift 2
  say "phase $name (box ${secs}s): $*"
  local s=$(date +%s)
  timeout --signal=INT --kill-after=10 "$secs" "$@" 2>&1 | tee "$OUT/$name.log"
  local rc=${PIPESTATUS[0]}
  say "phase $name: rc=$rc after $(( $(date +%s) - s ))s"
  echo "$name $rc $(( $(date +%s) - s ))" >> "$OUT/phases.txt"
  return "$rc"
}

phase_build() {
  say "machine: $(nproc) cores; $(nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader 2>/dev/null || echo 'no nvidia-smi'); $(nvcc --version 2>/dev/null | tail -1 || echo 'no nvcc')"
  [ -f "$CARRY/llama.cpp-pruned.tar.gz" ] || { say "no $CARRY: run 'python3 benchmarks/gpu_tree.py prepare' first"; return 1; }
  rm -rf "$WORK/llama.cpp" && tar xzf "$CARRY/llama.cpp-pruned.tar.gz" -C "$WORK" || return 1
  box verify 60 "$PY" benchmarks/gpu_tree.py verify "$WORK/llama.cpp" || return 1
  box patch 60 "$PY" benchmarks/gpu_tree.py apply "$WORK/llama.cpp" || return 1
  # what the image lacks, from the carried wheels (nothing is fetched)
  "$PY" -c "import cffi, gguf" 2>/dev/null ||
    "$PY" -m pip install -q --no-index --no-deps --find-links "$CARRY/wheels" cffi pycparser gguf || return 1
  local cuda=ON arch=native
  [ "$CPU_ONLY" = 1 ] && cuda=OFF
  export MTPLLAMA_LLAMA_CPP_DIR=$WORK/llama.cpp CMAKE_BUILD_PARALLEL_LEVEL=$(nproc)
  box build 420 "$PY" -m pip install --no-build-isolation --no-deps --no-index -q . \
      -C build-dir="$BUILD" -C cmake.define.GGML_CUDA=$cuda -C cmake.define.CMAKE_CUDA_ARCHITECTURES=$arch \
      -C cmake.define.MTPLLAMA_UPSTREAM_TOOLS=ON || return 1
  box tools 240 cmake --build "$BUILD" --target llama-completion llama-speculative-simple -j "$(nproc)" || return 1
  (cd /tmp && "$PY" -c "import mtpllama; print('devices:', [(d.name, d.description) for d in mtpllama.devices()])") \
    | tee -a "$OUT/gpu_check.log"
}

phase_test() {
  # only the gpu tests (the rest of the suite needs the test extras, which the image lacks, and runs in CI)
  box test 150 "$PY" -m pytest -q -p no:cacheprovider tests/test_gpu.py -rs --junitxml="$OUT/test_gpu.xml"
}

phase_bench() {
  local args=()
  [ "$CPU_ONLY" = 1 ] && args=(--cpu-rehearsal)
  box bench 300 "$PY" benchmarks/gpu_bench.py --tools "$BUILD/bin" --json "$OUT/gpu_bench.json" "${args[@]}"
}

rc=0
[ $# -eq 0 ] && set -- all
for p in "$@"; do
  case $p in
    build) phase_build || rc=1 ;;
    test) phase_test || rc=1 ;;
    bench) phase_bench || rc=1 ;;
    all) { phase_build && phase_test; } || rc=1; phase_bench || rc=1 ;;
    *) echo "unknown phase $p (build, test, bench, all)"; exit 2 ;;
  esac
  [ $rc -ne 0 ] && [ "$p" = build ] && break
done
say "done (rc=$rc); logs in $OUT"
exit $rc
