"""Structured output and tools with the real clients against `ovllm serve` on the real model
(SmolLM2-135M-Instruct from its GGUF): the openai SDK's `parse` and streamed tool calls, LangChain's
`with_structured_output` and a `bind_tools` loop, the Node SDK. Where the format is what is tested the
output is constrained (so it holds with any model); where the model's choice is (tool_choice auto), the
real model makes it."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
from pathlib import Path

import httpx
import pydantic
import pytest
from test_bad_input import assert_openai_error

from conftest import Server, require, require_module

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

NAME = "smol"
NODE_DIR = Path(__file__).resolve().parent / "node"
WEATHER = {"type": "function", "function": {
    "name": "get_weather", "description": "The weather of a city",
    "parameters": {"type": "object", "properties": {"city": {"type": "string"},
                                                    "unit": {"type": "string", "enum": ["celsius", "fahrenheit"]}},
                   "required": ["city", "unit"], "additionalProperties": False}}}
TIME = {"type": "function", "function": {
    "name": "get_time", "description": "The local time of a city",
    "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}}
ASK = [{"role": "user", "content": "What is the weather in Paris?"}]
CALL = '<tool_call>\n{"name": "get_weather", "arguments": {"city": "%s", "unit": "celsius"}}\n</tool_call>'
# Two earlier turns in which the assistant called the tool: the 135M model then calls it on its own.
FEW_SHOT = [
    {"role": "system", "content": "Answer every weather question with a tool call and nothing else."},
    {"role": "user", "content": "Weather in Rome?"}, {"role": "assistant", "content": CALL % "Rome"},
    {"role": "user", "content": "Weather in Berlin?"}, {"role": "assistant", "content": CALL % "Berlin"},
    {"role": "user", "content": "Weather in Paris?"},
]


class City(pydantic.BaseModel):
    """Strings, an enum and a boolean: SmolLM2 writes unbounded integers digit after digit."""

    model_config = pydantic.ConfigDict(extra="forbid")
    name: str
    country: str
    continent: str
    is_capital: bool


class Weather(pydantic.BaseModel):
    model_config = pydantic.ConfigDict(extra="forbid")
    city: str
    unit: str


def city_schema() -> dict:
    return {"type": "object", "properties": {"name": {"type": "string"}, "country": {"type": "string"},
                                             "size": {"type": "string", "enum": ["small", "medium", "large"]},
                                             "is_capital": {"type": "boolean"}},
            "required": ["name", "country", "size", "is_capital"], "additionalProperties": False}


def valid_city(text: str) -> dict:
    value = json.loads(text)
    assert set(value) == {"name", "country", "size", "is_capital"}, value
    assert isinstance(value["name"], str) and isinstance(value["country"], str), value
    assert value["size"] in ("small", "medium", "large") and isinstance(value["is_capital"], bool), value
    return value


@pytest.fixture(scope="module")
def server(smollm2_gguf, tmp_path_factory):
    """The real model with no tool-call parser (its template implies none)."""
    started = Server(smollm2_gguf, "--served-model-name", NAME, "--max-model-len", "2048",
                     log_path=tmp_path_factory.mktemp("structured") / "server.log")
    try:
        yield started.wait_ready(timeout=300)
    finally:
        started.stop()


@pytest.fixture(scope="module")
def parsing_server(smollm2_gguf, tmp_path_factory):
    """The real model with vLLM's flags for tool calls (hermes) and reasoning (qwen3)."""
    started = Server(smollm2_gguf, "--served-model-name", NAME, "--max-model-len", "2048",
                     "--enable-auto-tool-choice", "--tool-call-parser", "hermes", "--reasoning-parser", "qwen3",
                     log_path=tmp_path_factory.mktemp("parsing") / "server.log")
    try:
        yield started.wait_ready(timeout=300)
    finally:
        started.stop()


def post(server: Server, path: str, body: dict) -> httpx.Response:
    return httpx.post(server.base_url + path, json={"model": NAME, **body}, timeout=120)


def events(response: httpx.Response) -> list[dict]:
    assert response.status_code == 200, response.text[:500]
    lines = [line[len("data: "):] for line in response.text.splitlines() if line.startswith("data: ")]
    assert lines[-1] == "[DONE]", lines[-3:]
    return [json.loads(line) for line in lines[:-1]]


# -- response_format and vLLM's structured outputs -----------------------------------------------

def test_the_openai_sdk_parses_a_pydantic_model(server):
    completion = server.client().chat.completions.parse(
        model=NAME, messages=[{"role": "user", "content": "Describe Paris as a JSON object."}], response_format=City,
        max_tokens=120, temperature=0)
    choice = completion.choices[0]
    assert choice.finish_reason == "stop", choice
    assert isinstance(choice.message.parsed, City), choice.message
    assert choice.message.parsed.name, choice.message.parsed


def test_json_schema_holds_when_streamed_sampled_and_with_n(server):
    body = {"messages": [{"role": "user", "content": "Describe a city as JSON."}], "max_tokens": 150, "n": 3,
            "temperature": 1.0, "seed": 7, "stream": True,
            "response_format": {"type": "json_schema", "json_schema": {"name": "city", "schema": city_schema()}}}
    texts: dict[int, str] = {}
    finish: dict[int, str] = {}
    for event in events(post(server, "/v1/chat/completions", body)):
        for choice in event["choices"]:
            texts[choice["index"]] = texts.get(choice["index"], "") + (choice["delta"].get("content") or "")
            finish[choice["index"]] = choice["finish_reason"] or finish.get(choice["index"])
    assert sorted(texts) == [0, 1, 2]
    for index, text in texts.items():
        if finish[index] == "stop":
            valid_city(text)
    assert list(finish.values()).count("stop") >= 2, finish


def test_json_object_and_completions_response_format(server):
    chat = post(server, "/v1/chat/completions", {"messages": [{"role": "user", "content": "Describe Paris as JSON."}],
                                                  "response_format": {"type": "json_object"}, "max_tokens": 100,
                                                  "temperature": 0}).json()
    assert chat["choices"][0]["finish_reason"] == "stop", chat
    assert isinstance(json.loads(chat["choices"][0]["message"]["content"]), dict), chat
    completion = post(server, "/v1/completions", {"prompt": "A JSON object describing Paris:", "max_tokens": 100,
                                                  "temperature": 0, "guided_json": city_schema()}).json()
    assert completion["choices"][0]["finish_reason"] == "stop", completion
    valid_city(completion["choices"][0]["text"])


@pytest.mark.parametrize("fields", [
    {"guided_choice": ["yes", "no"]},
    {"structured_outputs": {"choice": ["yes", "no"]}},
])
def test_vllm_guided_choice(server, fields):
    answer = post(server, "/v1/chat/completions", {"messages": [{"role": "user", "content": "Is Paris in France?"}],
                                                   "max_tokens": 5, "temperature": 0, **fields}).json()
    assert answer["choices"][0]["message"]["content"] in ("yes", "no"), answer


def test_vllm_guided_regex_and_grammar(server):
    regex = post(server, "/v1/chat/completions", {
        "messages": [{"role": "user", "content": "Give me a date."}], "max_tokens": 20, "temperature": 0,
        "guided_regex": r"20[0-9]{2}-(0[1-9]|1[0-2])-[0-2][0-9]"}).json()
    assert re.fullmatch(r"20\d{2}-(0[1-9]|1[0-2])-[0-2]\d", regex["choices"][0]["message"]["content"]), regex
    grammar = 'root ::= answer " " city\nanswer ::= "Capital:"\ncity ::= [A-Z] [a-z]+'
    answer = post(server, "/v1/chat/completions", {
        "messages": [{"role": "user", "content": "The capital of France?"}], "max_tokens": 12, "temperature": 0,
        "structured_outputs": {"grammar": grammar}}).json()
    content = answer["choices"][0]["message"]["content"]
    assert re.fullmatch(r"Capital: [A-Z][a-z]+", content), answer


# -- tools ----------------------------------------------------------------------------------------

def test_required_and_named_tool_choices_give_calls_that_validate(server):
    client = server.client()
    required = client.chat.completions.create(model=NAME, messages=ASK, tools=[WEATHER, TIME], tool_choice="required",
                                              parallel_tool_calls=False, max_tokens=80, temperature=0)
    choice = required.choices[0]
    assert choice.finish_reason == "tool_calls", choice
    (call,) = choice.message.tool_calls
    assert call.type == "function" and call.id.startswith("call_") and call.function.name in ("get_weather", "get_time")
    assert isinstance(json.loads(call.function.arguments), dict)
    named = client.chat.completions.create(model=NAME, messages=ASK, tools=[WEATHER, TIME], max_tokens=80,
                                           temperature=0,
                                           tool_choice={"type": "function", "function": {"name": "get_weather"}})
    (call,) = named.choices[0].message.tool_calls
    assert call.function.name == "get_weather"
    weather = Weather.model_validate_json(call.function.arguments)
    assert weather.unit in ("celsius", "fahrenheit")
    assert named.choices[0].finish_reason == "stop"  # OpenAI's answer to a forced function


def test_streamed_tool_calls_are_reassembled_by_the_openai_sdk(server):
    client = server.client()
    with client.chat.completions.stream(model=NAME, messages=ASK, tools=[WEATHER], max_tokens=80, temperature=0,
                                        tool_choice={"type": "function", "function": {"name": "get_weather"}},
                                        stream_options={"include_usage": True}) as stream:
        chunks = list(stream)
        final = stream.get_final_completion()
    (call,) = final.choices[0].message.tool_calls
    assert call.function.name == "get_weather" and call.id.startswith("call_")
    Weather.model_validate_json(call.function.arguments)
    deltas = [c.chunk.choices[0].delta for c in chunks if c.type == "chunk" and c.chunk.choices]
    firsts = [d.tool_calls[0] for d in deltas if d.tool_calls and d.tool_calls[0].id]
    assert len(firsts) == 1 and firsts[0].function.name == "get_weather" and firsts[0].type == "function"
    named_twice = [d for d in deltas if d.tool_calls and d.tool_calls[0].function.name and not d.tool_calls[0].id]
    assert not named_twice, "the name goes out once, with the call's id"
    usage_chunks = [c.chunk for c in chunks if c.type == "chunk"]
    assert all(c.usage is None for c in usage_chunks[:-1]) and usage_chunks[-1].usage.completion_tokens > 0


def test_the_model_calls_a_tool_on_its_own_streamed_and_not(parsing_server):
    """tool_choice auto with the hermes parser: the real model chooses to call (after two examples).
    Thinking is off, as a Qwen3 client turns it off: with it on, an answer without </think> is reasoning."""
    body = {"messages": FEW_SHOT, "tools": [WEATHER], "max_tokens": 80, "temperature": 0,
            "chat_template_kwargs": {"enable_thinking": False}}
    answer = post(parsing_server, "/v1/chat/completions", body).json()
    choice = answer["choices"][0]
    assert choice["finish_reason"] == "tool_calls", answer
    (call,) = choice["message"]["tool_calls"]
    assert call["function"]["name"] == "get_weather"
    assert json.loads(call["function"]["arguments"])["city"] == "Paris"
    streamed = events(post(parsing_server, "/v1/chat/completions", {**body, "stream": True}))
    calls = [c["delta"]["tool_calls"][0] for e in streamed for c in e["choices"] if "tool_calls" in c["delta"]]
    assert calls[0]["index"] == 0 and calls[0]["type"] == "function" and calls[0]["id"].startswith("call_")
    assert calls[0]["function"] == {"name": "get_weather", "arguments": ""}
    assert all("id" not in c and "name" not in c["function"] for c in calls[1:]), calls
    arguments = "".join(c["function"]["arguments"] for c in calls)
    assert json.loads(arguments) == json.loads(call["function"]["arguments"])
    assert streamed[-1]["choices"][0]["finish_reason"] == "tool_calls"


def test_auto_without_a_parser_is_refused_and_tools_without_a_choice_mean_auto(server):
    error = assert_openai_error(post(server, "/v1/chat/completions", {"messages": ASK, "tools": [WEATHER]}), 400,
                                "tool_choice")
    assert "--tool-call-parser" in error["message"]
    none = post(server, "/v1/chat/completions", {"messages": ASK, "tools": [WEATHER], "tool_choice": "none",
                                                 "max_tokens": 8}).json()
    assert none["choices"][0]["message"]["tool_calls"] == [] and none["choices"][0]["message"]["content"]


def test_langchain_structured_output_and_a_tool_loop(server):
    require_module("langchain_openai", "test")
    from langchain_core.messages import HumanMessage, ToolMessage
    from langchain_core.tools import tool
    from langchain_openai import ChatOpenAI

    @tool
    def get_weather(city: str) -> str:
        """The weather of a city."""
        return f"Sunny, 21 degrees in {city}"

    llm = ChatOpenAI(model=NAME, base_url=server.base_url + "/v1", api_key="unused", temperature=0, max_tokens=120,
                     max_retries=0)
    city = llm.with_structured_output(City).invoke("Describe Paris.")
    assert isinstance(city, City) and city.name
    messages = [HumanMessage("What is the weather in Paris?")]
    ai = llm.bind_tools([get_weather], tool_choice="get_weather").invoke(messages)
    (call,) = ai.tool_calls
    assert call["name"] == "get_weather" and isinstance(call["args"]["city"], str)
    messages += [ai, ToolMessage(get_weather.invoke(call["args"]), tool_call_id=call["id"])]
    final = llm.invoke(messages)  # the history carries the assistant's tool_calls and the tool's answer
    assert isinstance(final.content, str) and final.content
    assert final.response_metadata["finish_reason"] in ("stop", "length")


def test_the_node_sdk_reassembles_a_streamed_tool_call(server):
    node = shutil.which("node")
    require(node is not None, "Node.js (node) for the Node SDK test")
    require((NODE_DIR / "node_modules" / "openai").is_dir(),
            "the Node SDK: npm ci --prefix tests/engine/node (make install-test runs it)")
    result = subprocess.run([node, str(NODE_DIR / "stream_tool_call.mjs")], capture_output=True, text=True,
                            timeout=120, env={**os.environ, "BASE_URL": server.base_url + "/v1", "MODEL": NAME})
    assert result.returncode == 0, result.stderr
    answer = json.loads(result.stdout.strip().splitlines()[-1])
    (call,) = answer["tool_calls"]
    assert call["function"]["name"] == "get_weather" and call["type"] == "function"
    Weather.model_validate_json(call["function"]["arguments"])
    assert answer["chunks"] >= 3


# -- reasoning ------------------------------------------------------------------------------------

def test_reasoning_goes_to_reasoning_content_streamed_too(parsing_server):
    """qwen3: the answer's <think> block (written here under a regex, so the format holds) is
    reasoning_content, the rest content."""
    body = {"messages": [{"role": "user", "content": "The capital of France?"}], "max_tokens": 40, "temperature": 0,
            "guided_regex": r"<think>[a-z ]{5,30}</think>The capital is [A-Z][a-z]+\."}
    message = post(parsing_server, "/v1/chat/completions", body).json()["choices"][0]["message"]
    assert re.fullmatch(r"[a-z ]{5,30}", message["reasoning_content"]), message
    assert re.fullmatch(r"The capital is [A-Z][a-z]+\.", message["content"]), message
    streamed = events(post(parsing_server, "/v1/chat/completions", {**body, "stream": True}))
    deltas = [c["delta"] for e in streamed for c in e["choices"]]
    assert "".join(d.get("reasoning_content", "") for d in deltas) == message["reasoning_content"]
    assert "".join(d.get("content", "") for d in deltas) == message["content"]


# -- what else clients send -----------------------------------------------------------------------

def test_models_retrieve_tokenize_and_detokenize(server):
    client = server.client()
    assert client.models.retrieve(NAME).id == NAME
    assert_openai_error(httpx.get(server.base_url + "/v1/models/other", timeout=30), 404, "model", "model_not_found")
    tokens = post(server, "/tokenize", {"prompt": "The capital of France"}).json()
    assert tokens["count"] == len(tokens["tokens"]) > 2 and tokens["max_model_len"] == 2048
    assert post(server, "/detokenize", {"tokens": tokens["tokens"]}).json()["prompt"] == "The capital of France"
    chat = post(server, "/tokenize", {"messages": ASK}).json()
    completion = server.client().chat.completions.create(model=NAME, messages=ASK, max_tokens=1)
    assert chat["count"] == completion.usage.prompt_tokens
    assert_openai_error(post(server, "/detokenize", {"tokens": [10**6]}), 400, "tokens")


def test_echo_and_top_1_logprobs(server):
    client = server.client()
    prompt = "The capital of France is"
    completion = client.completions.create(model=NAME, prompt=prompt, max_tokens=4, temperature=0, echo=True,
                                           logprobs=1)
    choice = completion.choices[0]
    assert choice.text.startswith(prompt) and len(choice.text) > len(prompt)
    logprobs = choice.logprobs
    prompt_tokens = completion.usage.prompt_tokens
    assert len(logprobs.tokens) == prompt_tokens + completion.usage.completion_tokens
    assert logprobs.token_logprobs[0] is None and all(lp <= 0 for lp in logprobs.token_logprobs[1:])
    assert logprobs.text_offset[0] == 0 and logprobs.text_offset == sorted(logprobs.text_offset)
    generated = logprobs.tokens[prompt_tokens:]
    assert all(top == {token: lp} for top, token, lp in zip(logprobs.top_logprobs[prompt_tokens:], generated,
                                                            logprobs.token_logprobs[prompt_tokens:], strict=True))
    chat = client.chat.completions.create(model=NAME, messages=ASK, max_tokens=4, temperature=0, logprobs=True,
                                          top_logprobs=1)
    for entry in chat.choices[0].logprobs.content:
        assert [(t.token, t.logprob) for t in entry.top_logprobs] == [(entry.token, entry.logprob)]
    streamed = "".join(c.choices[0].text for c in client.completions.create(
        model=NAME, prompt=prompt, max_tokens=4, temperature=0, echo=True, stream=True))
    assert streamed == choice.text


def test_bad_structured_requests_are_400s_naming_the_field_and_the_server_keeps_serving(server):
    chat = "/v1/chat/completions"
    hello = [{"role": "user", "content": "hi"}]

    def schema(value) -> dict:
        return {"messages": hello, "response_format": {"type": "json_schema",
                                                       "json_schema": {"name": "x", "schema": value}}}

    cases = [
        (schema({"type": "nonsense"}), "response_format.json_schema.schema"),
        (schema({"type": "object", "properties": {"a": {"$ref": "#/$defs/missing"}}}),
         "response_format.json_schema.schema"),
        (schema({"type": "object", "description": "x" * (1024 * 1024)}), "response_format.json_schema.schema"),
        ({"messages": hello, "guided_json": "{not json"}, "guided_json"),
        ({"messages": hello, "guided_regex": "(unclosed"}, "guided_regex"),
        ({"messages": hello, "guided_grammar": "root ::= undefined_rule"}, "guided_grammar"),
        ({"messages": hello, "guided_regex": "a", "response_format": {"type": "json_object"}}, "guided_regex"),
        ({"messages": hello, "tools": [{"type": "function", "function": {"description": "no name"}}]},
         "tools.0.function.name"),
        ({"messages": hello, "tools": [{"type": "function", "function": {"name": "bad name!"}}]},
         "tools.0.function.name"),
        ({"messages": [*hello, {"role": "tool", "content": "42"}]}, "messages.1.tool_call_id"),
        ({"messages": hello, "tools": [{"type": "function", "function": {"name": f"f{i}"}} for i in range(200)]},
         "tools"),
        ({"messages": hello, "tools": [WEATHER], "tool_choice": {"type": "function", "function": {"name": "nope"}}},
         "tool_choice"),
        ({"messages": hello, "tools": [{"type": "function", "function": {
            "name": "broken", "parameters": {"type": "object", "properties": {"a": {"type": "nonsense"}}}}}],
          "tool_choice": "required"}, "tools"),
        ({"messages": hello, "guided_json": {"type": "integer", "minimum": int("9" * 400)}}, "guided_json"),
        ({"messages": hello, "tools": [{"type": "function", "function": {"name": "f", "parameters": {
            "type": "string"}}}], "tool_choice": "required"}, "tools.0.function.parameters"),
        ({"messages": hello, "chat_template_kwargs": {"messages": [{"role": "user", "content": "injected"}]}},
         "chat_template_kwargs.messages"),
        ({"messages": hello, "guided_regex": "[a-z]+", "ignore_eos": True}, "ignore_eos"),
        ({"messages": hello, "guided_regex": "[a-z]+", "logprobs": True, "top_logprobs": 1, "temperature": 0},
         "top_logprobs"),
        ({"messages": hello, "stream": True, "stream_options": {"continuous_usage_stats": True}},
         "stream_options.continuous_usage_stats"),
        ({"messages": hello, "logprobs": True, "top_logprobs": 2}, "top_logprobs"),
        ({"messages": hello, "logprobs": True, "top_logprobs": 1, "temperature": 1.0}, "top_logprobs"),
    ]
    engine = server.engine_pid()
    for body, param in cases:
        error = assert_openai_error(post(server, chat, body), 400, param)
        assert error["code"] is None or isinstance(error["code"], str), error
        assert "Traceback" not in error["message"] and ".cc:" not in error["message"], error
    valid = post(server, chat, {**schema(city_schema()), "max_tokens": 120, "temperature": 0}).json()
    valid_city(valid["choices"][0]["message"]["content"])
    plain = server.client().chat.completions.create(model=NAME, messages=ASK, max_tokens=12, temperature=0)
    assert plain.choices[0].message.content
    assert "Traceback" not in server.log()
    assert server.process.poll() is None and server.engine_pid() == engine, "the engine process was replaced"
