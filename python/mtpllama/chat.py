"""Chat: messages rendered with the model's chat template, and generated text parsed back into the
assistant's message (reasoning, content, tool calls), both by llama.cpp's own chat code inside the
engine (csrc/chat_format.cpp: common_chat_templates_apply and common_chat_parse, as llama-server
runs them).  Messages, tools and parsed replies cross the C API as OpenAI-style JSON.

Session.chat / Session.chat_stream (model.py) generate with these pieces; this module knows nothing
of sessions.
"""
from __future__ import annotations

import json
import secrets
import string
from collections import deque
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from . import _lib
from ._lib import _Closeable, ffi, lib
from .errors import ChatParseError

TOOL_CHOICES = ("auto", "none")
"""tool_choice values the engine honours; "required" and a named function need grammar-constrained
sampling, which mtpllama does not have."""


REASONING_FORMATS = ("deepseek", "auto", "none", "deepseek-legacy")
"""How the reasoning is split off (llama-server's --reasoning-format; "deepseek" is its default and
ours: reasoning_content holds it; "none" leaves it in the content)."""


@dataclass(frozen=True)
class ToolCall:
    name: str
    arguments: str
    """The arguments as JSON text, as llama.cpp's parser of the model's format returns them."""
    id: str = ""

    def to_dict(self) -> dict:
        return {"id": self.id, "type": "function", "function": {"name": self.name, "arguments": self.arguments}}


@dataclass(frozen=True)
class ChatMessage:
    """An assistant message as llama.cpp's chat parser returns it."""

    role: str = "assistant"
    content: str = ""
    reasoning_content: str = ""
    """The model's reasoning ("thinking"), split off the content by the format's parser."""
    tool_calls: tuple[ToolCall, ...] = ()

    def to_dict(self) -> dict:
        """OpenAI's message shape, as llama-server writes it (reasoning_content and tool_calls only
        when there are some)."""
        d: dict[str, Any] = {"role": self.role, "content": self.content}
        if self.reasoning_content:
            d["reasoning_content"] = self.reasoning_content
        if self.tool_calls:
            d["tool_calls"] = [t.to_dict() for t in self.tool_calls]
        return d

    @property
    def empty(self) -> bool:
        return not (self.content or self.reasoning_content or self.tool_calls)


@dataclass(frozen=True)
class ToolCallDelta:
    index: int
    id: str = ""
    """Set where the call first appears (with its name)."""
    name: str = ""
    arguments: str = ""
    """The next piece of the arguments' JSON text."""


@dataclass(frozen=True)
class ChatDelta:
    """One change of the streamed message, as llama.cpp's common_chat_msg_diff: a piece of the
    reasoning, a piece of the content, or a piece of one tool call."""

    reasoning_content: str = ""
    content: str = ""
    tool_call: ToolCallDelta | None = None

    def to_dict(self) -> dict:
        """The "delta" of an OpenAI chat.completion.chunk, as llama-server writes it."""
        d: dict[str, Any] = {}
        if self.reasoning_content:
            d["reasoning_content"] = self.reasoning_content
        if self.content:
            d["content"] = self.content
        t = self.tool_call
        if t is not None:
            call: dict[str, Any] = {"index": t.index}
            if t.id:
                call["id"] = t.id
                call["type"] = "function"
            if t.name or t.arguments:
                fn: dict[str, str] = {}
                if t.name:
                    fn["name"] = t.name
                if t.arguments:
                    fn["arguments"] = t.arguments
                call["function"] = fn
            d["tool_calls"] = [call]
        return d


@dataclass
class ChatResult:
    message: ChatMessage
    finish_reason: str
    """OpenAI's: "stop" (end of turn or a stop string), "tool_calls" (ended with tool calls),
    "length" (max_tokens or the context), or "cancelled" (Session.cancel())."""
    stop_reason: str
    """The engine's: 'eos', 'stop', 'length', 'context' or 'cancelled' (see GenerationResult)."""
    text: str
    """The generated text as the model wrote it (what the parser read)."""
    tokens: list[int]
    prompt: str
    """The rendered prompt."""
    prompt_tokens: int
    stats: Any
    """GenerationStats of the generation (cached_tokens: prompt tokens the session's caches held)."""
    parse_error: str | None = None
    """Where the final text did not match the format's parser: why (the message then holds the raw
    text as its content)."""


def finish_reason(stop_reason: str, message: ChatMessage) -> str:
    if stop_reason in ("eos", "stop"):
        return "tool_calls" if message.tool_calls else "stop"
    return "cancelled" if stop_reason == "cancelled" else "length"


def build_request(messages: Sequence[Mapping], *, tools: Sequence[Mapping] | None = None, tool_choice: str = "auto",
                  thinking: bool | None = None, chat_template_kwargs: Mapping[str, Any] | None = None,
                  reasoning_effort: str | None = None, parallel_tool_calls: bool | None = None,
                  add_generation_prompt: bool = True, reasoning_format: str | None = None) -> dict:
    """The engine's chat request (see mtpl_chat_render in csrc/mtpllama.h) with the Python types
    checked; the messages' contents are checked by llama.cpp's own parser of OpenAI messages."""
    if isinstance(messages, (str, bytes, Mapping)) or not isinstance(messages, Sequence):
        raise TypeError("messages must be a list of message dicts ({'role': ..., 'content': ...})")
    if not messages:
        raise ValueError("messages must not be empty")
    if not all(isinstance(m, Mapping) for m in messages):
        raise TypeError("every message must be a dict with 'role' and 'content'")
    req: dict[str, Any] = {"messages": [dict(m) for m in messages], "add_generation_prompt": bool(add_generation_prompt)}
    if tools is not None:
        if isinstance(tools, (str, bytes, Mapping)) or not isinstance(tools, Sequence) or \
                not all(isinstance(t, Mapping) for t in tools):
            raise TypeError("tools must be a list of tool dicts ({'type': 'function', 'function': {...}})")
        if tools:
            req["tools"] = [dict(t) for t in tools]
    if tool_choice not in TOOL_CHOICES:
        raise ValueError(f"tool_choice must be one of {TOOL_CHOICES} (mtpllama cannot force a tool call: that needs "
                         f"grammar-constrained sampling), got {tool_choice!r}")
    req["tool_choice"] = tool_choice
    if thinking is not None:
        if not isinstance(thinking, bool):
            raise TypeError("thinking must be True, False or None (the template's default)")
        req["enable_thinking"] = thinking
    if chat_template_kwargs is not None:
        if not isinstance(chat_template_kwargs, Mapping):
            raise TypeError("chat_template_kwargs must be a dict")
        req["chat_template_kwargs"] = dict(chat_template_kwargs)
    if reasoning_effort is not None:
        if not isinstance(reasoning_effort, str):
            raise TypeError("reasoning_effort must be a str")
        req["reasoning_effort"] = reasoning_effort
    if parallel_tool_calls is not None:
        if not isinstance(parallel_tool_calls, bool):
            raise TypeError("parallel_tool_calls must be a bool")
        req["parallel_tool_calls"] = parallel_tool_calls
    if reasoning_format is not None:
        if reasoning_format not in REASONING_FORMATS:
            raise ValueError(f"reasoning_format must be one of {REASONING_FORMATS}, got {reasoning_format!r}")
        req["reasoning_format"] = reasoning_format
    return req


def _text(ptr, n) -> str:
    return bytes(ffi.unpack(ptr[0], n[0])).decode("utf-8", "replace")


class ChatPrompt(_Closeable):
    """A chat request rendered by the model's template (Model.chat_prompt): the prompt text, what
    the rendering says about the reply (generation prompt, format, thinking, extra stop strings),
    and the parser of the reply.  close() frees it (idempotent); one thread at a time."""

    def __init__(self, model_handle, request: dict) -> None:
        self._handle = ffi.NULL
        data = json.dumps(request, ensure_ascii=False).encode("utf-8")
        out = ffi.new("mtpl_chat **")
        _lib.check(lib.mtpl_chat_render(model_handle, data, out), "chat")
        self._handle = out[0]
        self._p = ffi.new("const char **")
        self._n = ffi.new("int64_t *")
        _lib.check(lib.mtpl_chat_info(self._handle, self._p, self._n), "chat")
        info = json.loads(_text(self._p, self._n))
        self.info: dict = info
        self.prompt: str = info["prompt"]
        self.generation_prompt: str = info["generation_prompt"]
        self.format: str = info["format"]
        self.enable_thinking: bool = info["enable_thinking"]
        self.is_continuation: bool = info["is_continuation"]
        self.additional_stops: list[str] = list(info["additional_stops"])

    def parse(self, text: str, partial: bool = False) -> dict:
        """The assistant message in text (all of the generated text), as llama.cpp's parser of the
        format returns it (OpenAI JSON); raises ChatParseError where the text does not match."""
        if self._handle == ffi.NULL:
            raise ValueError("the chat prompt is closed")
        data = text.encode("utf-8")
        _lib.check(lib.mtpl_chat_parse(self._handle, data, len(data), int(partial), self._p, self._n), "chat parse")
        return json.loads(_text(self._p, self._n))

    def close(self) -> None:
        if self._handle != ffi.NULL:
            lib.mtpl_chat_free(self._handle)
            self._handle = ffi.NULL



_ID_CHARS = string.ascii_letters + string.digits


def new_tool_call_id() -> str:
    """A random id for a tool call the format gave none (llama-server draws 32 such characters)."""
    return "".join(secrets.choice(_ID_CHARS) for _ in range(32))


def _suffix(last: str, cur: str) -> str:
    """What cur adds to last (llama.cpp's string_diff)."""
    if cur.startswith(last):
        return cur[len(last):]
    if last.startswith(cur):  # the previous parse ended on part of a stop word since cut
        return ""
    raise ChatParseError(f"the parsed message does not extend the previous one ({last!r} -> {cur!r})")


def message_diffs(prev: ChatMessage, new: ChatMessage) -> list[ChatDelta]:
    """The deltas from prev to new, as llama.cpp's common_chat_msg_diff::compute_diffs."""
    out: list[ChatDelta] = []
    if prev.reasoning_content != new.reasoning_content:
        out.append(ChatDelta(reasoning_content=_suffix(prev.reasoning_content, new.reasoning_content)))
    if prev.content != new.content:
        out.append(ChatDelta(content=_suffix(prev.content, new.content)))
    if len(new.tool_calls) < len(prev.tool_calls):
        raise ChatParseError("the parsed message has fewer tool calls than before")
    if prev.tool_calls:
        i = len(prev.tool_calls) - 1
        p, n = prev.tool_calls[i], new.tool_calls[i]
        if p.name != n.name and p.name and n.name and not n.name.startswith(p.name):
            raise ChatParseError(f"tool call {i} changed its name ({p.name!r} -> {n.name!r})")
        args = _suffix(p.arguments, n.arguments)
        renamed = p.id != n.id or p.name != n.name
        if args or renamed:
            out.append(ChatDelta(tool_call=ToolCallDelta(i, n.id if renamed else "", n.name if renamed else "", args)))
    for i in range(len(prev.tool_calls), len(new.tool_calls)):
        t = new.tool_calls[i]
        out.append(ChatDelta(tool_call=ToolCallDelta(i, t.id, t.name, t.arguments)))
    return out


class MessageTracker:
    """The assistant message of a growing text, and the deltas between its versions (llama-server's
    task_result_state: every update parses all of the text; tool call ids stay fixed once drawn)."""

    def __init__(self, prompt: ChatPrompt) -> None:
        self.prompt = prompt
        self.message = ChatMessage()
        self._ids: list[str] = []
        if prompt.is_continuation:  # the continued message's own text is no delta
            try:
                self.message = self._parse("", partial=True)
            except ChatParseError:
                pass

    def _parse(self, text: str, partial: bool) -> ChatMessage:
        d = self.prompt.parse(text, partial)
        calls = []
        for i, tc in enumerate(d.get("tool_calls") or ()):
            fn = tc.get("function") or {}
            if len(self._ids) <= i:
                self._ids.append(tc.get("id") or new_tool_call_id())
            calls.append(ToolCall(fn.get("name", ""), fn.get("arguments", ""), self._ids[i]))
        content = d.get("content") or ""
        if not isinstance(content, str):  # typed parts: join their text
            content = "\n".join(p.get("text", "") for p in content if isinstance(p, Mapping))
        return ChatMessage(d.get("role", "assistant"), content, d.get("reasoning_content", "") or "", tuple(calls))

    def update(self, text: str) -> list[ChatDelta]:
        """Deltas after the text grew (more may follow).  A text the parser cannot read yet, or a
        parse that does not extend the previous one, gives no delta: the final parse decides."""
        try:
            new = self._parse(text, partial=True)
            if new.empty:
                return []
            deltas = message_diffs(self.message, new)
        except ChatParseError:
            return []
        self.message = new
        return [d for d in deltas if d.content or d.reasoning_content or d.tool_call is not None]

    def finish(self, text: str) -> tuple[ChatMessage, list[ChatDelta], str | None]:
        """The final message, the deltas still owed to a stream, and the parse error if the text
        does not match the format (the message is then the raw text as content)."""
        try:
            new = self._parse(text, partial=False)
        except ChatParseError as e:
            raw = ChatMessage(content=text)
            try:
                deltas = message_diffs(self.message, raw)
            except ChatParseError:
                deltas = []
            self.message = raw
            return raw, deltas, str(e)
        try:
            deltas = message_diffs(self.message, new)
        except ChatParseError:
            deltas = []  # the stream already said otherwise; the final message stands
        self.message = new
        return new, [d for d in deltas if d.content or d.reasoning_content or d.tool_call is not None], None


@dataclass
class ChatStream:
    """ChatDelta events of a chat generation; once the iteration ends, `result` holds the ChatResult.
    close() stops the generation early and frees the session (as breaking out of a for loop and
    dropping the stream does)."""

    prompt: ChatPrompt
    events: Iterator[tuple[str, list[int], str]]
    """(text piece, tokens, stop reason) per step, from Session._run."""
    n_prompt: int
    stats: Callable[[], Any]
    incremental: bool = True
    """False: parse once at the end (Session.chat)."""
    result: ChatResult | None = None
    _queue: deque = field(default_factory=deque)
    _parts: list[str] = field(default_factory=list)
    _tokens: list[int] = field(default_factory=list)
    _reason: str = "length"
    _done: bool = False

    def __post_init__(self) -> None:
        self._tracker = MessageTracker(self.prompt)

    def __iter__(self) -> "ChatStream":
        return self

    def __next__(self) -> ChatDelta:
        while not self._queue:
            if self._done:
                raise StopIteration
            self._advance()
        return self._queue.popleft()

    def run(self) -> ChatResult:
        """Generate to the end; the result."""
        for _ in self:
            pass
        assert self.result is not None
        return self.result

    def _advance(self) -> None:
        try:
            piece, toks, reason = next(self.events)
        except StopIteration:
            self._finish()
            return
        except BaseException:
            self.close()
            raise
        self._parts.append(piece)
        self._tokens = list(toks) if reason == "stop" else self._tokens + list(toks)
        self._reason = reason
        if piece and self.incremental:
            self._queue.extend(self._tracker.update("".join(self._parts)))

    def _finish(self) -> None:
        self._done = True
        text = "".join(self._parts)
        message, deltas, err = self._tracker.finish(text)
        if self.incremental:
            self._queue.extend(deltas)
        self.result = ChatResult(message, finish_reason(self._reason, message), self._reason, text, self._tokens,
                                 self.prompt.prompt, self.n_prompt, self.stats(), err)
        self.prompt.close()

    def close(self) -> None:
        if not self._done:
            self._done = True
            self.events.close()
            self.prompt.close()
