#!/usr/bin/env bash
# Compile check of the CUDA build on a machine without a CUDA toolkit or GPU.
#
# Installs NVIDIA's toolkit wheels from PyPI into the cache (nvcc, the runtime, CCCL,
# cuBLAS: the CUDA 13.0 line, the first whose nvcc wheel carries the whole compiler
# driver, not only ptxas), then configures and builds libmtpllama with GGML_CUDA=ON for
# one GPU architecture (default 90a, H100/H200) through ccache.  The toolkit wheels hold
# no driver, so the link uses a stub libcuda.so made from the driver symbols ggml-cuda
# references (the real one comes with the NVIDIA driver where the library runs).
#
#   bash benchmarks/cuda_compile_check.sh            # ARCH=90a JOBS=$(nproc)
#   ARCH=89 JOBS=1 bash benchmarks/cuda_compile_check.sh
#
# Prints the time each phase took; the build tree stays in the cache, so a second run
# recompiles only what changed.
set -euo pipefail

ARCH=${ARCH:-90a}
JOBS=${JOBS:-$(nproc)}
HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
CACHE=${MTPLLAMA_CACHE_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/mtpllama}
TK_SITE=$CACHE/cuda-pypi/site
TK=$TK_SITE/nvidia/cu13
BUILD=$CACHE/cuda-check-build-$ARCH
PY=${PYTHON:-python3}

t0=$(date +%s)
phase() { echo "[cuda-check +$(( $(date +%s) - t0 ))s] $*"; }

phase "toolkit wheels -> $TK_SITE"
if [ ! -x "$TK/bin/nvcc" ]; then
  "$PY" -m pip install -q --target "$TK_SITE" \
    "nvidia-cuda-nvcc==13.0.88" "nvidia-cuda-crt==13.0.88" "nvidia-nvvm==13.0.88" \
    "nvidia-cuda-runtime==13.0.96" "nvidia-cuda-cccl==13.0.85" "nvidia-cublas==13.0.2.14"
fi
"$TK/bin/nvcc" --version | tail -1

# The wheels ship versioned libraries only; CMake's FindCUDAToolkit looks for the
# unversioned names a toolkit install has.
for so in cudart cublas cublasLt; do
  ln -sf "lib$so.so.13" "$TK/lib/lib$so.so"
done
# nvcc's profile links from lib64.
[ -e "$TK/lib64" ] || ln -s lib "$TK/lib64"
mkdir -p "$TK/lib/stubs"
if [ ! -e "$TK/lib/stubs/libcuda.so" ]; then
  echo 'void mtpllama_cuda_stub(void) {}' > "$TK/lib/stubs/stub.c"
  cc -shared -fPIC -Wl,-soname,libcuda.so.1 -o "$TK/lib/stubs/libcuda.so" "$TK/lib/stubs/stub.c"
fi

# The patched tree's directory is named by the patch set; a copy at a fixed path keeps
# ccache's hits (the compiler sees the same paths) when a patch changes a few files only.
phase "patched llama.cpp tree -> $CACHE/cuda-check-src"
tree=$("$PY" "$HERE/cmake/fetch_upstream.py" --patches-dir "$HERE/patches" | sed -n 's/^LLAMA_CPP_DIR=//p')
"$PY" - "$tree" "$CACHE/cuda-check-src" <<'PYEOF'
import filecmp, os, shutil, sys
src, dst = sys.argv[1:3]
keep = set()
for root, dirs, files in os.walk(src):
    rel = os.path.relpath(root, src)
    os.makedirs(os.path.join(dst, rel), exist_ok=True)
    for f in files:
        a, b = os.path.join(root, f), os.path.join(dst, rel, f)
        keep.add(os.path.normpath(b))
        if not os.path.exists(b) or not filecmp.cmp(a, b, shallow=False):
            shutil.copy2(a, b)
for root, dirs, files in os.walk(dst):
    for f in files:
        if os.path.normpath(os.path.join(root, f)) not in keep:
            os.remove(os.path.join(root, f))
PYEOF
export MTPLLAMA_LLAMA_CPP_DIR="$CACHE/cuda-check-src"

phase "configure $BUILD (CUDA arch $ARCH)"
cmake -S "$HERE" -B "$BUILD" -G Ninja \
  -DGGML_CUDA=ON -DCMAKE_CUDA_ARCHITECTURES="$ARCH" \
  -DCUDAToolkit_ROOT="$TK" -DCMAKE_CUDA_COMPILER="$TK/bin/nvcc" \
  -DCMAKE_CUDA_COMPILER_LAUNCHER=ccache \
  -DPython_EXECUTABLE="$(command -v "$PY")" >"$CACHE/cuda-check-configure.log" 2>&1 \
  || { tail -40 "$CACHE/cuda-check-configure.log"; exit 1; }
grep -E "CUDA Toolkit|Using CMAKE_CUDA_ARCHITECTURES|CUDA found" "$CACHE/cuda-check-configure.log" || true

phase "compile ggml-cuda ($JOBS jobs)"
cmake --build "$BUILD" --target ggml-cuda -j "$JOBS"

# Driver entry points ggml-cuda calls (cuDeviceGet, cuMemCreate, ...): stubs with those
# names let the shared library link with --no-undefined.
phase "stub libcuda.so from ggml-cuda's undefined driver symbols"
lib=$(find "$BUILD" -name 'libggml-cuda.a' | head -1)
nm -u --format=just-symbols "$lib" | grep -E '^cu[A-Z]' | sort -u > "$TK/lib/stubs/symbols.txt"
wc -l < "$TK/lib/stubs/symbols.txt"
sed 's/.*/int &(void) { return 999; }/' "$TK/lib/stubs/symbols.txt" > "$TK/lib/stubs/stub.c"
cc -shared -fPIC -Wl,-soname,libcuda.so.1 -o "$TK/lib/stubs/libcuda.so" "$TK/lib/stubs/stub.c"
rm -f "$BUILD/libmtpllama.so"  # relink against this stub

phase "link libmtpllama"
cmake --build "$BUILD" --target mtpllama -j "$JOBS"
so=$(find "$BUILD" -maxdepth 1 -name 'libmtpllama.so' | head -1)
ls -la "$so"
# The CUDA backend is inside: its registration function and the device code for $ARCH.
nm -D --defined-only "$so" | grep -c ' T mtpl_' | sed 's/^/exported mtpl_ symbols: /'
# the CUDA backend and our CUDA patches are inside
for sym in ggml_backend_cuda_reg ggml_cuda_batch_invariant_rows ggml_backend_cuda_graph_counts; do
  echo "$sym: $(nm "$so" | grep -c "$sym")"
done
readelf -d "$so" | grep NEEDED
phase "done"
