"""The model's OpenVINO tokenizer in the server process (the engine process sees only token ids).

OpenVINO's tokenizer and chat-template calls hold the GIL for their whole run: a 3.7 MB prompt
takes about a second, during which the event loop would answer nobody (not even /health). Texts
longer than INLINE_CHARS are therefore tokenized in a helper process, started on first need; short
ones, nearly all of them, inline, where a call costs microseconds rather than a round trip.
"""

from __future__ import annotations

import asyncio
import json
import multiprocessing
import signal
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool

# Characters above which a text is tokenized off the event loop (inline, about 3 ms on these cores).
INLINE_CHARS = 16 * 1024


class TemplateError(ValueError):
    """The chat template could not render these messages."""


class Tokenizer:
    def __init__(self, model_dir: str):
        import openvino_genai as ov_genai

        self.model_dir = model_dir
        # One thread: tokenizer calls are small, and an idle-spinning thread pool in this process
        # would take CPU from the engine's inference threads (a decode also runs ~30% faster so).
        self._tokenizer = ov_genai.Tokenizer(model_dir, INFERENCE_NUM_THREADS=1)
        self.chat_template = self._tokenizer.chat_template or ""
        self.has_chat_template = bool(self.chat_template)
        self._pool: ProcessPoolExecutor | None = None

    # -- inline, for short texts and for decoding ----------------------------------------------
    def encode(self, text: str, add_special_tokens: bool = True) -> list[int]:
        ids = self._tokenizer.encode(text, add_special_tokens=add_special_tokens).input_ids
        return [int(i) for i in ids.data[0]]

    def decode(self, ids: list[int]) -> str:
        return self._tokenizer.decode(ids, skip_special_tokens=True) if ids else ""

    def chat_ids(self, messages: list[dict], add_generation_prompt: bool, tools: list[dict] | None = None,
                 extra_context: dict | None = None) -> list[int]:
        try:
            text = self._tokenizer.apply_chat_template(messages, add_generation_prompt=add_generation_prompt,
                                                       tools=tools, extra_context=extra_context)
        except Exception as exc:
            raise TemplateError(str(exc)) from None
        return self.encode(text, add_special_tokens=False)  # the template wrote them already

    # -- off the event loop when long ----------------------------------------------------------
    async def encode_async(self, text: str, max_tokens: int, offload: bool,
                           add_special_tokens: bool = True) -> list[int] | int:
        """The text's token ids; or, for a long text of more than max_tokens tokens, only their count
        (a million ids would cost more to send between processes than to count). offload: in the
        helper, as the caller decides (a request's texts together, against INLINE_CHARS)."""
        if not offload:
            return self.encode(text, add_special_tokens)
        return await self._in_helper(_helper_encode, text, max_tokens, add_special_tokens)

    async def chat_ids_async(self, messages: list[dict], add_generation_prompt: bool, max_tokens: int,
                             tools: list[dict] | None = None, extra_context: dict | None = None) -> list[int] | int:
        """As encode_async, for a chat rendered with the model's template."""
        size = sum(len(m["content"]) for m in messages) + len(json.dumps(tools or [])) + len(json.dumps(
            [m.get("tool_calls") for m in messages]))
        if size <= INLINE_CHARS:
            return self.chat_ids(messages, add_generation_prompt, tools, extra_context)
        return await self._in_helper(_helper_chat_ids, messages, add_generation_prompt, max_tokens, tools,
                                     extra_context)

    async def _in_helper(self, function, *args):
        for attempt in range(2):
            if self._pool is None:
                self._pool = ProcessPoolExecutor(max_workers=1, mp_context=multiprocessing.get_context("spawn"),
                                                 initializer=_helper_start, initargs=(self.model_dir,))
            try:
                return await asyncio.get_running_loop().run_in_executor(self._pool, function, *args)
            except BrokenProcessPool:  # the helper died (killed, out of memory): start a new one, once
                self._pool = None
                if attempt:
                    raise
        raise AssertionError("unreachable")

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=False, cancel_futures=True)
            self._pool = None


# The helper process's tokenizer, loaded once by its initializer.
_helper: Tokenizer | None = None


def _helper_start(model_dir: str) -> None:
    global _helper
    # The server process decides when to stop; a Ctrl-C in its terminal must not kill this one first.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    _helper = Tokenizer(model_dir)


def _ids_or_count(ids: list[int], max_tokens: int) -> list[int] | int:
    return ids if len(ids) <= max_tokens else len(ids)


def _helper_encode(text: str, max_tokens: int, add_special_tokens: bool) -> list[int] | int:
    return _ids_or_count(_helper.encode(text, add_special_tokens), max_tokens)


def _helper_chat_ids(messages: list[dict], add_generation_prompt: bool, max_tokens: int, tools: list[dict] | None,
                     extra_context: dict | None) -> list[int] | int:
    return _ids_or_count(_helper.chat_ids(messages, add_generation_prompt, tools, extra_context), max_tokens)
