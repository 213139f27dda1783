"""Reasoning and tool-call parsers on realistic model outputs, whole and streamed (no model, no server).

The streaming properties cut the same output at random points: what the stream sends must equal what
parsing the whole output gives, however the pieces fall.
"""

from __future__ import annotations

import json

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ovllm_engine.server.reasoning import REASONING_PARSERS, THINK_END, THINK_START, ReasoningParser
from ovllm_engine.server.tool_parsers import (
    TOOL_PARSERS,
    CallDone,
    ContentDelta,
    ToolCall,
    ToolParser,
    detect,
)

# --- helpers -------------------------------------------------------------------------------------


def cut(text: str, points: list[int]) -> list[str]:
    """`text` cut at `points` (any order, repeats allowed: empty pieces are legal deltas)."""
    bounds = [0, *sorted(points), len(text)]
    return [text[a:b] for a, b in zip(bounds, bounds[1:], strict=False)]


def stream_reasoning(parser: ReasoningParser, pieces: list[str]) -> tuple[str, str]:
    stream = parser.stream()
    deltas = [stream.feed(piece) for piece in pieces] + [stream.finish()]
    return "".join(r for r, _ in deltas), "".join(c for _, c in deltas)


def stream_tools(parser: ToolParser, pieces: list[str]) -> tuple[str, list[ToolCall]]:
    stream = parser.stream()
    events = [event for piece in pieces for event in stream.feed(piece)] + stream.finish()
    content = "".join(event.text for event in events if isinstance(event, ContentDelta))
    return content, [event.call for event in events if isinstance(event, CallDone)]


def args(call: ToolCall) -> dict:
    return json.loads(call.arguments)


qwen3 = REASONING_PARSERS["qwen3"]
deepseek_r1 = REASONING_PARSERS["deepseek_r1"]
hermes = TOOL_PARSERS["hermes"]()
llama = TOOL_PARSERS["llama3_json"]()
mistral = TOOL_PARSERS["mistral"]()


# --- reasoning -----------------------------------------------------------------------------------

# Qwen3-0.6B with thinking on: the model writes <think> itself.
QWEN3_OUTPUT = "<think>\nThe user asks for 2+2. That is 4.\n</think>\n\nThe answer is **4**."


def test_reasoning_parser_names_are_vllms():
    assert sorted(REASONING_PARSERS) == ["deepseek_r1", "qwen3"]


@pytest.mark.parametrize("name", ["qwen3", "deepseek_r1"])
def test_think_block_split_keeps_whitespace_like_vllm(name):
    reasoning, content = REASONING_PARSERS[name]().split(QWEN3_OUTPUT)
    assert reasoning == "\nThe user asks for 2+2. That is 4.\n"
    assert content == "\n\nThe answer is **4**."  # vLLM keeps the newlines after </think>


@pytest.mark.parametrize("name", ["qwen3", "deepseek_r1"])
def test_template_opened_think_block(name):
    # DeepSeek-R1, Qwen3-Thinking-2507 and Qwen3.5 put <think> in the prompt: only </think> is generated.
    reasoning, content = REASONING_PARSERS[name]().split("Okay, 17 is prime.\n</think>\n\nYes, 17 is prime.")
    assert (reasoning, content) == ("Okay, 17 is prime.\n", "\n\nYes, 17 is prime.")


@pytest.mark.parametrize("name", ["qwen3", "deepseek_r1"])
def test_output_cut_off_before_think_end_is_all_reasoning(name):
    parser = REASONING_PARSERS[name]()
    assert parser.split("<think>\nLet me count the letters: s, t, r") == ("\nLet me count the letters: s, t, r", "")
    assert parser.split("Let me count") == ("Let me count", "")


def test_qwen3_thinking_off_makes_everything_content():
    parser = qwen3(enable_thinking=False)
    assert parser.split("Paris.") == (None, "Paris.")
    assert parser.split(QWEN3_OUTPUT) == (None, QWEN3_OUTPUT)
    assert stream_reasoning(parser, ["<think>a</th", "ink>b"]) == ("", "<think>a</think>b")


def test_deepseek_r1_has_no_thinking_switch():
    assert deepseek_r1(enable_thinking=False).split("r</think>c") == ("r", "c")


def test_empty_think_block_gives_no_reasoning():
    assert qwen3().split("<think>\n\n</think>\n\nHi!") == ("\n\n", "\n\nHi!")
    assert qwen3().split("<think></think>Hi!") == (None, "Hi!")


def test_only_a_leading_think_is_dropped():
    # Leading whitespace before <think> is allowed; a <think> later on is text of the reasoning.
    assert deepseek_r1().split("\n <think>r</think>c") == ("r", "c")
    assert deepseek_r1().split("I said <think> once</think>c") == ("I said <think> once", "c")


def test_only_the_first_think_end_splits():
    assert qwen3().split("<think>a</think>b</think>c") == ("a", "b</think>c")


def test_stream_holds_only_a_possible_tag():
    stream = qwen3().stream()
    assert stream.feed("<th") == ("", "")  # may become <think>
    assert stream.feed("ink>Let me think") == ("Let me think", "")
    assert stream.feed(". Done.</thi") == (". Done.", "")  # "</thi" may become </think>
    assert stream.feed("nk>\n\nIt is ") == ("", "\n\nIt is ")
    assert stream.feed("42.") == ("", "42.")
    assert stream.finish() == ("", "")


def test_stream_releases_a_false_alarm():
    stream = deepseek_r1().stream()
    assert stream.feed("a </thing") == ("a </thing", "")
    assert stream.feed("x </") == ("x ", "")
    assert stream.finish() == ("</", "")  # the output ended inside the think block: reasoning


REASONING_FRAGMENTS = [THINK_START, THINK_END, "<", "</", "<th", "</thi", "think>", ">", " ", "\n", "\n\n", "é", "x"]
reasoning_texts = st.lists(
    st.one_of(st.sampled_from(REASONING_FRAGMENTS), st.text(alphabet="<>/thinkab \n", max_size=6)), max_size=14
).map("".join)


@settings(max_examples=400, deadline=None)
@given(
    text=reasoning_texts,
    name=st.sampled_from(sorted(REASONING_PARSERS)),
    enable_thinking=st.booleans(),
    data=st.data(),
)
def test_reasoning_stream_equals_split_for_any_cuts(text, name, enable_thinking, data):
    """For every parser and switch, any cutting of any output streams exactly what split() gives, and
    finish() only ever has to release an undecided tag (or leading blanks), never real text."""
    parser = REASONING_PARSERS[name](enable_thinking=enable_thinking)
    points = data.draw(st.lists(st.integers(0, len(text)), max_size=8))
    stream = parser.stream()
    deltas = [stream.feed(piece) for piece in cut(text, points)]
    last = stream.finish()
    reasoning = "".join(r for r, _ in [*deltas, last])
    content = "".join(c for _, c in [*deltas, last])
    split_reasoning, split_content = parser.split(text)
    assert (reasoning, content) == (split_reasoning or "", split_content)
    held = "".join(last)
    assert len(held) < len(THINK_END) or THINK_START.startswith(held.lstrip())


# --- tool calls: hermes (Qwen2.5, Qwen3) ---------------------------------------------------------

QWEN25_CALL = (
    "<tool_call>\n"
    '{"name": "get_current_weather", "arguments": {"location": "San Francisco, CA", "unit": "celsius"}}\n'
    "</tool_call>"
)


def test_tool_parser_names_are_vllms():
    assert sorted(TOOL_PARSERS) == ["hermes", "llama3_json", "mistral"]
    assert all(TOOL_PARSERS[name].name == name for name in TOOL_PARSERS)


def test_hermes_single_call():
    content, calls = hermes.extract(QWEN25_CALL)
    assert content == ""
    assert calls == [
        ToolCall("get_current_weather", '{"location": "San Francisco, CA", "unit": "celsius"}'),
    ]


def test_hermes_two_parallel_calls_with_content_before():
    text = (
        "I'll look up both cities.\n\n"
        '<tool_call>\n{"name": "get_weather", "arguments": {"city": "Paris"}}\n</tool_call>\n'
        '<tool_call>\n{"name": "get_weather", "arguments": {"city": "Tokyo"}}\n</tool_call>'
    )
    content, calls = hermes.extract(text)
    assert content == "I'll look up both cities."
    assert [(call.name, args(call)) for call in calls] == [
        ("get_weather", {"city": "Paris"}),
        ("get_weather", {"city": "Tokyo"}),
    ]


def test_qwen3_thinking_then_tool_call():
    output = (
        "<think>\nThe user wants the weather in Berlin. I should call get_weather.\n</think>\n\n"
        '<tool_call>\n{"name": "get_weather", "arguments": {"city": "Berlin", "days": 3}}\n</tool_call>'
    )
    reasoning, rest = qwen3().split(output)
    content, calls = hermes.extract(rest)
    assert reasoning == "\nThe user wants the weather in Berlin. I should call get_weather.\n"
    assert content == ""
    assert calls == [ToolCall("get_weather", '{"city": "Berlin", "days": 3}')]


def test_hermes_braces_and_closing_tags_inside_strings():
    arguments = {
        "code": 'if (x) { return "}"; }\n</tool_call>',
        "nested": {"a": {"b": [1, {"c": "}}]"}]}},
        "quote": 'say \\"hi\\" }',
    }
    text = f"<tool_call>\n{json.dumps({'name': 'run', 'arguments': arguments})}\n</tool_call>\nDone."
    content, calls = hermes.extract(text)
    assert [(call.name, args(call)) for call in calls] == [("run", arguments)]
    assert content == "Done."


def test_hermes_unicode_arguments_are_not_escaped():
    text = '<tool_call>{"name": "translate", "arguments": {"text": "東京は晴れ ☀️", "to": "Ελληνικά"}}</tool_call>'
    _, calls = hermes.extract(text)
    assert calls == [ToolCall("translate", '{"text": "東京は晴れ ☀️", "to": "Ελληνικά"}')]


@pytest.mark.parametrize(
    "body",
    [
        '{"name": "get_weather", "arguments": {"city": "Paris"}',  # brace missing: invalid JSON
        '{"name": "get_weather", "arguments": {city: Paris}}',  # not JSON
        '{"arguments": {"city": "Paris"}}',  # no name
        '{"name": 42, "arguments": {}}',  # name not a string
        '{"name": "get_weather", "arguments": "{\\"city\\": \\"Paris\\"}"}',  # arguments not an object
        '{"name": "get_weather"}',  # no arguments
        '{"name": "f", "arguments": {"x": NaN}}',  # NaN is not JSON
        'get_weather(city="Paris")',
    ],
)
def test_hermes_invalid_call_stays_content(body):
    text = f"Trying.\n<tool_call>\n{body}\n</tool_call>"
    assert hermes.extract(text) == (text.strip(), [])


def test_hermes_valid_call_after_an_invalid_one_is_found():
    text = (
        '<tool_call>{"name": "a", "arguments": [1]}</tool_call>\n<tool_call>{"name": "b", "arguments": {}}</tool_call>'
    )
    content, calls = hermes.extract(text)
    assert content == '<tool_call>{"name": "a", "arguments": [1]}</tool_call>'
    assert calls == [ToolCall("b", "{}")]


def test_hermes_call_without_closing_tag_at_the_end():
    # vLLM takes a last call whose </tool_call> never came (generation stopped at EOS).
    _, calls = hermes.extract('<tool_call>\n{"name": "f", "arguments": {"a": 1}}\n</tool_')
    assert calls == [ToolCall("f", '{"a": 1}')]
    text = '<tool_call>\n{"name": "f", "arguments": {"a": 1'
    assert hermes.extract(text) == (text, [])


def test_hermes_text_between_json_and_closing_tag_is_not_a_call():
    text = '<tool_call>{"name": "f", "arguments": {}} oops</tool_call>'
    assert hermes.extract(text) == (text, [])


def test_hermes_stream_sends_content_at_once_and_the_call_when_complete():
    stream = hermes.stream()
    assert stream.feed("Checking the weather. <tool") == [ContentDelta("Checking the weather. ")]
    assert stream.feed('_call>\n{"name": "get_weather", ') == []
    assert stream.feed('"arguments": {"city": "Oslo"}}\n</tool_call>') == [
        CallDone(ToolCall("get_weather", '{"city": "Oslo"}'))
    ]
    assert stream.feed("\n") == [ContentDelta("\n")]  # cannot begin a call: sent at once
    assert stream.finish() == []


def test_hermes_stream_releases_a_false_start():
    stream = hermes.stream()
    assert stream.feed("a <tool") == [ContentDelta("a ")]
    assert stream.feed("box> b") == [ContentDelta("<toolbox> b")]
    stream = hermes.stream()
    assert stream.feed("<tool_call> I cannot do that") == [ContentDelta("<tool_call> I cannot do that")]


# --- tool calls: llama3_json (Llama 3.1) ---------------------------------------------------------

LLAMA31_CALL = (
    '{"name": "get_current_conditions", "parameters": {"location": "San Francisco, CA", "unit": "Fahrenheit"}}'
)


def test_llama_single_call_with_parameters():
    assert llama.extract(LLAMA31_CALL) == (
        "",
        [ToolCall("get_current_conditions", '{"location": "San Francisco, CA", "unit": "Fahrenheit"}')],
    )


def test_llama_python_tag_and_calls_separated_by_semicolons():
    text = '<|python_tag|>{"name": "a", "parameters": {"x": 1}}; {"name": "b", "arguments": {"y": [2, "}"]}}'
    assert llama.extract(text) == ("", [ToolCall("a", '{"x": 1}'), ToolCall("b", '{"y": [2, "}"]}')])


def test_llama_plain_json_answer_is_content():
    text = '{"answer": 42, "unit": "none"}'
    assert llama.extract(text) == (text, [])


def test_llama_prose_before_json_is_content():
    # vLLM's streaming rule: a call must open the output (its whole-output parser would also find this).
    text = f"Here you go: {LLAMA31_CALL}"
    assert llama.extract(text) == (text, [])


def test_llama_text_after_calls_is_content():
    content, calls = llama.extract(LLAMA31_CALL + "\n\nI have called the tool.")
    assert content == "I have called the tool."
    assert [call.name for call in calls] == ["get_current_conditions"]


def test_llama_invalid_second_call_stays_content():
    content, calls = llama.extract('{"name": "a", "parameters": {}}; {"name": "b", "parameters": 3}')
    assert calls == [ToolCall("a", "{}")]
    assert content == '; {"name": "b", "parameters": 3}'


def test_llama_stream_sends_each_call_when_its_object_closes():
    stream = llama.stream()
    assert stream.feed('{"name": "a", "parameters": {"q": "x}"') == []
    assert stream.feed("}}") == [CallDone(ToolCall("a", '{"q": "x}"}'))]
    assert stream.feed(' ; {"name": "b", "parameters": {}}') == [CallDone(ToolCall("b", "{}"))]
    assert stream.finish() == []
    stream = llama.stream()
    assert stream.feed("Hello {") == [ContentDelta("Hello {")]  # not at the start: content at once


# --- tool calls: mistral -------------------------------------------------------------------------


def test_mistral_array_of_two_calls_with_content_before():
    text = (
        "Let me check both.[TOOL_CALLS] "
        '[{"name": "get_weather", "arguments": {"city": "Paris"}}, {"name": "get_time", "arguments": {"tz": "CET"}}]'
    )
    assert mistral.extract(text) == (
        "Let me check both.",
        [ToolCall("get_weather", '{"city": "Paris"}'), ToolCall("get_time", '{"tz": "CET"}')],
    )


def test_mistral_missing_arguments_are_empty_like_vllm():
    assert mistral.extract('[TOOL_CALLS][{"name": "now"}]') == ("", [ToolCall("now", "{}")])


def test_mistral_v11_form():
    text = '[TOOL_CALLS]get_weather[ARGS]{"city": "Zürich"}[TOOL_CALLS]get_time{"tz": "CET"}'
    assert mistral.extract(text) == (
        "",
        [ToolCall("get_weather", '{"city": "Zürich"}'), ToolCall("get_time", '{"tz": "CET"}')],
    )


@pytest.mark.parametrize(
    "text",
    [
        '[TOOL_CALLS][{"name": "a", "arguments": {}}, {"arguments": {}}]',  # one element is not a call
        '[TOOL_CALLS][{"name": "a", "arguments": {]',
        "[TOOL_CALLS][]",
        "[TOOL_CALLS]get_weather[ARGS]Paris",
        '[TOOL_CALLS]get_weather[ARGS]{"city": Paris}',
        "[TOOL_CALLS] is the marker I would use",
    ],
)
def test_mistral_invalid_calls_stay_content(text):
    assert mistral.extract(text) == (text, [])


def test_mistral_stream_holds_from_the_marker():
    stream = mistral.stream()
    assert stream.feed("Sure. [TOOL_") == [ContentDelta("Sure. ")]
    assert stream.feed("CALLS]get_weather[AR") == []
    assert stream.feed('GS]{"city": "Rome"}') == [CallDone(ToolCall("get_weather", '{"city": "Rome"}'))]


# --- tags, triggers, detection -------------------------------------------------------------------

SCHEMA = {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}


def test_tags_are_vllms_formats():
    assert hermes.tag("get_weather", SCHEMA) == (
        '<tool_call>\n{"name": "get_weather", "arguments": ',
        "}\n</tool_call>",
    )
    assert llama.tag("get_weather", SCHEMA) == ('{"name": "get_weather", "parameters": ', "}")
    assert mistral.tag("get_weather", SCHEMA) == ('[TOOL_CALLS][{"name": "get_weather", "arguments": ', "}]")
    assert hermes.triggers() == ["<tool_call>"]
    assert llama.triggers() == ['{"name"']
    assert mistral.triggers() == ["[TOOL_CALLS]"]


@pytest.mark.parametrize("name", sorted(TOOL_PARSERS))
@pytest.mark.parametrize("tool", ["get_weather", 'odd "name"\\ü'])
def test_tagged_call_parses_back(name, tool):
    """What a model constrained by tag() writes is parsed back into the same call."""
    parser = TOOL_PARSERS[name]()
    begin, end = parser.tag(tool, SCHEMA)
    assert any(begin.startswith(trigger) for trigger in parser.triggers())
    arguments = {"city": "Köln", "note": "a } b"}
    assert parser.extract(begin + json.dumps(arguments, ensure_ascii=False) + end) == (
        "",
        [ToolCall(tool, json.dumps(arguments, ensure_ascii=False))],
    )


@pytest.mark.parametrize(
    ("template", "expected"),
    [
        ("{% for tool in tools %}<tools>{{ tool }}</tools>{% endfor %}<tool_call>", "hermes"),
        ("{{ '[AVAILABLE_TOOLS]' }}{% if message.tool_calls %}[TOOL_CALLS]{% endif %}", "mistral"),
        ("{{- '<|python_tag|>' + tool_call.name }}", "llama3_json"),
        ("<|start_header_id|>{{ role }}<|end_header_id|>{% if tools %}{{ tools | tojson }}{% endif %}", "llama3_json"),
        ("<|start_header_id|>{{ role }}<|end_header_id|>{{ content }}", None),
        ("<|im_start|>{{ role }}\n{{ content }}<|im_end|>", None),
    ],
)
def test_detect(template, expected):
    assert detect(template) == expected


# --- streaming property --------------------------------------------------------------------------

TOOL_FRAGMENTS = {
    "hermes": [
        QWEN25_CALL,
        '<tool_call>\n{"name": "f", "arguments": {"s": "}</tool_call>{"}}\n</tool_call>',
        '<tool_call>{"name": "f", "arguments": {"x": NaN}}</tool_call>',
        '<tool_call>{"name": "g", "arguments": [1]}</tool_call>',
        "<tool_call>",
        "</tool_call>",
        "<tool_",
        "</tool",
        '{"name": "h", "arguments": {}}',
    ],
    "llama3_json": [
        LLAMA31_CALL,
        '{"name": "a", "arguments": {"s": "};{"}}',
        '{"name": 1, "parameters": {}}',
        "<|python_tag|>",
        "<|py",
        ";",
        " ; ",
        '{"answer": 1}',
    ],
    "mistral": [
        '[TOOL_CALLS][{"name": "a", "arguments": {"x": "]}"}}]',
        '[TOOL_CALLS] [{"name": "b"}, {"name": "c", "arguments": {}}]',
        '[TOOL_CALLS]get_weather[ARGS]{"city": "東京"}',
        "[TOOL_CALLS]t{}",
        "[TOOL_CALLS]",
        "[TOOL_",
        "[ARGS]",
        "[AR",
        "[]",
    ],
}
COMMON_FRAGMENTS = ["{", "}", "[", "]", '"', "\\", " ", "\n", "name", "Ünïcödé ✓", "text"]


def tool_texts(name: str) -> st.SearchStrategy[str]:
    fragment = st.one_of(
        st.sampled_from(TOOL_FRAGMENTS[name] + COMMON_FRAGMENTS),
        st.text(alphabet='{}[]";: <>/_atoln\\', max_size=6),
    )
    return st.lists(fragment, max_size=10).map("".join)


@pytest.mark.parametrize("name", sorted(TOOL_PARSERS))
@settings(max_examples=300, deadline=None)
@given(data=st.data())
def test_tool_stream_equals_extract_for_any_cuts(name, data):
    """Any cutting of any output streams the content and calls that extract() finds in the whole, and
    every call's arguments are the JSON text of an object."""
    parser = TOOL_PARSERS[name]()
    text = data.draw(tool_texts(name))
    points = data.draw(st.lists(st.integers(0, len(text)), max_size=8))
    content, calls = stream_tools(parser, cut(text, points))
    assert (content.strip(), calls) == parser.extract(text)
    for call in calls:
        assert json.dumps(json.loads(call.arguments), ensure_ascii=False) == call.arguments
        assert isinstance(json.loads(call.arguments), dict)


def test_property_fragments_hold_calls():
    """The property above is not vacuous: its fragments alone parse into calls for every format."""
    for name, fragments in TOOL_FRAGMENTS.items():
        _, calls = TOOL_PARSERS[name]().extract(fragments[0])
        assert calls, name
