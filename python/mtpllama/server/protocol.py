"""The OpenAI-compatible wire format: request bodies checked into typed requests (ApiError with an
OpenAI-style error body where they are wrong), and response bodies and stream chunks built from
results.  No web framework and no engine here: the table of bad requests is this module's."""
from __future__ import annotations

import math
import secrets
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from ..chat import TOOL_CHOICES, ChatResult
from ..config import SamplingConfig

# llama-server's sampling defaults (common_params_sampling), used where a request names none
DEFAULT_SAMPLING = dict(temperature=0.8, top_k=40, top_p=0.95, min_p=0.05)
MAX_STOP_STRINGS = 16


class ApiError(Exception):
    """A request that cannot be served, with its HTTP status and OpenAI-style error body."""

    TYPES = {400: "invalid_request_error", 401: "authentication_error", 404: "not_found_error",
             405: "invalid_request_error", 413: "invalid_request_error", 429: "rate_limit_error",
             500: "server_error", 501: "not_supported_error", 503: "unavailable_error"}

    def __init__(self, status: int, message: str, *, param: str | None = None, code: str | None = None,
                 type: str | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.param = param
        self.code = code
        self.type = type or self.TYPES.get(status, "invalid_request_error")

    def body(self) -> dict:
        return {"error": {"message": self.message, "type": self.type, "param": self.param,
                          "code": self.code if self.code is not None else self.status}}


def bad(message: str, param: str | None = None, code: str | None = None) -> ApiError:
    return ApiError(400, message, param=param, code=code)


def unsupported(param: str, why: str) -> ApiError:
    return ApiError(400, f"'{param}' {why} is not supported by mtpllama", param=param, code="unsupported_parameter")


# --- typed fields ---------------------------------------------------------------------------
def _number(body: Mapping, key: str, lo: float, hi: float, *, integer: bool = False, lo_open: bool = False):
    v = body.get(key)
    if v is None:
        return None
    if isinstance(v, bool) or not isinstance(v, (int, float)) or (integer and not isinstance(v, int)):
        raise bad(f"'{key}' must be {'an integer' if integer else 'a number'}, got {type(v).__name__}", key)
    if isinstance(v, float) and not math.isfinite(v):
        raise bad(f"'{key}' must be finite", key)
    if not (lo < v if lo_open else lo <= v) or not v <= hi:
        raise bad(f"'{key}' must be in {'(' if lo_open else '['}{lo}, {hi}], got {v}", key)
    return v


def _bool(body: Mapping, key: str, default: bool) -> bool:
    v = body.get(key)
    if v is None:
        return default
    if not isinstance(v, bool):
        raise bad(f"'{key}' must be a boolean", key)
    return v


def _stops(body: Mapping) -> list[str]:
    v = body.get("stop")
    if v is None:
        return []
    if isinstance(v, str):
        return [v]
    if not isinstance(v, list) or not all(isinstance(s, str) for s in v):
        raise bad("'stop' must be a string or a list of strings", "stop")
    if len(v) > MAX_STOP_STRINGS:
        raise bad(f"'stop' holds at most {MAX_STOP_STRINGS} strings", "stop")
    return list(v)


def _sampling(body: Mapping) -> SamplingConfig:
    kw: dict[str, Any] = dict(DEFAULT_SAMPLING)
    for key, lo, hi, integer, lo_open in (("temperature", 0.0, 100.0, False, False), ("top_p", 0.0, 1.0, False, True),
                                          ("top_k", 0, 2**31 - 1, True, False), ("min_p", 0.0, 1.0, False, False),
                                          ("presence_penalty", -2.0, 2.0, False, False),
                                          ("frequency_penalty", -2.0, 2.0, False, False),
                                          ("repeat_penalty", 0.0, 100.0, False, True),
                                          ("repeat_last_n", -1, 2**31 - 1, True, False)):
        v = _number(body, key, lo, hi, integer=integer, lo_open=lo_open)
        if v is not None:
            kw["penalty_last_n" if key == "repeat_last_n" else key] = v
    seed = body.get("seed")
    if seed is None or seed == -1:
        kw["seed"] = secrets.randbits(63)  # llama-server draws one too (LLAMA_DEFAULT_SEED)
    else:
        kw["seed"] = _number(body, "seed", 0, 2**64 - 1, integer=True)
    return SamplingConfig(**kw)


def _max_tokens(body: Mapping) -> int | None:
    """max_tokens, max_completion_tokens or llama-server's n_predict; None: to the end of the turn or
    of the context."""
    for key in ("max_completion_tokens", "max_tokens", "n_predict"):
        if body.get(key) is not None:
            if key == "n_predict" and body[key] == -1:
                return None
            return _number(body, key, 1, 2**31 - 1, integer=True)
    return None


def _unsupported(body: Mapping) -> None:
    """Fields mtpllama recognises but cannot honour: refused rather than silently ignored."""
    n = body.get("n")
    if n is not None and n != 1:
        raise unsupported("n", "other than 1")
    if body.get("logprobs") not in (None, False, 0):
        raise unsupported("logprobs", "(token log-probabilities)")
    if body.get("top_logprobs") is not None:
        raise unsupported("top_logprobs", "(token log-probabilities)")
    if body.get("logit_bias"):
        raise unsupported("logit_bias", "(a non-empty bias)")
    if body.get("grammar") or body.get("json_schema"):
        raise unsupported("grammar", "(grammar-constrained sampling)")
    rf = body.get("response_format")
    if rf is not None:
        if not isinstance(rf, Mapping):
            raise bad("'response_format' must be an object", "response_format")
        if rf.get("type", "text") != "text":
            raise unsupported("response_format", f"of type {rf.get('type')!r} (grammar-constrained sampling)")


@dataclass
class GenRequest:
    model: str | None
    max_tokens: int | None
    stream: bool
    include_usage: bool
    stop: list[str]
    sampling: SamplingConfig


@dataclass
class ChatRequest(GenRequest):
    messages: list = field(default_factory=list)
    tools: list | None = None
    tool_choice: str = "auto"
    parallel_tool_calls: bool | None = None
    chat_template_kwargs: dict | None = None
    reasoning_effort: str | None = None


@dataclass
class CompletionRequest(GenRequest):
    prompt: str | list[int] = ""


def _common(body: Any) -> dict:
    if not isinstance(body, Mapping):
        raise bad("the request body must be a JSON object")
    _unsupported(body)
    model = body.get("model")
    if model is not None and not isinstance(model, str):
        raise bad("'model' must be a string", "model")
    so = body.get("stream_options")
    if so is not None and not isinstance(so, Mapping):
        raise bad("'stream_options' must be an object", "stream_options")
    stream = _bool(body, "stream", False)
    return dict(model=model, max_tokens=_max_tokens(body), stream=stream,
                include_usage=_bool(so or {}, "include_usage", False), stop=_stops(body), sampling=_sampling(body))


def parse_chat(body: Any) -> ChatRequest:
    common = _common(body)
    messages = body.get("messages")
    if messages is None:
        raise bad("'messages' is required", "messages")
    if not isinstance(messages, list) or not messages:
        raise bad("'messages' must be a non-empty array of messages", "messages")
    for i, m in enumerate(messages):
        if not isinstance(m, Mapping):
            raise bad(f"messages[{i}] must be an object", "messages")
        if not isinstance(m.get("role"), str):
            raise bad(f"messages[{i}] needs a 'role' string", "messages")
    tools = body.get("tools")
    if tools is not None and (not isinstance(tools, list) or not all(isinstance(t, Mapping) for t in tools)):
        raise bad("'tools' must be an array of tool objects", "tools")
    tool_choice = body.get("tool_choice", "auto")
    if tool_choice is None:
        tool_choice = "auto"
    if isinstance(tool_choice, Mapping) or tool_choice == "required":
        raise unsupported("tool_choice", "forcing a tool call (grammar-constrained sampling)")
    if tool_choice not in TOOL_CHOICES:
        raise bad(f"'tool_choice' must be one of {list(TOOL_CHOICES)}, got {tool_choice!r}", "tool_choice")
    kwargs = body.get("chat_template_kwargs")
    if kwargs is not None and not isinstance(kwargs, Mapping):
        raise bad("'chat_template_kwargs' must be an object", "chat_template_kwargs")
    effort = body.get("reasoning_effort")
    if effort is not None and not isinstance(effort, str):
        raise bad("'reasoning_effort' must be a string", "reasoning_effort")
    ptc = body.get("parallel_tool_calls")
    if ptc is not None and not isinstance(ptc, bool):
        raise bad("'parallel_tool_calls' must be a boolean", "parallel_tool_calls")
    return ChatRequest(**common, messages=list(messages), tools=list(tools) if tools else None, tool_choice=tool_choice,
                       parallel_tool_calls=ptc, chat_template_kwargs=dict(kwargs) if kwargs is not None else None,
                       reasoning_effort=effort)


def parse_completion(body: Any) -> CompletionRequest:
    common = _common(body)
    for key, why in (("echo", "(echoing the prompt)"), ("suffix", "(insertion)")):
        if body.get(key):
            raise unsupported(key, why)
    best_of = body.get("best_of")
    if best_of is not None and best_of != 1:
        raise unsupported("best_of", "other than 1")
    prompt = body.get("prompt")
    if prompt is None:
        raise bad("'prompt' is required", "prompt")
    if isinstance(prompt, list) and len(prompt) == 1 and isinstance(prompt[0], str):
        prompt = prompt[0]
    if isinstance(prompt, list):
        if not prompt or not all(isinstance(t, int) and not isinstance(t, bool) for t in prompt):
            raise bad("'prompt' must be a string, or one array of token ids (batches of prompts are not supported)",
                      "prompt")
    elif not isinstance(prompt, str):
        raise bad("'prompt' must be a string or an array of token ids", "prompt")
    if not prompt:
        raise bad("'prompt' must not be empty", "prompt")
    return CompletionRequest(**common, prompt=prompt)


# --- responses --------------------------------------------------------------------------------
def new_id(prefix: str) -> str:
    return prefix + secrets.token_hex(12)


def usage(prompt_tokens: int, completion_tokens: int, stats) -> dict:
    return {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens,
            "total_tokens": prompt_tokens + completion_tokens,
            "prompt_tokens_details": {"cached_tokens": int(getattr(stats, "cached_tokens", 0))}}


def extension(stats) -> dict:
    """The "mtpllama" field of a response: how MTP drafting went for it."""
    return {"drafted": list(stats.drafted), "accepted": list(stats.accepted),
            "acceptance": [round(a, 6) for a in stats.acceptance],
            "mean_tokens_per_step": round(stats.mean_tokens_per_step, 6),
            "decode_tokens_per_second": round(stats.decode_tokens_per_second, 3),
            "cached_tokens": stats.cached_tokens, "reevaluated_tokens": stats.reevaluated_tokens}


def finish_reason(stop_reason: str) -> str:
    return "stop" if stop_reason in ("eos", "stop") else "length"


def chat_response(rid: str, model: str, result: ChatResult) -> dict:
    return {"id": rid, "object": "chat.completion", "created": int(time.time()), "model": model,
            "choices": [{"index": 0, "message": result.message.to_dict(), "finish_reason": result.finish_reason}],
            "usage": usage(result.prompt_tokens, len(result.tokens), result.stats), "mtpllama": extension(result.stats)}


def chat_chunk(rid: str, model: str, created: int, delta: dict, finish: str | None = None) -> dict:
    return {"id": rid, "object": "chat.completion.chunk", "created": created, "model": model,
            "choices": [{"index": 0, "delta": delta, "finish_reason": finish}]}


def completion_response(rid: str, model: str, text: str, stop_reason: str, n_prompt: int, n_tokens: int, stats) -> dict:
    return {"id": rid, "object": "text_completion", "created": int(time.time()), "model": model,
            "choices": [{"index": 0, "text": text, "logprobs": None, "finish_reason": finish_reason(stop_reason)}],
            "usage": usage(n_prompt, n_tokens, stats), "mtpllama": extension(stats)}


def completion_chunk(rid: str, model: str, created: int, text: str, finish: str | None = None) -> dict:
    return {"id": rid, "object": "text_completion", "created": created, "model": model,
            "choices": [{"index": 0, "text": text, "logprobs": None, "finish_reason": finish}]}
