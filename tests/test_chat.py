"""Chat: rendering with the GGUF's template and parsing replies, by llama.cpp's own chat code run
inside the engine (csrc/chat_format.cpp), and chat generation with prompt-prefix reuse.

The templates are read from the llama.cpp tree the build fetched (models/templates), never
committed here.  The parse cases are upstream's own expectations (tests/test-chat.cpp of the
pinned tree: the peg_tester rows for these templates, with its inputs: one user message "Hey
there!", the reasoning format and thinking switch of the row, no parallel tool calls)."""
from __future__ import annotations

import json

import pytest

import mtpllama
from mtpllama.chat import ChatMessage, MessageTracker
from mtpllama.testing.fixtures import ONE_THREAD

GLM46 = "GLM-4.6.jinja"
GLM47_FLASH = "GLM-4.7-Flash.jinja"
QWEN35 = "Qwen3.5-4B.jinja"
DSV32 = "deepseek-ai-DeepSeek-V3.2.jinja"
DSV4 = "deepseek-ai-DeepSeek-V4.jinja"
QWEN3_CODER = "Qwen3-Coder.jinja"

USER = [{"role": "user", "content": "Hey there!"}]
SPECIAL_FUNCTION = {"type": "function", "function": {
    "name": "special_function", "description": "I'm special",
    "parameters": {"type": "object", "properties": {"arg1": {"type": "integer", "description": "The arg."}},
                   "required": ["arg1"]}}}
ASSIST = "Hello, world!\nWhat's up?"
BAR = "\uff5c"  # DeepSeek's fullwidth vertical bar, as in <｜DSML｜...>


DSV32_CALL = ("<" + BAR + "DSML" + BAR + "function_calls>\n"
              "<" + BAR + "DSML" + BAR + "invoke name=\"special_function\">\n"
              "<" + BAR + "DSML" + BAR + "parameter name=\"arg1\" string=\"false\">1</" + BAR + "DSML" + BAR + "parameter>\n"
              "</" + BAR + "DSML" + BAR + "invoke>\n"
              "</" + BAR + "DSML" + BAR + "function_calls>")
DSV4_CALL = DSV32_CALL.replace("function_calls>", "tool_calls>")  # V4 names the block tool_calls
QWEN_CALL = "<tool_call>\n<function=special_function>\n<parameter=arg1>\n1\n</parameter>\n</function>\n</tool_call>"
GLM_CALL = "<tool_call>special_function\n<arg_key>arg1</arg_key>\n<arg_value>1</arg_value>\n</tool_call>"

# (template, render options, generated text, expected content, reasoning, tool calls [(name, arguments)])
PARSE_CASES = [
    (GLM46, dict(thinking=True, tools=[SPECIAL_FUNCTION], reasoning_format="none"), GLM_CALL, "", "", [("special_function", {"arg1": 1})]),
    (GLM47_FLASH, dict(thinking=False, reasoning_format="none"), ASSIST, ASSIST, "", []),
    (GLM47_FLASH, dict(thinking=True, reasoning_format="deepseek"), "I'm\nthinking</think>" + ASSIST, ASSIST,
     "I'm\nthinking", []),
    (QWEN35, dict(thinking=True, reasoning_format="auto"), "I'm\nthinking\n</think>\n\n" + ASSIST, ASSIST,
     "I'm\nthinking", []),
    (QWEN35, dict(thinking=True, reasoning_format="none"), "I'm\nthinking\n</think>\n\n" + ASSIST,
     "<think>\nI'm\nthinking\n</think>\n\n" + ASSIST, "", []),
    (QWEN35, dict(thinking=False, reasoning_format="auto", tools=[SPECIAL_FUNCTION]), QWEN_CALL, "", "",
     [("special_function", {"arg1": 1})]),
    (DSV32, dict(thinking=False, reasoning_format="deepseek"), ASSIST, ASSIST, "", []),
    (DSV32, dict(thinking=True, reasoning_format="deepseek"), "I'm\nthinking</think>" + ASSIST, ASSIST,
     "I'm\nthinking", []),
    (DSV32, dict(thinking=False, reasoning_format="deepseek", tools=[SPECIAL_FUNCTION]), DSV32_CALL, "", "",
     [("special_function", {"arg1": 1})]),
    (DSV4, dict(thinking=False, reasoning_format="deepseek"), ASSIST, ASSIST, "", []),
    (DSV4, dict(thinking=True, reasoning_format="deepseek"), "I'm\nthinking</think>" + ASSIST, ASSIST,
     "I'm\nthinking", []),
    (DSV4, dict(thinking=False, reasoning_format="deepseek", tools=[SPECIAL_FUNCTION]), DSV4_CALL, "", "",
     [("special_function", {"arg1": 1})]),
    (QWEN3_CODER, dict(thinking=True, reasoning_format="none"), ASSIST, ASSIST, "", []),
    (QWEN3_CODER, dict(thinking=True, reasoning_format="none", tools=[SPECIAL_FUNCTION]), QWEN_CALL, "", "",
     [("special_function", {"arg1": 1})]),
]


def _ids(case) -> str:
    return f"{case[0].removesuffix('.jinja')}-{'tools' if 'tools' in case[1] else 'text'}-{case[1].get('thinking')}"


@pytest.mark.parametrize("case", PARSE_CASES, ids=[_ids(c) for c in PARSE_CASES])
def test_parse_as_upstream(chat_model, case):
    template, options, text, content, reasoning, calls = case
    m = chat_model(template)
    with m.chat_prompt(USER, parallel_tool_calls=False, **options) as p:
        msg = p.parse(text)
    assert msg["role"] == "assistant"
    # upstream's test compares content and reasoning with surrounding whitespace stripped (test-chat.cpp's
    # assert_msg_equals(..., ignore_whitespace_differences=true)): so do we
    assert (msg["content"] or "").strip() == content.strip()
    assert msg.get("reasoning_content", "").strip() == reasoning.strip()
    got = [(c["function"]["name"], json.loads(c["function"]["arguments"])) for c in msg.get("tool_calls", [])]
    assert got == calls


@pytest.mark.parametrize("case", [c for c in PARSE_CASES if c[0] in (GLM46, GLM47_FLASH, QWEN35)],
                         ids=[_ids(c) for c in PARSE_CASES if c[0] in (GLM46, GLM47_FLASH, QWEN35)])
def test_streamed_deltas_rebuild_the_message(chat_model, case):
    """Feeding the text piece by piece (partial parses, as a stream does) gives deltas that add up
    to the final message, as upstream's test_peg_parser checks its diffs."""
    template, options, text, *_ = case
    m = chat_model(template)
    with m.chat_prompt(USER, parallel_tool_calls=False, **options) as p:
        tracker = MessageTracker(p)
        deltas = []
        for i in range(1, len(text)):
            deltas += tracker.update(text[:i])
        final, rest, err = tracker.finish(text)
    assert err is None
    deltas += rest
    content = "".join(d.content for d in deltas)
    reasoning = "".join(d.reasoning_content for d in deltas)
    assert content == final.content and reasoning == final.reasoning_content
    calls: dict[int, list[str]] = {}
    for d in deltas:
        if d.tool_call is not None:
            c = calls.setdefault(d.tool_call.index, ["", "", ""])
            c[0] = d.tool_call.id or c[0]
            c[1] = d.tool_call.name or c[1]
            c[2] += d.tool_call.arguments
    assert [tuple(calls[i]) for i in sorted(calls)] == [(t.id, t.name, t.arguments) for t in final.tool_calls]
    assert all(t.id for t in final.tool_calls)  # a format without ids gets generated ones


# --- GLM-4.6, checked by hand against the template's text ---------------------------------------
SYS_USER = [{"role": "system", "content": "You are terse."}, {"role": "user", "content": "Hi there"}]


@pytest.mark.parametrize("thinking, expected", [
    (True, "[gMASK]<sop><|system|>\nYou are terse.<|user|>\nHi there<|assistant|>"),
    (False, "[gMASK]<sop><|system|>\nYou are terse.<|user|>\nHi there/nothink<|assistant|>\n<think></think>"),
])
def test_glm46_rendering_literal(chat_model, thinking, expected):
    m = chat_model(GLM46)
    with m.chat_prompt(SYS_USER, thinking=thinking) as p:
        assert p.prompt == expected
        assert p.enable_thinking is thinking
        assert expected.endswith(p.generation_prompt) and p.generation_prompt.startswith("<|assistant|>")


def test_glm46_multi_turn_literal(chat_model):
    """An earlier turn's reasoning is dropped (only turns after the last user message keep it)."""
    m = chat_model(GLM46)
    msgs = SYS_USER + [{"role": "assistant", "content": "Hello!", "reasoning_content": "greet"},
                       {"role": "user", "content": "Bye"}]
    with m.chat_prompt(msgs, thinking=True) as p:
        assert p.prompt == ("[gMASK]<sop><|system|>\nYou are terse.<|user|>\nHi there<|assistant|>\n<think></think>"
                            "\nHello!<|user|>\nBye<|assistant|>")


def test_glm46_tools_and_tool_turns(chat_model):
    m = chat_model(GLM46)
    with m.chat_prompt(SYS_USER[1:], tools=[SPECIAL_FUNCTION], thinking=True) as p:
        assert p.prompt.startswith("[gMASK]<sop><|system|>\n# Tools\n\nYou may call one or more functions")
        assert "<tools>\n{" in p.prompt and "special_function" in p.prompt and "I'm special" in p.prompt
        assert p.prompt.endswith("</tool_call><|user|>\nHi there<|assistant|>")
    msgs = [{"role": "user", "content": "Hi"},
            {"role": "assistant", "content": "", "tool_calls": [
                {"id": "c1", "type": "function", "function": {"name": "special_function", "arguments": '{"arg1": 1}'}}]},
            {"role": "tool", "tool_call_id": "c1", "content": "42"}]
    with m.chat_prompt(msgs, tools=[SPECIAL_FUNCTION], thinking=True) as p:
        # the arguments' JSON text becomes the object the template walks (upstream's workaround)
        assert p.prompt.endswith("<|user|>\nHi<|assistant|>\n<think></think>\n<tool_call>special_function\n"
                                 "<arg_key>arg1</arg_key>\n<arg_value>1</arg_value>\n</tool_call><|observation|>\n"
                                 "<tool_response>\n42\n</tool_response><|assistant|>")


@pytest.mark.parametrize("template", [GLM46, GLM47_FLASH, QWEN35, DSV32, DSV4, QWEN3_CODER])
def test_templates_render_the_messages(chat_model, template):
    m = chat_model(template)
    with m.chat_prompt(SYS_USER) as p:
        assert "Hi there" in p.prompt and p.generation_prompt and p.format
        assert isinstance(p.additional_stops, list)
    with m.chat_prompt(SYS_USER, thinking=False) as off:
        assert "Hi there" in off.prompt and off.enable_thinking is False


# --- errors ------------------------------------------------------------------------------------
def test_no_template_is_a_typed_error_and_completion_works(glm45):
    assert glm45.chat_template is None
    with pytest.raises(mtpllama.NoChatTemplateError, match="chat template"):
        glm45.chat_prompt(USER)
    with pytest.raises(mtpllama.NoChatTemplateError):
        glm45.chat(USER, 4)
    assert len(glm45.generate("def foo(x):", 4).tokens) == 4


@pytest.mark.parametrize("messages, error", [
    ("hello", TypeError),
    ([], ValueError),
    (["hello"], TypeError),
    ([{"content": "no role"}], mtpllama.InvalidArgumentError),
    ([{"role": "user"}], mtpllama.InvalidArgumentError),
    ([{"role": "user", "content": 5}], mtpllama.InvalidArgumentError),
    ([{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "x"}}]}], mtpllama.InvalidArgumentError),
    ([{"role": "assistant", "content": "a"}, {"role": "assistant", "content": "b"}], mtpllama.InvalidArgumentError),
])
def test_bad_messages(chat_model, messages, error):
    with pytest.raises(error):
        chat_model(GLM46).chat_prompt(messages)


def test_bad_options(chat_model):
    m = chat_model(GLM46)
    with pytest.raises(ValueError, match="tool_choice"):
        m.chat_prompt(USER, tool_choice="required")
    with pytest.raises(TypeError):
        m.chat_prompt(USER, thinking="yes")
    with pytest.raises(mtpllama.InvalidArgumentError, match="enable_thinking"):
        m.chat_prompt(USER, chat_template_kwargs={"enable_thinking": "no"})
    with pytest.raises(mtpllama.InvalidArgumentError):
        m.chat_prompt(USER, tools=[{"type": "retrieval"}])
    with pytest.raises(ValueError, match="reasoning_format"):
        m.chat_prompt(USER, reasoning_format="verbose")


def test_template_kwargs_reach_the_template(chat_model):
    m = chat_model(GLM46)
    with m.chat_prompt(SYS_USER, chat_template_kwargs={"enable_thinking": False}) as p:
        assert p.prompt.endswith("Hi there/nothink<|assistant|>\n<think></think>")
    with m.chat_prompt(SYS_USER, reasoning_effort="none") as p:
        assert p.enable_thinking is False


# --- generation ----------------------------------------------------------------------------------
def test_chat_greedy_mtp_on_equals_off(chat_model):
    m = chat_model(GLM46)
    on = m.chat(SYS_USER, 40, mtp=True, spec=mtpllama.SpecConfig(3, 0.0, adaptive=False))
    off = m.chat(SYS_USER, 40, mtp=False)
    assert on.tokens == off.tokens and on.text == off.text
    assert (on.message.content, on.message.reasoning_content) == (off.message.content, off.message.reasoning_content)
    assert [(t.name, t.arguments) for t in on.message.tool_calls] == [(t.name, t.arguments) for t in off.message.tool_calls]
    assert sum(on.stats.drafted) > 0 and sum(off.stats.drafted) == 0


def test_chat_feeds_the_rendering(chat_model):
    m = chat_model(GLM46)
    with m.session() as s:
        r = s.chat(SYS_USER, 8, thinking=True)
    with m.chat_prompt(SYS_USER, thinking=True) as p:
        assert r.prompt == p.prompt
    ids = m.tokenize(r.prompt, add_special=True, parse_special=True)
    assert r.prompt_tokens == len(ids)
    assert ids[:2] == m.tokenize("[gMASK]<sop>", parse_special=True)  # special tokens, not their bytes
    with m.session() as s:
        ref = s.generate(ids, 8)
    assert r.tokens == ref.tokens and r.text == ref.text
    assert r.finish_reason in ("stop", "length", "tool_calls")


def test_chat_stream_matches_chat(chat_model):
    m = chat_model(GLM46)
    with m.session() as s:
        whole = s.chat(SYS_USER, 30, thinking=False)
        s.reset()
        stream = s.chat_stream(SYS_USER, 30, thinking=False)
        deltas = list(stream)
    r = stream.result
    assert r.message == whole.message and r.tokens == whole.tokens
    assert "".join(d.content for d in deltas) == r.message.content
    assert "".join(d.reasoning_content for d in deltas) == r.message.reasoning_content
    assert r.message.to_dict()["role"] == "assistant"


def test_chat_sampling_options(chat_model):
    m = chat_model(GLM46)
    a = m.chat(SYS_USER, 20, temperature=0.9, top_p=0.9, top_k=20, min_p=0.01, seed=7, mtp=False)
    b = m.chat(SYS_USER, 20, temperature=0.9, top_p=0.9, top_k=20, min_p=0.01, seed=7, mtp=False)
    assert a.tokens == b.tokens  # one seed, one output
    c = m.chat(SYS_USER, 20, stop=[a.text[3:6]], temperature=0.9, top_p=0.9, top_k=20, min_p=0.01, seed=7,
               mtp=False) if len(a.text) > 8 else None
    if c is not None:
        assert c.stop_reason == "stop" and c.text == a.text[:a.text.find(a.text[3:6])]


def test_cancel_ends_a_chat_stream(chat_model):
    m = chat_model(GLM46)
    with m.session() as s:
        stream = s.chat_stream(SYS_USER, 200, thinking=False)
        next(stream, None)
        s.cancel()
        list(stream)
        assert stream.result.finish_reason in ("cancelled", "stop", "tool_calls", "length")
        again = s.chat(SYS_USER, 5, thinking=False)  # the session stays usable
        assert again.tokens


# --- prompt-prefix reuse -------------------------------------------------------------------------
def test_second_turn_evaluates_only_its_new_part(chat_model):
    m = chat_model(GLM46)
    with m.session() as s:
        first = s.chat(SYS_USER, 12, thinking=False)
        turn2 = SYS_USER + [first.message.to_dict(), {"role": "user", "content": "And then?"}]
        second = s.chat(turn2, 12, thinking=False)
        st = second.stats
    assert st.cached_tokens > 0
    # every prompt token is either found in the cache, fed, or the one re-evaluated to resume
    assert st.cached_tokens + st.prompt_tokens + st.reevaluated_tokens == second.prompt_tokens
    assert st.reevaluated_tokens == 1
    with m.session() as fresh:
        ref = fresh.chat(turn2, 12, thinking=False)
    assert second.tokens == ref.tokens and ref.stats.cached_tokens == 0
    assert ref.stats.prompt_tokens == ref.prompt_tokens


@pytest.mark.parametrize("mtp", [False, True])
def test_repeated_prompt_reuses_all_but_its_end(glm45, mtp):
    prompt = glm45.tokenize("def foo(x):\n    return x + 1\n\nclass Stack:")
    spec = mtpllama.SpecConfig(3, 0.0, adaptive=False) if mtp else None
    with glm45.session(mtp=mtp) as s:
        a = s.generate(prompt, 16, spec=spec, reuse_prefix=True)
        b = s.generate(prompt, 16, spec=spec, reuse_prefix=True)
        c = s.generate(prompt[:-3] + glm45.tokenize(" import"), 16, spec=spec, reuse_prefix=True)
    assert a.tokens == b.tokens
    assert a.stats.cached_tokens == 0 and a.stats.prompt_tokens == len(prompt)
    assert b.stats.cached_tokens == len(prompt) - 2 and b.stats.prompt_tokens == 1
    assert c.stats.cached_tokens == len(prompt) - 4
    with glm45.session(mtp=mtp) as fresh:
        ref = fresh.generate(prompt[:-3] + glm45.tokenize(" import"), 16, spec=spec)
    assert c.tokens == ref.tokens


def test_reuse_keeps_sampling_reproducible(glm45):
    """The rollback evaluates a token and may draw from the generator; the generation is reseeded
    after it, so a sampled reply with a reused prefix equals the one from a fresh context."""
    prompt = glm45.tokenize("The quick brown fox jumps over")
    sm = mtpllama.SamplingConfig(temperature=1.0, seed=3)
    with glm45.session(mtp=False) as s:
        s.generate(prompt + glm45.tokenize(" the lazy"), 8, sampling=sm, reuse_prefix=True)
        reused = s.generate(prompt, 12, sampling=sm, reuse_prefix=True)
    with glm45.session(mtp=False) as fresh:
        ref = fresh.generate(prompt, 12, sampling=sm)
    assert reused.stats.cached_tokens > 0 and reused.tokens == ref.tokens


def test_message_types():
    msg = ChatMessage(content="hi", reasoning_content="r",
                      tool_calls=(mtpllama.ToolCall("f", '{"a": 1}', "id1"),))
    d = msg.to_dict()
    assert d == {"role": "assistant", "content": "hi", "reasoning_content": "r",
                 "tool_calls": [{"id": "id1", "type": "function", "function": {"name": "f", "arguments": '{"a": 1}'}}]}
    assert ChatMessage().to_dict() == {"role": "assistant", "content": ""}
    assert ONE_THREAD.n_threads == 1
