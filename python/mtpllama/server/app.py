"""The HTTP layer (Starlette): OpenAI-compatible routes over an engine (engine.SessionPool).

    GET  /health                  no key needed
    GET  /metrics                 Prometheus text
    GET  /v1/models
    POST /v1/chat/completions     JSON, or SSE with "stream": true
    POST /v1/completions          JSON, or SSE with "stream": true

(also without the /v1 prefix, as llama-server).  Errors are OpenAI-style bodies
{"error": {"message", "type", "param", "code"}} with a 4xx/5xx status.
"""
from __future__ import annotations

import asyncio
import hmac
import json
import time
from dataclasses import dataclass, field

from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse, Response, StreamingResponse
from starlette.routing import Route

from . import protocol
from .protocol import ApiError

POLL_S = 0.05          # how often a waiting non-streaming request checks that its client is still there
KEEPALIVE_S = 15.0     # an SSE comment after this long without an event


@dataclass
class ServerConfig:
    model_id: str
    """The id /v1/models lists; requests may name it (or any of aliases), or no model."""
    aliases: tuple[str, ...] = ()
    api_key: str | None = None
    max_body_bytes: int = 16 << 20
    created: int = field(default_factory=lambda: int(time.time()))


class _ClientGone(Exception):
    pass


def _error(e: ApiError) -> JSONResponse:
    headers = {"Retry-After": "1"} if e.status == 503 else None
    return JSONResponse(e.body(), status_code=e.status, headers=headers)


def _sse(obj: dict) -> str:
    return "data: " + json.dumps(obj, ensure_ascii=False) + "\n\n"


def create_app(engine, config: ServerConfig) -> Starlette:
    metrics = engine.metrics
    names = {config.model_id, *config.aliases}

    def check_auth(request: Request) -> None:
        if config.api_key is None:
            return
        got = request.headers.get("authorization", "")
        key = got[7:].strip() if got[:7].lower() == "bearer " else request.headers.get("x-api-key", "")
        if not key or not hmac.compare_digest(key.encode(), config.api_key.encode()):
            raise ApiError(401, "invalid or missing API key (send 'Authorization: Bearer KEY')", code="invalid_api_key")

    def check_model(model: str | None) -> None:
        if model is not None and model not in names:
            raise ApiError(404, f"the model '{model}' does not exist: this server serves '{config.model_id}'",
                           param="model", code="model_not_found")

    async def read_json(request: Request):
        size, chunks = 0, []
        async for chunk in request.stream():
            size += len(chunk)
            if size > config.max_body_bytes:
                raise ApiError(413, f"the request body exceeds {config.max_body_bytes} bytes")
            chunks.append(chunk)
        raw = b"".join(chunks)
        if not raw.strip():
            raise protocol.bad("the request body is empty: send a JSON object")
        try:
            return json.loads(raw)
        except (ValueError, UnicodeDecodeError) as e:
            raise protocol.bad(f"the request body is not valid JSON: {e}") from e

    async def wait_result(job, request: Request):
        loop = asyncio.get_running_loop()
        checked = loop.time()
        while True:
            try:
                kind, value = await asyncio.wait_for(job.events.get(), POLL_S)
            except asyncio.TimeoutError:
                kind = value = None
            # every POLL_S, whether events come or not (a reply's deltas come every step)
            if loop.time() - checked >= POLL_S or kind is None:
                checked = loop.time()
                if await request.is_disconnected():
                    job.cancel()
                    raise _ClientGone()
            if kind == "done":
                return value
            if kind == "error":
                raise value

    async def next_event(job):
        try:
            return await asyncio.wait_for(job.events.get(), KEEPALIVE_S)
        except asyncio.TimeoutError:
            return None

    # -- routes ----------------------------------------------------------------------------
    async def health(request: Request) -> Response:
        return JSONResponse({"status": "ok", "batching": engine.batching})

    async def get_metrics(request: Request) -> Response:
        try:
            check_auth(request)
        except ApiError as e:
            return _error(e)
        return PlainTextResponse(metrics.render(engine.snapshot()), media_type="text/plain; version=0.0.4")

    async def models(request: Request) -> Response:
        try:
            check_auth(request)
        except ApiError as e:
            metrics.request("models", e.status)
            return _error(e)
        metrics.request("models", 200)
        return JSONResponse({"object": "list", "data": [
            {"id": config.model_id, "object": "model", "created": config.created, "owned_by": "mtpllama"}]})

    async def generate(request: Request, endpoint: str) -> Response:
        prepared = None
        try:
            check_auth(request)
            body = await read_json(request)
            req = protocol.parse_chat(body) if endpoint == "chat" else protocol.parse_completion(body)
            check_model(req.model)
            prep = engine.prepare_chat if endpoint == "chat" else engine.prepare_completion
            prepared = await run_in_threadpool(prep, req)
            job = engine.submit(prepared)
        except ApiError as e:
            if prepared is not None and prepared.prompt is not None:
                prepared.prompt.close()
            metrics.request(endpoint, e.status)
            return _error(e)
        rid = protocol.new_id("chatcmpl-" if endpoint == "chat" else "cmpl-")
        model = req.model or config.model_id
        if req.stream:
            metrics.request(endpoint, 200)
            return StreamingResponse(events(job, endpoint, rid, model, req.include_usage), media_type="text/event-stream",
                                     headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})
        try:
            result = await wait_result(job, request)
        except ApiError as e:
            metrics.request(endpoint, e.status)
            return _error(e)
        except _ClientGone:
            metrics.request(endpoint, 499)
            return Response(status_code=499)
        metrics.request(endpoint, 200)
        if endpoint == "chat":
            if result.finish_reason == "cancelled":
                result.finish_reason = "length"
            return JSONResponse(protocol.chat_response(rid, model, result))
        return JSONResponse(protocol.completion_response(rid, model, result.text, result.stop_reason,
                                                         result.prompt_tokens, len(result.tokens), result.stats))

    async def events(job, endpoint: str, rid: str, model: str, include_usage: bool):
        """The SSE stream of a job: chat deltas ("delta" events) or completion text ("text" events),
        then the final chunk with the extension field, usage if asked for, and [DONE]."""
        created = int(time.time())
        chat = endpoint == "chat"
        try:
            if chat:
                yield _sse(protocol.chat_chunk(rid, model, created, {"role": "assistant", "content": None}))
            while True:
                ev = await next_event(job)
                if ev is None:
                    yield ": keep-alive\n\n"
                    continue
                kind, value = ev
                if kind == "delta":
                    yield _sse(protocol.chat_chunk(rid, model, created, value.to_dict()))
                elif kind == "text":
                    yield _sse(protocol.completion_chunk(rid, model, created, value))
                elif kind == "done":
                    if chat:
                        finish = "length" if value.finish_reason == "cancelled" else value.finish_reason
                        last = protocol.chat_chunk(rid, model, created, {}, finish)
                    else:
                        last = protocol.completion_chunk(rid, model, created, "", protocol.finish_reason(value.stop_reason))
                    last["mtpllama"] = protocol.extension(value.stats)
                    yield _sse(last)
                    if include_usage:
                        yield _sse({"id": rid, "object": "chat.completion.chunk" if chat else "text_completion",
                                    "created": created, "model": model, "choices": [],
                                    "usage": protocol.usage(value.prompt_tokens, len(value.tokens), value.stats)})
                    yield "data: [DONE]\n\n"
                    return
                elif kind == "error":
                    yield _sse(value.body())
                    return
        finally:
            job.cancel()  # the client went away (or the stream ended: then it changes nothing)

    async def chat_completions(request: Request) -> Response:
        return await generate(request, "chat")

    async def completions(request: Request) -> Response:
        return await generate(request, "completion")

    async def http_error(request: Request, exc: HTTPException) -> Response:
        what = "no such route" if exc.status_code == 404 else exc.detail
        return _error(ApiError(exc.status_code, f"{request.method} {request.url.path}: {what}"))

    async def internal_error(request: Request, exc: Exception) -> Response:
        return _error(ApiError(500, f"internal error: {type(exc).__name__}: {exc}"))

    routes = [
        Route("/health", health, methods=["GET"]),
        Route("/v1/health", health, methods=["GET"]),
        Route("/metrics", get_metrics, methods=["GET"]),
        Route("/v1/models", models, methods=["GET"]),
        Route("/models", models, methods=["GET"]),
        Route("/v1/chat/completions", chat_completions, methods=["POST"]),
        Route("/chat/completions", chat_completions, methods=["POST"]),
        Route("/v1/completions", completions, methods=["POST"]),
        Route("/completions", completions, methods=["POST"]),
    ]
    return Starlette(routes=routes, exception_handlers={HTTPException: http_error, Exception: internal_error})
