"""Command line: `mtpllama` (demo on the default model), `mtpllama generate`, `mtpllama inspect`,
`mtpllama extract-mtp`, `mtpllama serve` (an OpenAI-compatible server)."""
from __future__ import annotations

import argparse
import json
import logging
import os
import sys


def _add_model_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("-m", "--model", required=True, help="GGUF file")
    p.add_argument("--mtp-path", help="an MTP-only GGUF with the NextN block, beside a trunk-only model")
    p.add_argument("-ngl", "--n-gpu-layers", type=int, default=0)
    p.add_argument("-ot", "--override-tensor", action="append", default=[], metavar="REGEX=DEVICE",
                   help="place tensors matching REGEX on DEVICE (repeatable, or comma-separated)")
    p.add_argument("--rpc", metavar="HOST:PORT[,HOST:PORT...]", default="",
                   help="mtpllama-rpc-server workers whose devices (RPC0, RPC1, ...) take layers first")
    p.add_argument("--mtp-device", metavar="DEVICE",
                   help="run the MTP (NextN) block, its KV cache and compute on DEVICE (CPU, CUDA0, ...); "
                        "GLM recipe: -ngl 99 -ot exps=CPU --mtp-device CUDA0")
    p.add_argument("-t", "--threads", type=int, default=0)
    p.add_argument("-c", "--ctx-size", type=int, default=0)
    mm = p.add_mutually_exclusive_group()
    mm.add_argument("--mmap", dest="use_mmap", action="store_const", const=True, default=None,
                    help="memory-map the file (default: read it into memory when it fits, see ModelConfig.use_mmap)")
    mm.add_argument("--no-mmap", dest="use_mmap", action="store_const", const=False,
                    help="read the file into memory")
    p.add_argument("-v", "--verbose", action="store_true", help="show llama.cpp's log")


def _spec_args(p: argparse.ArgumentParser) -> None:
    from .config import SpecConfig  # one place holds the defaults

    p.add_argument("--draft-max", type=int, default=SpecConfig.draft_max, help="most tokens drafted per step")
    p.add_argument("--draft-p-min", type=float, default=SpecConfig.draft_p_min)
    p.add_argument("--no-adaptive", action="store_true", help="always draft --draft-max tokens")
    p.add_argument("--no-mtp", action="store_true", help="plain decoding (the NextN block is not loaded)")


def _overrides(raw: list[str]) -> tuple[str, ...]:
    return tuple(r for item in raw for r in item.split(",") if r)


def _rpc(raw: str) -> tuple[str, ...]:
    return tuple(r.strip() for r in raw.split(",") if r.strip())


def _print_stats(st, out=sys.stdout) -> None:
    acc = ", ".join(f"{a:.0%}" for a in st.acceptance) or "-"
    print(f"tokens: {st.generated_tokens} in {st.steps} steps ({st.mean_tokens_per_step:.2f}/step), "
          f"acceptance by position: {acc}, decode {st.decode_tokens_per_second:.1f} tok/s", file=out)


def cmd_generate(a: argparse.Namespace) -> int:
    from . import Model, SessionConfig, SpecConfig

    with Model(a.model, mtp=not a.no_mtp, n_gpu_layers=a.n_gpu_layers, mtp_path=None if a.no_mtp else a.mtp_path,
               tensor_overrides=_overrides(a.override_tensor), use_mmap=a.use_mmap,
               mtp_device=None if a.no_mtp else a.mtp_device, rpc_servers=_rpc(a.rpc)) as model:
        with model.session(SessionConfig(n_ctx=a.ctx_size, n_threads=a.threads)) as s:
            spec = None if a.no_mtp else SpecConfig(a.draft_max, a.draft_p_min, adaptive=not a.no_adaptive)
            prompt = a.prompt if a.prompt is not None else sys.stdin.read()
            for piece in s.stream(prompt, a.n_predict, spec=spec):
                sys.stdout.write(piece)
                sys.stdout.flush()
            print()
            _print_stats(s.stats(), sys.stderr)
    return 0


def cmd_serve(a: argparse.Namespace) -> int:
    from .config import SpecConfig
    from .server import serve

    spec = None if a.no_mtp else SpecConfig(a.draft_max, a.draft_p_min, adaptive=not a.no_adaptive)
    return serve(a.model, host=a.host, port=a.port, parallel=a.parallel,
                 api_key=a.api_key or os.environ.get("MTPLLAMA_API_KEY") or None, n_ctx=a.ctx_size,
                 n_threads=a.threads, mtp=not a.no_mtp, mtp_path=None if a.no_mtp else a.mtp_path, spec=spec,
                 n_gpu_layers=a.n_gpu_layers, tensor_overrides=_overrides(a.override_tensor), use_mmap=a.use_mmap,
                 mtp_device=None if a.no_mtp else a.mtp_device, rpc_servers=_rpc(a.rpc), max_queue=a.queue_size,
                 alias=a.alias, log_level="debug" if a.verbose else "info", step_delay=a.debug_step_delay,
                 batching=a.batching)


def cmd_bench(a: argparse.Namespace) -> int:
    """Plain vs fixed-k vs adaptive MTP on one model, interleaved rounds, decode tokens/s."""
    import statistics

    from . import Model, SessionConfig, SpecConfig

    settings = [("plain", None)] + [(f"k={k}", SpecConfig(k, a.draft_p_min, adaptive=False)) for k in a.ks]
    settings.append(("adaptive", SpecConfig(max(a.ks), a.draft_p_min)))
    rates: dict[str, list[float]] = {name: [] for name, _ in settings}
    acc: dict[str, list[float]] = {}
    with Model(a.model, n_gpu_layers=a.n_gpu_layers, tensor_overrides=_overrides(a.override_tensor), mtp_path=a.mtp_path,
               use_mmap=a.use_mmap, mtp_device=a.mtp_device, rpc_servers=_rpc(a.rpc),
               session_defaults=SessionConfig(n_ctx=a.ctx_size, n_threads=a.threads)) as m:
        m.generate(a.prompt, 8, mtp=False)  # warm-up
        for _ in range(a.repeats):  # A/B/C/... per round, not all A then all B
            for name, spec in settings:
                r = m.generate(a.prompt, a.n_predict, spec=spec, mtp=spec is not None)
                rates[name].append(r.stats.decode_tokens_per_second)
                acc[name] = r.stats.acceptance
    base = statistics.median(rates["plain"])
    print(f"{'setting':10s} {'min t/s':>8s} {'med t/s':>8s} {'x plain':>8s}  acceptance by position")
    for name, _ in settings:
        lo, med = min(rates[name]), statistics.median(rates[name])
        pos = " ".join(f"{x:.2f}" for x in acc.get(name, [])) or "-"
        print(f"{name:10s} {lo:8.1f} {med:8.1f} {med / base:8.2f}  {pos}")
    return 0


def cmd_inspect(a: argparse.Namespace) -> int:
    from . import inspect

    s = inspect(a.file)
    if a.json:
        print(json.dumps(s.__dict__, indent=2))
        return 0
    print(f"file:          {s.path}")
    print(f"architecture:  {s.arch}  ({s.name}){'' if s.supported else '  -- not supported by mtpllama'}")
    print(f"kind:          {s.kind or '-'}")
    print(f"attention:     {s.attention or '-'}")
    print(f"blocks:        {s.block_count} ({s.block_count - s.n_layer_nextn} trunk + {s.n_layer_nextn} NextN declared)")
    print(f"tensors:       {s.n_tensors} ({s.n_tensors_nextn} in NextN blocks, {s.nextn_bytes / 2**20:.1f} MiB)")
    print(f"MTP usable:    {'yes' if s.has_mtp else 'no: ' + s.mtp_problem}")
    if s.has_mtp and a.tensors:
        import gguf

        first = s.block_count - s.n_layer_nextn
        for t in gguf.GGUFReader(s.path).tensors:
            blk = t.name.split(".")[1] if t.name.startswith("blk.") else ""
            if blk.isdigit() and int(blk) >= first:
                print(f"  {t.name:48s} {t.tensor_type.name:6s} {str([int(x) for x in t.shape]):22s} "
                      f"{int(t.n_bytes) / 1024:10.1f} KiB")
    return 0


def cmd_extract_mtp(a: argparse.Namespace) -> int:
    from .split import extract_mtp, extract_trunk

    out = (extract_trunk if a.trunk_only else extract_mtp)(a.file, a.output, force=a.force)
    print(f"wrote {out} ({'trunk-only' if a.trunk_only else 'MTP-only'}, {out.stat().st_size / 2**20:.1f} MiB)")
    return 0


def cmd_demo(a: argparse.Namespace) -> int:
    """Complete Python with the default model: plain decoding, MTP with 3 drafts, and MTP with the
    adaptive defaults, interleaved; print the completion, the acceptance per position, the speeds,
    and what the engine measured that explains them."""
    import statistics

    from . import Model, SamplingConfig, SessionConfig, SpecConfig
    from .default_model import DEMO_PROMPT, default_model_path

    path = default_model_path()
    # greedy with a mild repetition penalty: a 10M-parameter model repeats itself otherwise
    sampling = SamplingConfig(temperature=0.0, repeat_penalty=1.2, penalty_last_n=64)
    settings = {"plain": None, "MTP, 3 drafts": SpecConfig(draft_max=3, adaptive=False),
                "MTP, adaptive (defaults)": SpecConfig()}
    with Model(str(path), session_defaults=SessionConfig(n_threads=a.threads)) as model:
        print(f"model: {path.name} ({model.info.name}, {model.info.n_params / 1e6:.1f}M parameters, "
              f"{a.threads} thread{'s' if a.threads != 1 else ''})")
        sessions = {name: model.session(mtp=spec is not None) for name, spec in settings.items()}
        rates: dict[str, list[float]] = {name: [] for name in settings}
        last = {}
        for _ in range(a.repeats):  # interleaved, so that every setting sees the same machine
            for name, spec in settings.items():
                sessions[name].reset()
                r = sessions[name].generate(DEMO_PROMPT, a.n_predict, spec=spec, sampling=sampling)
                rates[name].append(r.stats.decode_tokens_per_second)
                last[name] = r
        for s in sessions.values():
            s.close()
        print("completion:\n" + "-" * 60 + "\n" + DEMO_PROMPT + last["plain"].text + "\n" + "-" * 60)
        fixed = last["MTP, 3 drafts"].stats
        print("acceptance by draft position (3 drafts a step): "
              + ", ".join(f"{i + 1}: {x:.0%}" for i, x in enumerate(fixed.acceptance))
              + f"; {fixed.mean_tokens_per_step:.2f} tokens per step")
        base = statistics.median(rates["plain"])
        for name in settings:
            med = statistics.median(rates[name])
            print(f"{name:26s} {med:8.0f} tok/s  {med / max(base, 1e-9):.2f}x")
        identical = all(r.tokens == last["plain"].tokens for r in last.values())
        print(f"(decode speed, medians of {a.repeats} runs); MTP output identical to plain: {identical}")
        _explain(last["MTP, adaptive (defaults)"].stats)
    return 0


def _explain(st) -> None:
    """What the controller measured, and what it made of it."""
    v = st.est_verify
    if 0 in v and len(v) > 1:
        costs = ", ".join(f"{k + 1} rows {v[k] / v[0]:.1f}x" for k in sorted(v) if k > 0)
        print(f"measured: a trunk pass over 1 row takes {v[0] * 1e3:.2f} ms; over {costs}; the MTP head "
              f"{st.est_head * 1e3:.2f} ms a call")
    steps = sum(st.drafts_per_step)
    if steps:
        plain = st.drafts_per_step[0] / steps
        print(f"the defaults verified drafts in {1 - plain:.0%} of their steps in the last run, plain steps in the "
              f"rest: a draft pays when its chance of acceptance exceeds what its row costs in plain steps")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="mtpllama", description=__doc__)
    ap.add_argument("-n", "--n-predict", type=int, default=96, help="tokens to generate (demo)")
    sub = ap.add_subparsers(dest="cmd")
    g = sub.add_parser("generate", help="generate text")
    _add_model_args(g)
    _spec_args(g)
    g.add_argument("-p", "--prompt", help="prompt (default: stdin)")
    g.add_argument("-n", "--n-predict", type=int, default=128)
    g.set_defaults(func=cmd_generate)
    b = sub.add_parser("bench", help="plain vs fixed-k vs adaptive MTP on a model (interleaved rounds)")
    _add_model_args(b)
    b.add_argument("-p", "--prompt", default="def fibonacci(n):\n")
    b.add_argument("-n", "--n-predict", type=int, default=128)
    b.add_argument("-r", "--repeats", type=int, default=3)
    b.add_argument("--ks", type=int, nargs="+", default=[1, 2, 3, 4])
    b.add_argument("--draft-p-min", type=float, default=0.0)
    b.set_defaults(func=cmd_bench)
    i = sub.add_parser("inspect", help="describe a GGUF file and its MTP block")
    i.add_argument("file")
    i.add_argument("--json", action="store_true")
    i.add_argument("--tensors", action="store_true", help="list the NextN block's tensors")
    i.set_defaults(func=cmd_inspect)
    x = sub.add_parser("extract-mtp", help="write the MTP-only (or, --trunk-only, the trunk-only) half of a full GGUF")
    x.add_argument("file")
    x.add_argument("-o", "--output", required=True)
    x.add_argument("--trunk-only", action="store_true", help="write the trunk without the NextN block instead")
    x.add_argument("--force", action="store_true", help="overwrite an existing output file")
    x.set_defaults(func=cmd_extract_mtp)
    v = sub.add_parser("serve", help="serve the model over an OpenAI-compatible HTTP API (needs the server extra)")
    _add_model_args(v)
    _spec_args(v)
    v.add_argument("--host", default="127.0.0.1")
    v.add_argument("--port", type=int, default=8080)
    v.add_argument("-np", "--parallel", type=int, default=1, help="sessions: requests generated at once")
    v.add_argument("--batching", choices=["exact", "batched", "off"], default=None,
                   help="exact (default): requests generating at once share one trunk pass per step, each reply "
                        "as if alone; batched: the same with llama.cpp's batched kernels for big passes; off: a "
                        "trunk pass per request (the default for recurrent trunks, which groups do not support)")
    v.add_argument("--queue-size", type=int, default=16,
                   help="requests that may wait for a session; more are refused with 503")
    v.add_argument("--api-key", help="require 'Authorization: Bearer KEY' (default: $MTPLLAMA_API_KEY, if set)")
    v.add_argument("--alias", help="the model id /v1/models lists (default: the file's name)")
    v.add_argument("--debug-step-delay", type=float, default=0.0, help=argparse.SUPPRESS)  # tests: slow steps down
    v.set_defaults(func=cmd_serve)
    d = sub.add_parser("demo", help="run the default model with and without MTP (the default command)")
    d.add_argument("-n", "--n-predict", type=int, default=96)
    d.add_argument("-r", "--repeats", type=int, default=3)
    d.add_argument("-t", "--threads", type=int, default=1)
    d.set_defaults(func=cmd_demo)
    a = ap.parse_args(argv)
    if getattr(a, "verbose", False):
        from . import _lib
        logging.basicConfig(level=logging.INFO)
        _lib.route_log(logging.INFO)
    if a.cmd is None:
        a.func, a.repeats, a.threads = cmd_demo, 3, 1
    try:
        return a.func(a)
    except Exception as e:  # a CLI reports errors, it does not dump tracebacks
        from .errors import MtpllamaError
        if isinstance(e, (MtpllamaError, OSError, ValueError)):
            print(f"mtpllama: error: {e}", file=sys.stderr)
            return 1
        raise


if __name__ == "__main__":
    sys.exit(main())
