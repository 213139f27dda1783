"""OpenAIServer on its own: a fake engine client and a fake tokenizer stand in for the engine process
and OpenVINO's tokenizer, so that what the server sends the engine (typed messages) and what it makes
of the engine's outputs (typed responses) are checked exactly and fast. The real server with the real
engine is tested beside this (test_generation_api.py, test_structured_output.py)."""

from __future__ import annotations

import asyncio
import itertools
import json

from aiohttp.test_utils import TestClient, TestServer

from ovllm_engine.config import EngineConfig
from ovllm_engine.server.api_server import ChatOptions, OpenAIServer
from ovllm_engine.server.messages import Constraint, Output, Sampling
from ovllm_engine.server.metrics import EngineMetrics

HERMES_CALL = '<tool_call>\n{"name": "get_weather", "arguments": {"city": "Paris"}}\n</tool_call>'
WEATHER = {"type": "function", "function": {"name": "get_weather", "parameters": {
    "type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}}


class FakeTokenizer:
    """One token per character: id = code point."""

    has_chat_template = True
    chat_template = "{% for m in messages %}{{ m.content }}{% endfor %}"  # implies no tool parser

    def __init__(self):
        self.rendered: list[tuple[list[dict], list[dict] | None, dict | None]] = []

    def encode(self, text: str, add_special_tokens: bool = True) -> list[int]:
        return [ord(c) for c in text]

    def decode(self, ids: list[int]) -> str:
        return "".join(chr(i) for i in ids)

    async def encode_async(self, text, max_tokens, offload, add_special_tokens=True):
        return self.encode(text)

    async def chat_ids_async(self, messages, add_generation_prompt, max_tokens, tools=None, extra_context=None):
        self.rendered.append((messages, tools, extra_context))
        return self.encode("".join(m["content"] for m in messages))

    def close(self) -> None:
        pass


class FakeEngine:
    """Answers every sequence with `reply` (one Output per character), or with GenAI's refusal."""

    alive = True

    def __init__(self, reply: str = "Paris.", error: str | None = None, prompt_logprobs: bool = False):
        self.reply, self.error, self.prompt_logprobs = reply, error, prompt_logprobs
        self.added: list[tuple[list[int], Sampling]] = []
        self._ids = itertools.count()

    def add(self, prompt_ids: list[int], sampling: Sampling):
        request_id = next(self._ids)
        self.added.append((prompt_ids, sampling))
        queue: asyncio.Queue = asyncio.Queue()
        if self.error:
            queue.put_nowait(Output(request_id, [], None, None, error=self.error))
            return request_id, queue
        for position, char in enumerate(self.reply):
            last = position == len(self.reply) - 1
            prompt = [None, *[-1.0] * (len(prompt_ids) - 1)] if sampling.echo and position == 0 else None
            queue.put_nowait(Output(request_id, [ord(char)], [-0.5] if sampling.logprobs else None,
                                    "stop" if last else None, prompt_logprobs=prompt))
        return request_id, queue

    def abort(self, request_id: int) -> None:
        pass

    def release(self, request_id: int) -> None:
        pass


class FakeGrammar:
    def __init__(self, verdict: str | None = None):
        self.verdict = verdict
        self.checked: list[Constraint] = []

    async def check(self, constraint: Constraint) -> str | None:
        self.checked.append(constraint)
        return self.verdict

    def close(self) -> None:
        pass


def call(engine: FakeEngine, body: dict, path: str = "/v1/chat/completions", grammar: FakeGrammar | None = None,
         chat: ChatOptions | None = None, tokenizer: FakeTokenizer | None = None):
    """POST body to a server around the fakes; (status, JSON body or list of stream events)."""
    config = EngineConfig(model_path="fake", served_model_name="fake", max_model_len=4096, vocab_size=2**20)
    server = OpenAIServer(config, engine, EngineMetrics("fake"), tokenizer or FakeTokenizer(), chat=chat,
                          grammar=grammar or FakeGrammar())

    async def run():
        async with TestClient(TestServer(server.app())) as client:
            response = await client.post(path, json=body)
            text = await response.text()
            return response.status, text

    status, text = asyncio.run(run())
    if body.get("stream"):
        lines = [line[6:] for line in text.splitlines() if line.startswith("data: ")]
        assert lines[-1] == "[DONE]", lines
        return status, [json.loads(line) for line in lines[:-1]]
    return status, json.loads(text)


def test_a_schema_reaches_the_engine_as_a_typed_constraint_after_one_check():
    engine, grammar = FakeEngine('{"a": 1}'), FakeGrammar()
    schema = {"type": "object", "properties": {"a": {"type": "integer"}}}
    status, body = call(engine, {"messages": [{"role": "user", "content": "hi"}], "n": 2, "seed": 5,
                                 "response_format": {"type": "json_schema", "json_schema": {"name": "a",
                                                                                           "schema": schema}}},
                        grammar=grammar)
    assert status == 200, body
    assert grammar.checked == [Constraint(json_schema=json.dumps(schema))]
    samplings = [sampling for _, sampling in engine.added]
    assert [s.constraint for s in samplings] == [Constraint(json_schema=json.dumps(schema))] * 2
    assert [s.seed for s in samplings] == [5, 6]  # n choices from one seed differ
    assert [c["message"]["content"] for c in body["choices"]] == ['{"a": 1}'] * 2


def test_a_constraint_that_does_not_compile_never_reaches_the_engine():
    engine = FakeEngine()
    status, body = call(engine, {"messages": [{"role": "user", "content": "hi"}], "guided_regex": "(x"},
                        grammar=FakeGrammar("Regex parsing error at position 2"))
    assert status == 400 and body["error"]["param"] == "guided_regex", body
    assert "Regex parsing error" in body["error"]["message"] and body["error"]["code"] is None
    assert engine.added == []


def test_guided_choice_is_a_regex_of_the_literal_choices():
    engine = FakeEngine("a.b")
    status, _ = call(engine, {"messages": [{"role": "user", "content": "hi"}], "guided_choice": ["a.b", "c|d"]})
    assert status == 200
    assert engine.added[0][1].constraint == Constraint(regex=r"(a\.b|c\|d)")


def test_required_tools_are_a_json_list_and_come_back_as_calls():
    engine = FakeEngine('[{"name": "get_weather", "parameters": {"city": "Paris"}}, '
                        '{"name": "get_weather", "parameters": {"city": "Rome"}}]')
    tokenizer = FakeTokenizer()
    status, body = call(engine, {"messages": [{"role": "user", "content": "hi"}], "tools": [WEATHER],
                                 "tool_choice": "required"}, tokenizer=tokenizer)
    assert status == 200, body
    schema = json.loads(engine.added[0][1].constraint.json_schema)
    assert schema["type"] == "array" and schema["minItems"] == 1 and "maxItems" not in schema
    choice = body["choices"][0]
    assert choice["finish_reason"] == "tool_calls" and choice["message"]["content"] is None
    assert [json.loads(c["function"]["arguments"]) for c in choice["message"]["tool_calls"]] == [
        {"city": "Paris"}, {"city": "Rome"}]
    assert tokenizer.rendered[0][1] == [WEATHER]  # the template gets the tools


def test_a_named_call_cut_short_stays_text_never_an_invalid_call():
    engine = FakeEngine('{"city": "Par')
    status, body = call(engine, {"messages": [{"role": "user", "content": "hi"}], "tools": [WEATHER],
                                 "tool_choice": {"type": "function", "function": {"name": "get_weather"}}})
    assert status == 200
    assert body["choices"][0]["message"] == {"role": "assistant", "content": '{"city": "Par', "tool_calls": []}


def test_auto_tool_calls_stream_in_openais_delta_format():
    engine = FakeEngine("Sure. " + HERMES_CALL)
    status, events = call(engine, {"messages": [{"role": "user", "content": "hi"}], "tools": [WEATHER],
                                   "stream": True, "stream_options": {"include_usage": True}},
                          chat=ChatOptions(tool_call_parser="hermes"))
    assert status == 200
    assert engine.added[0][1].constraint.tags.triggers == ("<tool_call>",)
    deltas = [c["delta"] for e in events for c in e["choices"]]
    assert "".join(d.get("content", "") for d in deltas).strip() == "Sure."
    calls = [d["tool_calls"][0] for d in deltas if "tool_calls" in d]
    assert calls[0]["index"] == 0 and calls[0]["type"] == "function" and calls[0]["id"].startswith("call_")
    assert calls[0]["function"] == {"name": "get_weather", "arguments": ""}
    assert calls[1] == {"index": 0, "function": {"arguments": '{"city": "Paris"}'}}
    assert [e["choices"][-1]["finish_reason"] for e in events if e["choices"]][-1] == "tool_calls"
    assert all(e["usage"] is None for e in events[:-1]) and events[-1]["usage"]["completion_tokens"] == len(
        engine.reply)


def test_tool_history_reaches_the_template_with_arguments_as_objects():
    tokenizer = FakeTokenizer()
    history = [{"role": "user", "content": "weather?"},
               {"role": "assistant", "content": None, "tool_calls": [{"id": "call_1", "type": "function", "function": {
                   "name": "get_weather", "arguments": '{"city": "Paris"}'}}]},
               {"role": "tool", "tool_call_id": "call_1", "content": "sunny"}]
    status, _ = call(FakeEngine(), {"messages": history, "chat_template_kwargs": {"enable_thinking": False}},
                     tokenizer=tokenizer)
    assert status == 200
    messages, tools, extra = tokenizer.rendered[0]
    assert messages[1]["tool_calls"][0]["function"]["arguments"] == {"city": "Paris"}
    assert messages[2] == {"role": "tool", "content": "sunny", "tool_call_id": "call_1"}
    assert tools is None and extra == {"enable_thinking": False}


def test_reasoning_is_split_off_whole_and_streamed():
    engine = FakeEngine("<think>hmm</think>Paris.")
    options = ChatOptions(reasoning_parser="deepseek_r1")
    status, body = call(engine, {"messages": [{"role": "user", "content": "hi"}]}, chat=options)
    assert body["choices"][0]["message"]["reasoning_content"] == "hmm"
    assert body["choices"][0]["message"]["content"] == "Paris."
    status, events = call(engine, {"messages": [{"role": "user", "content": "hi"}], "stream": True}, chat=options)
    deltas = [c["delta"] for e in events for c in e["choices"]]
    assert "".join(d.get("reasoning_content", "") for d in deltas) == "hmm"
    assert "".join(d.get("content", "") for d in deltas) == "Paris."


def test_genais_refusal_is_the_clients_400():
    status, body = call(FakeEngine(error="max_new_tokens must be greater than 0"),
                        {"messages": [{"role": "user", "content": "hi"}]})
    assert status == 400 and "the engine refused this request" in body["error"]["message"], body


def test_echo_puts_the_prompt_and_its_logprobs_first():
    engine = FakeEngine("cd")
    status, body = call(engine, {"prompt": "ab", "echo": True, "logprobs": 1, "temperature": 0},
                        path="/v1/completions")
    assert status == 200, body
    assert engine.added[0][1].echo and engine.added[0][1].logprobs
    choice = body["choices"][0]
    assert choice["text"] == "abcd"
    assert choice["logprobs"]["tokens"] == ["a", "b", "c", "d"]
    assert choice["logprobs"]["token_logprobs"] == [None, -1.0, -0.5, -0.5]
    assert choice["logprobs"]["text_offset"] == [0, 1, 2, 3]
    assert choice["logprobs"]["top_logprobs"] == [None, {"b": -1.0}, {"c": -0.5}, {"d": -0.5}]
    status, events = call(FakeEngine("cd"), {"prompt": "ab", "echo": True, "logprobs": 0, "stream": True},
                          path="/v1/completions")
    chunks = [e["choices"][0] for e in events]
    assert "".join(c["text"] for c in chunks) == "abcd"
    offsets = [o for c in chunks for o in c["logprobs"]["text_offset"]]
    assert offsets == [0, 1, 2, 3], offsets  # counted from the choice's start, across chunks


def test_models_by_id():
    config = EngineConfig(model_path="fake", served_model_name="fake", max_model_len=4096)
    server = OpenAIServer(config, FakeEngine(), EngineMetrics("fake"), FakeTokenizer(), grammar=FakeGrammar())

    async def run():
        async with TestClient(TestServer(server.app())) as client:
            found = await client.get("/v1/models/fake")
            missing = await client.get("/v1/models/other")
            return found.status, await found.json(), missing.status, await missing.json()

    status, card, missing_status, missing = asyncio.run(run())
    assert status == 200 and card["id"] == "fake" and card["object"] == "model"
    assert missing_status == 404 and missing["error"]["code"] == "model_not_found"
