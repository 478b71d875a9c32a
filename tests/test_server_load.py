"""The server under load, on loopback: 200 requests from 16 concurrent clients (chat and completions,
streamed and not) against 4 sessions in one group, every reply checked against the library's reply
to the same request alone; and how soon a client that goes away frees its session."""
from __future__ import annotations

import http.client
import json
import queue
import re
import socket
import threading
import time

import pytest

pytest.importorskip("starlette")
pytest.importorskip("uvicorn")

from test_server import GLM46, KEY, Server, _wait_for  # noqa: E402

CHATS = [
    [{"role": "user", "content": "Hi there"}],
    [{"role": "system", "content": "You are terse."}, {"role": "user", "content": "List three colours"}],
    [{"role": "user", "content": "def add(a, b):"}, {"role": "assistant", "content": "return a + b"},
     {"role": "user", "content": "and subtract?"}],
    [{"role": "user", "content": "Count to five"}],
]
PROMPTS = ["def foo(x):", "The quick brown", "import os\n", "class Stack:", "for i in range(10):"]


def requests_table(n: int) -> list[tuple[str, bool, object, int]]:
    """(kind, stream, messages or prompt, max_tokens) for request i: every kind, both forms."""
    out = []
    for i in range(n):
        kind = "chat" if i % 2 == 0 else "completion"
        payload = CHATS[i % len(CHATS)] if kind == "chat" else PROMPTS[i % len(PROMPTS)]
        out.append((kind, (i // 2) % 2 == 1, payload, (8, 16, 24)[i % 3]))
    return out


def send(port: int, kind: str, stream: bool, payload, max_tokens: int) -> tuple[int, str]:
    """(HTTP status, the reply's text), streamed replies put together from their chunks."""
    path = "/v1/chat/completions" if kind == "chat" else "/v1/completions"
    body = {"max_tokens": max_tokens, "temperature": 0, "stream": stream}
    body.update({"messages": payload} if kind == "chat" else {"prompt": payload})
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=120)
    try:
        conn.request("POST", path, body=json.dumps(body).encode(),
                     headers={"Content-Type": "application/json", "Authorization": f"Bearer {KEY}"})
        r = conn.getresponse()
        raw = r.read().decode()
    finally:
        conn.close()
    if r.status != 200:
        return r.status, raw
    if not stream:
        data = json.loads(raw)
        c = data["choices"][0]
        return 200, c["message"]["content"] if kind == "chat" else c["text"]
    text = []
    for line in raw.splitlines():
        if line.startswith("data: ") and line != "data: [DONE]":
            for c in json.loads(line[6:]).get("choices", []):
                text.append((c.get("delta") or {}).get("content") or "" if kind == "chat" else c.get("text") or "")
    return 200, "".join(text)


@pytest.fixture(scope="module")
def load_server(chat_files, tmp_path_factory):
    s = Server(chat_files(GLM46), tmp_path_factory.mktemp("load") / "server.log", "--parallel", "4",
               "--api-key", KEY, "--queue-size", "16")
    yield s
    assert s.stop() == 0, s.output()


def test_200_requests_from_16_clients(load_server, chat_model):
    """None lost (200 answers of 200), none garbled: each reply equals the library's greedy reply to
    the same request run alone with MTP off, whatever shared its steps."""
    ref_model = chat_model(GLM46)
    table = requests_table(200)
    expect = {}
    for kind, _stream, payload, n in table:
        key = (kind, json.dumps(payload), n)
        if key not in expect:
            if kind == "chat":
                expect[key] = ref_model.chat(payload, n, mtp=False).message.content
            else:
                toks = ref_model.tokenize(payload, add_special=True, parse_special=True)
                expect[key] = ref_model.generate(toks, n, mtp=False).text
    todo: queue.Queue = queue.Queue()
    for i, item in enumerate(table):
        todo.put((i, item))
    got: dict[int, tuple[int, str]] = {}

    def client() -> None:
        while True:
            try:
                i, (kind, stream, payload, n) = todo.get_nowait()
            except queue.Empty:
                return
            got[i] = send(load_server.port, kind, stream, payload, n)

    threads = [threading.Thread(target=client) for _ in range(16)]
    t0 = time.monotonic()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall = time.monotonic() - t0
    assert len(got) == 200
    statuses = [got[i][0] for i in range(200)]
    assert statuses == [200] * 200, [(i, got[i]) for i in range(200) if got[i][0] != 200][:3]
    wrong = [i for i, (kind, _s, payload, n) in enumerate(table) if got[i][1] != expect[(kind, json.dumps(payload), n)]]
    assert wrong == [], (wrong[:5], wall)
    _, text = load_server.call("GET", "/metrics")
    assert re.search(r'mtpllama_generations_total\{kind="chat"\} 100\b', text), text
    shared = float(re.search(r"mtpllama_sequences_per_pass ([0-9.e+-]+)", text).group(1))
    assert shared > 1.5, text  # the requests shared their steps


def _busy(server) -> int:
    _, text = server.call("GET", "/metrics")
    return int(float(re.search(r"mtpllama_sessions_busy ([0-9.e+-]+)", text).group(1)))


def _step_seconds(server) -> float:
    """Seconds per generation step on the test file (from a request's mtpllama extension)."""
    status, r = server.call("POST", "/v1/completions", {"prompt": "def foo(x):", "max_tokens": 64, "temperature": 0})
    assert status == 200
    ext = r["mtpllama"]
    return ext["mean_tokens_per_step"] / ext["decode_tokens_per_second"]


@pytest.mark.parametrize("stream", [True, False], ids=["stream", "whole"])
def test_disconnect_frees_the_session_within_a_step(load_server, stream):
    """A client that goes away mid-generation: its session is free again within one step plus 100 ms
    (measured from the moment the socket closes to /metrics showing no busy session)."""
    step = _step_seconds(load_server)
    assert _wait_for(lambda: _busy(load_server) == 0, 10)
    body = {"messages": CHATS[0], "max_tokens": 100000, "temperature": 0, "stream": stream}
    sock = socket.create_connection(("127.0.0.1", load_server.port))
    data = json.dumps(body).encode()
    sock.sendall(b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                 + f"Authorization: Bearer {KEY}\r\nContent-Length: {len(data)}\r\n\r\n".encode() + data)
    if stream:
        assert sock.recv(4096)  # the first chunks: it is generating
    else:
        assert _wait_for(lambda: _busy(load_server) == 1, 10)
    time.sleep(0.2)
    assert _busy(load_server) == 1
    t0 = time.monotonic()
    sock.close()
    while _busy(load_server) != 0:
        assert time.monotonic() - t0 < 10, "the session was not freed"
        time.sleep(0.002)
    latency = time.monotonic() - t0
    print(f"disconnect-to-free: {latency * 1e3:.1f} ms (a step: {step * 1e3:.2f} ms)")
    assert latency <= step + 0.1, (latency, step)
