"""An OpenAI-compatible HTTP server over mtpllama (`mtpllama serve -m FILE`; the `server` extra:
Starlette and uvicorn).

    protocol.py  request checks and response shapes (no framework, no engine)
    engine.py    the engine behind the routes: a pool of sessions, a group's by default (SessionPool)
    metrics.py   counters and their Prometheus text
    app.py       the Starlette routes
    serve()      load the model, start the pool, run uvicorn until SIGINT/SIGTERM
"""
from __future__ import annotations

import os
import signal
import sys
import threading
from pathlib import Path


def serve(model_path: str, *, host: str = "127.0.0.1", port: int = 8080, parallel: int = 1, api_key: str | None = None,
          n_ctx: int = 0, n_threads: int = 0, mtp: bool = True, mtp_path: str | None = None, spec=None,
          n_gpu_layers: int = 0, tensor_overrides: tuple[str, ...] = (), use_mmap: bool | None = None,
          mtp_device: str | None = None, rpc_servers: tuple[str, ...] = (),
          max_queue: int = 16, alias: str | None = None, log_level: str = "info", step_delay: float = 0.0,
          batching: str | None = None) -> int:
    """Serve model_path until SIGINT or SIGTERM: requests in flight are cancelled at their next step
    boundary, the sessions and the model are freed, and the function returns 0.  batching: see
    engine.BATCHING; None is "exact", or "off" for a recurrent trunk (groups do not support it yet;
    the server says so on stderr and in /health)."""
    try:
        import uvicorn
        from .app import ServerConfig, create_app
    except ImportError as e:
        raise SystemExit(f"mtpllama serve needs the server extra: pip install 'mtpllama[server]' ({e})") from e
    from ..config import SessionConfig
    from ..errors import MtpllamaError
    from ..model import Model
    from .engine import SessionPool

    if parallel < 1:
        raise ValueError("--parallel must be >= 1")
    model = Model(model_path, mtp=mtp, mtp_path=mtp_path, n_gpu_layers=n_gpu_layers,
                  tensor_overrides=tensor_overrides, use_mmap=use_mmap, mtp_device=mtp_device,
                  rpc_servers=rpc_servers)
    try:
        if batching is None:
            batching = "off" if model.info.recurrent else "exact"
            if batching == "off" and parallel > 1:
                print(f"mtpllama serve: {model.info.arch} has a recurrent trunk, which groups do not support yet: "
                      "each request gets trunk passes of its own (--batching off)", file=sys.stderr)
        # a group evaluates in one context with every core; separate sessions share the cores
        threads = n_threads or max(1, (os.cpu_count() or 1) // (1 if batching != "off" else parallel))
        pool = SessionPool(model, parallel, session_config=SessionConfig(n_ctx=n_ctx, n_threads=threads),
                           spec=spec, mtp=mtp, max_queue=max_queue, step_delay=step_delay, batching=batching)
    except BaseException:
        model.close()
        raise
    name = Path(model_path).name
    config = ServerConfig(model_id=alias or name, aliases=(name, model_path, Path(model_path).stem), api_key=api_key)
    app = create_app(pool, config)

    class Server(uvicorn.Server):
        def handle_exit(self, sig, frame) -> None:
            # in a signal handler: the pool's lock may be held by this very thread, so another thread
            # cancels what runs, and uvicorn's graceful shutdown then finds the streams ending
            threading.Thread(target=pool.begin_shutdown, name="mtpllama-shutdown", daemon=True).start()
            super().handle_exit(sig, frame)

    server = Server(uvicorn.Config(app, host=host, port=port, log_level=log_level, timeout_graceful_shutdown=10,
                                   lifespan="off"))
    # uvicorn raises the signal it caught again once it has shut down, under the handlers it found:
    # these no-ops let the pool and the model be freed, and the command return 0
    previous = {sig: signal.signal(sig, lambda *_: None) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        server.run()
    finally:
        pool.close()
        try:
            model.close()
        except MtpllamaError as e:  # a worker still inside a native call: the process exit frees it
            print(f"mtpllama serve: {e}", file=sys.stderr)
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    return 0
