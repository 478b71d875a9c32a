"""`mtpllama serve`: the real server process on loopback, driven with the openai client and with raw
HTTP (bad requests, disconnects, a full queue, signals).  Needs the server extra and openai."""
from __future__ import annotations

import http.client
import json
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from contextlib import contextmanager
from pathlib import Path

import pytest

pytest.importorskip("starlette")
pytest.importorskip("uvicorn")

import mtpllama
from mtpllama.testing.fixtures import ONE_THREAD

KEY = "test-key-123"
GLM46 = "GLM-4.6.jinja"
MESSAGES = [{"role": "system", "content": "You are terse."}, {"role": "user", "content": "Hi there"}]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Server:
    def __init__(self, model: str, log: Path, *args: str) -> None:
        self.port = _free_port()
        self.log = log
        self._logf = open(log, "wb")  # a file, not a pipe: a full pipe would stall the server
        cmd = [sys.executable, "-m", "mtpllama", "serve", "-m", model, "--port", str(self.port), "-t", "1",
               "-c", "1024", *args]
        self.proc = subprocess.Popen(cmd, stdout=self._logf, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 120
        while True:
            if self.proc.poll() is not None:
                raise AssertionError(f"the server exited ({self.proc.returncode}):\n{self.output()}")
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{self.port}/health", timeout=2) as r:
                    if r.status == 200:
                        break
            except OSError:
                pass
            if time.monotonic() > deadline:
                self.stop()
                raise AssertionError(f"the server did not come up:\n{self.output()}")
            time.sleep(0.2)

    def output(self) -> str:
        self._logf.flush()
        return self.log.read_text(errors="replace")

    def stop(self, sig=signal.SIGTERM, timeout: float = 30) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self._logf.close()
        return self.proc.returncode

    def call(self, method: str, path: str, body=None, key: str | None = KEY, raw: bytes | None = None,
             timeout: float = 60) -> tuple[int, dict | str]:
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=timeout)
        headers = {"Content-Type": "application/json"}
        if key is not None:
            headers["Authorization"] = f"Bearer {key}"
        data = raw if raw is not None else (None if body is None else json.dumps(body).encode())
        try:
            conn.request(method, path, body=data, headers=headers)
            r = conn.getresponse()
            text = r.read().decode("utf-8", "replace")
            try:
                return r.status, json.loads(text)
            except ValueError:
                return r.status, text
        finally:
            conn.close()

    @contextmanager
    def stream(self, path: str, body: dict):
        """An open SSE response: yields a function reading the next 'data:' payload (None at the end)."""
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=60)
        conn.request("POST", path, body=json.dumps({**body, "stream": True}).encode(),
                     headers={"Content-Type": "application/json", "Authorization": f"Bearer {KEY}"})
        r = conn.getresponse()
        assert r.status == 200, r.read()

        def next_data():
            while True:
                line = r.fp.readline()
                if not line:
                    return None
                line = line.decode().strip()
                if line.startswith("data: "):
                    return line[6:]
        try:
            yield next_data
        finally:
            conn.close()


@pytest.fixture(scope="module")
def server(chat_files, tmp_path_factory):
    # fixed drafting (3 a step), so that every reply drafts and the acceptance metrics exist
    s = Server(chat_files(GLM46), tmp_path_factory.mktemp("srv") / "server.log", "--parallel", "2",
               "--api-key", KEY, "--queue-size", "4", "--alias", "glm-test", "--draft-max", "3", "--no-adaptive")
    yield s
    assert s.stop() == 0, s.output()


@pytest.fixture(scope="module")
def client(server):
    openai = pytest.importorskip("openai")
    return openai.OpenAI(base_url=f"http://127.0.0.1:{server.port}/v1", api_key=KEY, max_retries=0, timeout=60)


@pytest.fixture(scope="module")
def reference(chat_files):
    with mtpllama.Model(chat_files(GLM46), session_defaults=ONE_THREAD) as m:
        yield m


# --- the OpenAI API ---------------------------------------------------------------------------------
def test_health_and_models(server, client):
    assert server.call("GET", "/health", key=None) == (200, {"status": "ok", "batching": "exact"})
    ids = [m.id for m in client.models.list()]
    assert ids == ["glm-test"]


def test_chat_reply_is_the_library_reply(client, reference):
    """The server's greedy reply (MTP on, adaptive drafting) is the library's plain greedy reply."""
    r = client.chat.completions.create(model="glm-test", messages=MESSAGES, max_tokens=24, temperature=0)
    ref = reference.chat(MESSAGES, 24, mtp=False)
    msg = r.choices[0].message
    assert msg.role == "assistant" and msg.content == ref.message.content
    assert (getattr(msg, "reasoning_content", None) or "") == ref.message.reasoning_content
    assert r.choices[0].finish_reason == ref.finish_reason
    assert r.usage.prompt_tokens == ref.prompt_tokens and r.usage.completion_tokens == len(ref.tokens)
    ext = getattr(r, "mtpllama")  # the extension field (the openai client keeps unknown fields)
    assert len(ext["acceptance"]) == len(ext["drafted"]) and ext["mean_tokens_per_step"] >= 1.0


def test_chat_stream(client):
    whole = client.chat.completions.create(model="glm-test", messages=MESSAGES, max_tokens=24, temperature=0)
    chunks = list(client.chat.completions.create(model="glm-test", messages=MESSAGES, max_tokens=24, temperature=0,
                                                 stream=True, stream_options={"include_usage": True}))
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == whole.choices[0].message.content
    assert chunks[0].choices[0].delta.role == "assistant"
    finals = [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason]
    assert finals == [whole.choices[0].finish_reason]
    assert chunks[-1].usage is not None and chunks[-1].usage.completion_tokens == whole.usage.completion_tokens


def test_completions(client, reference):
    prompt = "def foo(x):"
    r = client.completions.create(model="glm-test", prompt=prompt, max_tokens=12, temperature=0)
    ref = reference.generate(reference.tokenize(prompt, add_special=True, parse_special=True), 12, mtp=False)
    assert r.choices[0].text == ref.text
    pieces = list(client.completions.create(model="glm-test", prompt=prompt, max_tokens=12, temperature=0,
                                            stream=True))
    assert "".join(c.choices[0].text for c in pieces if c.choices) == ref.text


def test_prompt_prefix_reused_across_requests(server):
    body = {"messages": MESSAGES, "max_tokens": 8, "temperature": 0}
    server.call("POST", "/v1/chat/completions", body)
    status, r = server.call("POST", "/v1/chat/completions", body)
    assert status == 200
    assert r["usage"]["prompt_tokens_details"]["cached_tokens"] > 0
    assert r["mtpllama"]["cached_tokens"] == r["usage"]["prompt_tokens_details"]["cached_tokens"]


def test_metrics(server, client):
    client.chat.completions.create(model="glm-test", messages=MESSAGES, max_tokens=16, temperature=0)
    status, text = server.call("GET", "/metrics")
    assert status == 200 and isinstance(text, str)
    for name in ("mtpllama_generated_tokens_total", "mtpllama_decode_tokens_per_second", 'mtpllama_acceptance{position="1"}',
                 "mtpllama_mean_draft_length", "mtpllama_queue_depth 0", "mtpllama_sessions 2",
                 'mtpllama_requests_total{endpoint="chat",status="200"}'):
        assert name in text, name
    assert server.call("GET", "/metrics", key=None)[0] == 401


# --- bad requests ----------------------------------------------------------------------------------
CHAT = "/v1/chat/completions"
OK = {"messages": MESSAGES, "max_tokens": 4}


def _with(**kw) -> dict:
    return {**OK, **kw}


BAD = [
    # (path, body or raw bytes, key, status, error type)
    (CHAT, OK, None, 401, "authentication_error"),
    (CHAT, OK, "wrong-key", 401, "authentication_error"),
    (CHAT, b"{", KEY, 400, "invalid_request_error"),
    (CHAT, b"", KEY, 400, "invalid_request_error"),
    (CHAT, b"[1, 2]", KEY, 400, "invalid_request_error"),
    (CHAT, {"max_tokens": 4}, KEY, 400, "invalid_request_error"),
    (CHAT, _with(messages="hi"), KEY, 400, "invalid_request_error"),
    (CHAT, _with(messages=[]), KEY, 400, "invalid_request_error"),
    (CHAT, _with(messages=[{"content": "no role"}]), KEY, 400, "invalid_request_error"),
    (CHAT, _with(messages=[{"role": "user", "content": 5}]), KEY, 400, "invalid_request_error"),
    (CHAT, _with(messages=[{"role": "user"}]), KEY, 400, "invalid_request_error"),
    (CHAT, _with(model="gpt-9"), KEY, 404, "not_found_error"),
    (CHAT, _with(temperature="hot"), KEY, 400, "invalid_request_error"),
    (CHAT, _with(temperature=-1), KEY, 400, "invalid_request_error"),
    (CHAT, _with(top_p=0), KEY, 400, "invalid_request_error"),
    (CHAT, _with(top_p=1.5), KEY, 400, "invalid_request_error"),
    (CHAT, _with(top_k=-3), KEY, 400, "invalid_request_error"),
    (CHAT, _with(max_tokens=0), KEY, 400, "invalid_request_error"),
    (CHAT, _with(max_tokens="10"), KEY, 400, "invalid_request_error"),
    (CHAT, _with(n=2), KEY, 400, "invalid_request_error"),
    (CHAT, _with(stream="yes"), KEY, 400, "invalid_request_error"),
    (CHAT, _with(stop=5), KEY, 400, "invalid_request_error"),
    (CHAT, _with(seed=-5), KEY, 400, "invalid_request_error"),
    (CHAT, _with(logprobs=True), KEY, 400, "invalid_request_error"),
    (CHAT, _with(tools={"type": "function"}), KEY, 400, "invalid_request_error"),
    (CHAT, _with(tools=[{"type": "retrieval"}]), KEY, 400, "invalid_request_error"),
    (CHAT, _with(tool_choice="required"), KEY, 400, "invalid_request_error"),
    (CHAT, _with(response_format={"type": "json_schema", "json_schema": {}}), KEY, 400, "invalid_request_error"),
    (CHAT, _with(chat_template_kwargs=[1]), KEY, 400, "invalid_request_error"),
    (CHAT, _with(messages=[{"role": "user", "content": "x " * 3000}]), KEY, 400, "exceed_context_size_error"),
    ("/v1/completions", {"max_tokens": 4}, KEY, 400, "invalid_request_error"),
    ("/v1/completions", {"prompt": [[1, 2], [3]]}, KEY, 400, "invalid_request_error"),
    ("/v1/completions", {"prompt": [10 ** 9]}, KEY, 400, "invalid_request_error"),
    ("/v1/completions", {"prompt": ""}, KEY, 400, "invalid_request_error"),
    ("/v1/completions", {"prompt": "x", "echo": True}, KEY, 400, "invalid_request_error"),
    ("/v1/nope", OK, KEY, 404, "not_found_error"),
]


@pytest.mark.parametrize("path, body, key, status, etype", BAD, ids=[f"{i}-{b[3]}" for i, b in enumerate(BAD)])
def test_bad_requests(server, path, body, key, status, etype):
    raw = body if isinstance(body, bytes) else None
    got, r = server.call("POST", path, None if raw is not None else body, key=key, raw=raw)
    assert got == status, r
    assert isinstance(r, dict) and isinstance(r["error"]["message"], str) and r["error"]["message"]
    assert r["error"]["type"] == etype


def test_wrong_method_is_405(server):
    status, r = server.call("GET", CHAT)
    assert status == 405 and r["error"]["message"]


def test_server_survives_bad_requests(server):
    status, r = server.call("POST", CHAT, {**OK, "temperature": 0})
    assert status == 200 and r["choices"][0]["message"]["role"] == "assistant"


# --- busy, gone, stopped ---------------------------------------------------------------------------
@pytest.fixture
def slow_server(chat_files, tmp_path):
    """One session, no queue, steps slowed down: requests that run long enough to be interrupted."""
    s = Server(chat_files(GLM46), tmp_path / "slow.log", "--parallel", "1", "--queue-size", "0", "--api-key", KEY,
               "--debug-step-delay", "0.05")
    yield s
    s.stop(signal.SIGKILL)


def _wait_for(predicate, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.1)
    return False


def test_full_queue_is_refused_and_disconnect_frees_the_session(slow_server):
    body = {"messages": MESSAGES, "max_tokens": 900, "temperature": 0}
    with slow_server.stream(CHAT, body) as next_data:
        assert next_data() is not None and next_data() is not None  # generating
        t0 = time.monotonic()
        status, r = slow_server.call("POST", CHAT, {**body, "max_tokens": 4})
        assert status == 503 and r["error"]["type"] == "unavailable_error"
        assert time.monotonic() - t0 < 5  # refused at once, not after the running request
    # the client went away: the generation stops at a step boundary and the session is free again

    refused = [1]

    def free() -> bool:
        status = slow_server.call("POST", CHAT, {**body, "max_tokens": 2})[0]
        refused[0] += status == 503  # a poll that came before the cancelled step ended is refused too
        return status == 200
    assert _wait_for(free, 20), slow_server.output()
    _, text = slow_server.call("GET", "/metrics")
    assert "mtpllama_requests_cancelled_total 1" in text
    assert f"mtpllama_requests_rejected_total {refused[0]}" in text


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_signal_shuts_down_cleanly(slow_server, sig):
    body = {"messages": MESSAGES, "max_tokens": 900, "temperature": 0}
    with slow_server.stream(CHAT, body) as next_data:
        assert next_data() is not None
        t0 = time.monotonic()
        slow_server.proc.send_signal(sig)
        rest = []
        while (d := next_data()) is not None:
            rest.append(d)
        assert rest and rest[-1] == "[DONE]"  # the stream ended properly, cut short
    rc = slow_server.proc.wait(30)
    assert rc == 0 and time.monotonic() - t0 < 20
    assert "Traceback" not in slow_server.output()


def test_model_without_template(model_files, tmp_path):
    s = Server(model_files["glm45"], tmp_path / "plain.log")
    try:
        status, r = s.call("POST", CHAT, OK, key=None)
        assert status == 400 and r["error"]["code"] == "no_chat_template"
        status, r = s.call("POST", "/v1/completions", {"prompt": "def foo(x):", "max_tokens": 4}, key=None)
        assert status == 200 and r["usage"]["completion_tokens"] == 4
    finally:
        assert s.stop() == 0, s.output()


# --- the same replies whatever drafts -----------------------------------------------------------------
QWEN35 = "Qwen3.5-4B.jinja"


def _reply(client, model_id: str, stream: bool, thinking: bool) -> tuple[str, str]:
    """(content, reasoning) of a greedy chat reply, whole or put together from its stream."""
    kwargs = dict(model=model_id, messages=MESSAGES, max_tokens=24, temperature=0,
                  extra_body={"chat_template_kwargs": {"enable_thinking": thinking}})
    if not stream:
        msg = client.chat.completions.create(**kwargs).choices[0].message
        return msg.content or "", getattr(msg, "reasoning_content", None) or ""
    content, reasoning = [], []
    for c in client.chat.completions.create(stream=True, **kwargs):
        if c.choices:
            content.append(c.choices[0].delta.content or "")
            reasoning.append(getattr(c.choices[0].delta, "reasoning_content", None) or "")
    return "".join(content), "".join(reasoning)


@pytest.mark.parametrize("template", [GLM46, QWEN35])
def test_replies_are_the_same_with_mtp_on_and_off(chat_files, chat_model, tmp_path, template):
    """GLM-4.6's and Qwen3.5's templates, reasoning on and off, whole and streamed: a server drafting
    3 tokens a step and one that does not draft give the same greedy reply, the library's."""
    openai = pytest.importorskip("openai")
    path = chat_files(template)
    servers = [Server(path, tmp_path / f"{name}.log", "--parallel", "2", "--api-key", KEY, *flags)
               for name, flags in (("mtp", ["--draft-max", "3", "--no-adaptive"]), ("plain", ["--no-mtp"]))]
    try:
        clients = [openai.OpenAI(base_url=f"http://127.0.0.1:{s.port}/v1", api_key=KEY, max_retries=0, timeout=60)
                   for s in servers]
        ref_model = chat_model(template)
        for thinking in (True, False):
            ref = ref_model.chat(MESSAGES, 24, mtp=False, thinking=thinking)
            expect = (ref.message.content, ref.message.reasoning_content)
            for stream in (False, True):
                got = [_reply(c, Path(path).name, stream, thinking) for c in clients]
                assert got == [expect, expect], (thinking, stream)
    finally:
        for s in servers:
            assert s.stop() == 0, s.output()


GLM_CALL_PIECES = ["<tool_call>", "special_function\n", "<arg_key>", "arg1", "</arg_key>\n", "<arg_value>", "1",
                   "</arg_value>\n", "</tool_call>"]
SPECIAL_FUNCTION = {"type": "function", "function": {
    "name": "special_function", "description": "I'm special",
    "parameters": {"type": "object", "properties": {"arg1": {"type": "integer"}}, "required": ["arg1"]}}}
CALL_MESSAGES = [{"role": "user", "content": "Call it"}]


def _tool_call_file(tmp_path, templates_dir) -> str:
    """A GLM-4.6 file whose greedy reply to CALL_MESSAGES (tools: special_function, thinking off) is
    GLM's tool call: the call's pieces are tokens of their own (user-defined), each the output head's
    strong favourite after the one before, the first after the prompt's last token, end of text after
    the last."""
    import dataclasses

    import numpy as np

    from mtpllama.testing import synthetic_weights, train_bpe, write_synthetic
    from mtpllama.testing.fixtures import SPECS

    base = train_bpe(n_merges=SPECS["glm46"].n_merges)
    new = [p for p in GLM_CALL_PIECES if p not in base.tokens]
    tok = dataclasses.replace(base, tokens=base.tokens + new, token_types=base.token_types + [4] * len(new))
    template = (templates_dir / GLM46).read_text()
    path = tmp_path / "tool_call.gguf"
    write_synthetic(path, SPECS["glm46"], tok, chat_template=template)  # to tokenize the prompt
    with mtpllama.Model(str(path)) as m:
        with m.chat_prompt(CALL_MESSAGES, tools=[SPECIAL_FUNCTION], thinking=False) as p:
            last = m.tokenize(p.prompt, add_special=True, parse_special=True)[-1]
    W = synthetic_weights(SPECS["glm46"], tok)
    emb = W["token_embd.weight"]
    unit = emb / np.sqrt((emb ** 2).mean(axis=1, keepdims=True))
    chain = [last] + [tok.tokens.index(p) for p in GLM_CALL_PIECES] + [tok.eos_id]
    d = emb.shape[1]
    for a, b in zip(chain, chain[1:]):
        W["output.weight"][b] = unit[a] * (8.0 / np.sqrt(d))
    write_synthetic(path, SPECS["glm46"], tok, weights=W, chat_template=template)
    return str(path)


def test_tool_call_end_to_end(tmp_path, templates_dir):
    """A model that calls a tool: the server (MTP on and off) returns the call parsed as upstream
    parses GLM's format, with finish_reason tool_calls, as Model.chat does; streamed, the call's
    deltas put together give the same call."""
    openai = pytest.importorskip("openai")
    path = _tool_call_file(tmp_path, templates_dir)
    with mtpllama.Model(path) as m:
        ref = m.chat(CALL_MESSAGES, 64, tools=[SPECIAL_FUNCTION], thinking=False, mtp=False)
    assert [(c.name, json.loads(c.arguments)) for c in ref.message.tool_calls] == [("special_function", {"arg1": 1})]
    assert ref.finish_reason == "tool_calls"
    servers = [Server(path, tmp_path / f"{name}.log", "--parallel", "2", "--api-key", KEY, *flags)
               for name, flags in (("mtp", ["--draft-max", "3", "--no-adaptive"]), ("plain", ["--no-mtp"]))]
    try:
        for s in servers:
            client = openai.OpenAI(base_url=f"http://127.0.0.1:{s.port}/v1", api_key=KEY, max_retries=0, timeout=60)
            kwargs = dict(model=Path(path).name, messages=CALL_MESSAGES, tools=[SPECIAL_FUNCTION], max_tokens=64,
                          temperature=0, extra_body={"chat_template_kwargs": {"enable_thinking": False}})
            r = client.chat.completions.create(**kwargs)
            calls = r.choices[0].message.tool_calls
            assert r.choices[0].finish_reason == "tool_calls"
            assert [(c.function.name, json.loads(c.function.arguments)) for c in calls] == \
                [("special_function", {"arg1": 1})]
            parts: dict[int, list[str]] = {}
            for c in client.chat.completions.create(stream=True, **kwargs):
                for tc in (c.choices[0].delta.tool_calls or []) if c.choices else []:
                    got = parts.setdefault(tc.index, ["", ""])
                    got[0] += tc.function.name or ""
                    got[1] += tc.function.arguments or ""
            assert [(n, json.loads(a)) for n, a in parts.values()] == [("special_function", {"arg1": 1})]
    finally:
        for s in servers:
            assert s.stop() == 0, s.output()
