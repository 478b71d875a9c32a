#!/usr/bin/env python3
"""Rendered chat prompts: mtpllama's (Model.chat_prompt) against upstream llama-server's
/apply-template, for each shipped template of a supported architecture over a table of
conversations (system, multi-turn, tools, a tool call and its result, reasoning in the history,
thinking on and off).

    python3 benchmarks/render_check.py            # builds llama-server if needed (build_upstream.py)

Both sides load the same tiny file carrying the template (the tokenizer's special tokens are the
template's bos/eos strings), so any difference is the rendering's.  Prints one row per template and
exits 1 if any prompt differs (a conversation both sides refuse counts as equal).
"""
from __future__ import annotations

import json
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

# template file -> the architectures it serves
TEMPLATES = {
    "GLM-4.6.jinja": "glm4moe",
    "GLM-4.7-Flash.jinja": "deepseek2, glm-dsa",
    "deepseek-ai-DeepSeek-V3.1.jinja": "deepseek2",
    "deepseek-ai-DeepSeek-V3.2.jinja": "deepseek32",
    "deepseek-ai-DeepSeek-V4.jinja": "deepseek4",
    "Qwen3.5-4B.jinja": "qwen35, qwen35moe",
    "Qwen3-Coder.jinja": "qwen3next",
    "StepFun3.5-Flash.jinja": "step35",
    "tencent-Hy3.jinja": "hy_v3",
    "MiMo-VL.jinja": "mimo2",
    "NVIDIA-Nemotron-3-Nano-30B-A3B-BF16.jinja": "nemotron_h_moe",
    "inclusionai-ling-3.0-flash.jinja": "bailingmoe3",
    "Cohere2MoE.jinja": "cohere2moe",
}

TOOLS = [{"type": "function", "function": {
    "name": "get_weather", "description": "The weather in a city",
    "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}}]
CALL = {"id": "call_1", "type": "function", "function": {"name": "get_weather", "arguments": '{"city": "Paris"}'}}

CONVERSATIONS = {
    "system+user": {"messages": [{"role": "system", "content": "You are terse."},
                                 {"role": "user", "content": "Hi there"}]},
    "multi-turn": {"messages": [{"role": "user", "content": "What is 2+2?"},
                                {"role": "assistant", "content": "4"},
                                {"role": "user", "content": "And 3+3?"}]},
    "tools": {"messages": [{"role": "user", "content": "Weather in Paris?"}], "tools": TOOLS},
    "tool call + result": {"messages": [{"role": "user", "content": "Weather in Paris?"},
                                        {"role": "assistant", "content": "", "tool_calls": [CALL]},
                                        {"role": "tool", "tool_call_id": "call_1", "content": "sunny, 21 C"}],
                           "tools": TOOLS},
    "reasoning in history": {"messages": [{"role": "user", "content": "Think: 17*3?"},
                                          {"role": "assistant", "content": "51", "reasoning_content": "17*3 = 51"},
                                          {"role": "user", "content": "And 17*4?"}]},
    "thinking off": {"messages": [{"role": "user", "content": "Hi"}],
                     "chat_template_kwargs": {"enable_thinking": False}},
    "thinking on": {"messages": [{"role": "user", "content": "Hi"}],
                    "chat_template_kwargs": {"enable_thinking": True}},
}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def upstream_render(port: int, request: dict) -> str | None:
    req = urllib.request.Request(f"http://127.0.0.1:{port}/apply-template", data=json.dumps(request).encode(),
                                 headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=60) as r:
            return json.loads(r.read())["prompt"]
    except urllib.error.HTTPError:
        return None  # refused (the template raised, or the request does not fit it)


def ours_render(model, request: dict) -> str | None:
    from mtpllama import MtpllamaError

    try:
        with model.chat_prompt(request["messages"], tools=request.get("tools"),
                               chat_template_kwargs=request.get("chat_template_kwargs")) as p:
            return p.prompt
    except MtpllamaError:
        return None


def main() -> int:
    import build_upstream
    import mtpllama
    from mtpllama.testing import write_synthetic
    from mtpllama.testing.fixtures import SPECS

    tools = build_upstream.build()
    src = Path(tools["UPSTREAM_DIR"]) / "models" / "templates"
    tmp = Path(tempfile.mkdtemp(prefix="render_check_"))
    rows, failures = [], 0
    for name, arch in TEMPLATES.items():
        path = write_synthetic(tmp / f"{name}.gguf", SPECS["glm46"], chat_template=(src / name).read_text())
        port = _free_port()
        log = open(tmp / f"{name}.log", "wb")
        proc = subprocess.Popen([tools["SERVER"], "-m", str(path), "--port", str(port), "-t", "1", "-c", "256",
                                 "--jinja", "--no-webui"], stdout=log, stderr=subprocess.STDOUT)
        try:
            for _ in range(300):
                try:
                    with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=2) as r:
                        if r.status == 200:
                            break
                except OSError:
                    time.sleep(0.2)
            same, refused, diff = 0, 0, []
            with mtpllama.Model(str(path)) as m:
                for conv, request in CONVERSATIONS.items():
                    up, ours = upstream_render(port, request), ours_render(m, request)
                    if up == ours:
                        same += 1
                        refused += up is None
                    else:
                        diff.append(conv)
                        print(f"--- {name} / {conv}\nupstream: {up!r}\nours:     {ours!r}", file=sys.stderr)
                # power: the comparison sees a one-line change (no generation prompt on our side)
                req = CONVERSATIONS["multi-turn"]
                with m.chat_prompt(req["messages"], add_generation_prompt=False) as p:
                    if p.prompt == upstream_render(port, req):
                        diff.append("power check (a prompt without the generation prompt compared equal)")
            failures += len(diff)
            rows.append((name, arch, same, len(CONVERSATIONS), refused, diff))
        finally:
            proc.terminate()
            proc.wait(30)
            log.close()
    print("| template | architectures | equal | both refuse | differ |")
    print("|---|---|---|---|---|")
    for name, arch, same, n, refused, diff in rows:
        print(f"| {name} | {arch} | {same}/{n} | {refused} | {', '.join(diff) or '-'} |")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
