"""RPC workers for tests and benchmarks: an `mtpllama-rpc-server` process on a free loopback port."""
from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Worker:
    """`python -m mtpllama.rpc` on 127.0.0.1, listening when the constructor returns."""

    def __init__(self, threads: int = 1) -> None:
        self.port = free_port()
        self.endpoint = f"127.0.0.1:{self.port}"
        self.proc = subprocess.Popen([sys.executable, "-m", "mtpllama.rpc", "--port", str(self.port),
                                      "-t", str(threads)], stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=1).close()
                return
            except OSError:
                if self.proc.poll() is not None:
                    raise RuntimeError(f"worker exited: {self.proc.stdout.read().decode(errors='replace')}")
                time.sleep(0.05)
        self.stop()
        raise RuntimeError("worker did not listen in 30 s")

    def stop(self) -> None:
        if self.proc.poll() is None:
            os.kill(self.proc.pid, signal.SIGCONT)  # a stopped process ignores SIGKILL until continued
            self.proc.kill()
        self.proc.wait()
        self.proc.stdout.close()
