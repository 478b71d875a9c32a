"""`mtpllama-rpc-server`: this machine's CPU as a worker of llama.cpp's RPC backend, built from the
same pinned tree with the same kernel switches as the package (batch-invariant small batches, huge
pages), so rows it computes match a local run bit for bit.  docs/rpc.md has the recipe."""
from __future__ import annotations

import argparse
import os
import signal
import sys


def serve(host: str = "127.0.0.1", port: int = 50052, threads: int = 0, cache_dir: str | None = None) -> int:
    """Serve until the process is killed (SIGINT and SIGTERM end it at once)."""
    from ._lib import check, ffi, lib

    signal.signal(signal.SIGINT, signal.SIG_DFL)  # the serving loop never returns to Python
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    threads = threads or os.cpu_count() or 1
    cache = ffi.new("char[]", cache_dir.encode()) if cache_dir else ffi.NULL
    check(lib.mtpl_rpc_serve(f"{host}:{port}".encode(), threads, cache), "rpc_serve")
    return 1


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="mtpllama-rpc-server", description=__doc__.split("\n\n")[0])
    ap.add_argument("--host", default="127.0.0.1", help="address to listen on (0.0.0.0: every interface; "
                                                         "the protocol has no authentication)")
    ap.add_argument("--port", type=int, default=50052)
    ap.add_argument("-t", "--threads", type=int, default=0, help="threads (default: all cores)")
    ap.add_argument("--cache", metavar="DIR", help="cache tensors sent by clients here, by hash")
    a = ap.parse_args(argv)
    if not 0 < a.port < 65536 or a.threads < 0:
        ap.error("--port must be in 1..65535 and --threads >= 0")
    return serve(a.host, a.port, a.threads, a.cache)


if __name__ == "__main__":
    sys.exit(main())
