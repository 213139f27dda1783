"""The grammar checker: GenAI itself compiles each new constraint in a sacrificial pipeline over a
generated one-layer GGUF, because a constraint that fails to compile inside the engine's step() breaks
that pipeline for every request (the first test shows it, so that it says when GenAI stops doing so)."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import pytest

from conftest import require_module
from ovllm_engine import gguf_file
from ovllm_engine.server.grammar_check import GrammarChecker, write_check_model
from ovllm_engine.server.messages import Constraint, Sampling, TaggedSchema, TriggeredTags

GOOD_SCHEMA = Constraint(json_schema=json.dumps({"type": "object", "properties": {"a": {"type": "integer"}}}))


@pytest.fixture(scope="module")
def check_model(tmp_path_factory):
    require_module("openvino_genai", "engine")
    path = tmp_path_factory.mktemp("check") / "check.gguf"
    write_check_model(path)
    return path


def test_the_check_model_is_a_gguf_genai_builds(check_model):
    info = gguf_file.read_info(check_model)
    assert info.architecture == "llama" and info.vocab_size == 257
    assert check_model.stat().st_size < 100_000


def test_a_constraint_that_fails_inside_step_breaks_the_pipeline_for_everyone(smollm2_gguf):
    """Why the checker exists: GenAI 2026.4 compiles in step(), and after one failure every later step
    fails (the real model, as the engine runs it: a request in flight when the bad one arrives)."""
    import numpy as np
    import openvino as ov
    import openvino_genai as ov_genai

    from ovllm_engine.server.engine_process import generation_config

    scheduler = ov_genai.SchedulerConfig()
    scheduler.cache_size = 1
    pipeline = ov_genai.ContinuousBatchingPipeline(str(smollm2_gguf), scheduler, "CPU", {})
    defaults = pipeline.get_config()
    prompt = ov.Tensor(np.array([[1, 9690, 198, 2683, 359, 253, 5356]], dtype=np.int64))
    innocent = pipeline.add_request(0, prompt, generation_config(Sampling(max_new_tokens=30, ignore_eos=True),
                                                                 defaults))
    pipeline.step()  # an innocent request is running
    pipeline.step()
    bad = pipeline.add_request(1, prompt, generation_config(
        Sampling(max_new_tokens=2, constraint=Constraint(regex="(unclosed")), defaults))
    with pytest.raises(RuntimeError, match="parenthesis"):
        pipeline.step()
    bad.cancel()
    with pytest.raises(RuntimeError, match="scheduling phase"):  # the innocent request cannot go on
        for _ in range(40):
            pipeline.step()
            while innocent.can_read():
                innocent.read()
            pipeline.add_request(2, prompt, generation_config(Sampling(max_new_tokens=2), defaults))


def test_the_checker_answers_with_xgrammars_message_and_keeps_checking(check_model):
    async def run():
        checker = GrammarChecker()
        try:
            verdicts = [await checker.check(c) for c in (
                GOOD_SCHEMA,
                Constraint(json_schema=json.dumps({"type": "nonsense"})),
                Constraint(regex="(unclosed"),
                Constraint(grammar="root ::= undefined_rule"),
                Constraint(grammar='root ::= "a" | "b"'),
                Constraint(tags=TriggeredTags(("<tool_call>",), (TaggedSchema(
                    '<tool_call>{"name": "f", "arguments": ', '{"type": "object"}', "}</tool_call>"),))),
                Constraint(tags=TriggeredTags(("<other>",), (TaggedSchema("<tool_call>", "{}", "}"),))),
            )]
            again = await checker.check(Constraint(regex="(unclosed"))
            scratch = Path(checker._scratch)
            assert (scratch / "check.gguf").exists() or any(scratch.iterdir())
            return verdicts, again, len(checker._verdicts), scratch
        finally:
            checker.close()

    verdicts, again, remembered, scratch = asyncio.run(run())
    assert not scratch.exists()  # the helper is killed on close: its directory goes with it
    assert verdicts[0] is None and verdicts[4] is None and verdicts[5] is None, verdicts
    assert verdicts[1] == 'Unsupported type "nonsense"'
    assert "parenthesis is not closed" in verdicts[2] and "Rule \"undefined_rule\" is not defined" in verdicts[3]
    assert verdicts[6] is not None  # a tag that no trigger begins
    for verdict in filter(None, verdicts):
        assert ".cc:" not in verdict and ".cpp:" not in verdict and not verdict.startswith("["), verdict
    assert again == verdicts[2] and remembered == 7


def test_a_constraint_that_takes_too_long_is_refused_and_the_checker_recovers(check_model):
    async def run():
        checker = GrammarChecker(timeout=0.001)
        slow = await checker.check(Constraint(json_schema=json.dumps({"type": "object", "title": "slow"})))
        checker.timeout = 60
        fine = await checker.check(GOOD_SCHEMA)
        checker.close()
        return slow, fine

    slow, fine = asyncio.run(run())
    assert slow == "it did not compile within 0.001s"
    assert fine is None


def test_with_the_served_models_tokenizer_and_a_client_that_goes_away_mid_check(smollm2_gguf):
    """The helper compiles against the served model's vocabulary. A check whose client disconnects
    (its handler cancelled) still runs to its end before the next one starts: the next verdict is
    the next constraint's own."""
    props = {f"p{i}": {"type": "string", "pattern": "[a-z]+[0-9]{2}"} for i in range(60)}
    slow = Constraint(json_schema=json.dumps({"type": "object", "properties": props, "required": list(props)}))

    async def run():
        checker = GrammarChecker(str(smollm2_gguf), 49152, timeout=60)
        try:
            assert await checker.check(GOOD_SCHEMA) is None  # started, built, warm
            abandoned = asyncio.ensure_future(checker.check(slow))
            await asyncio.sleep(0.01)
            abandoned.cancel()
            bad = await checker.check(Constraint(grammar="root ::= undefined_rule"))
            good = await checker.check(Constraint(regex="[A-Z][a-z]+"))
            return bad, good, checker._verdicts.get(slow, "not remembered")
        finally:
            checker.close()

    bad, good, slow_verdict = asyncio.run(run())
    assert bad is not None and "undefined_rule" in bad
    assert good is None and slow_verdict is None
