"""The contract of spec.engine.speculative: the --speculative-config the operator writes is one the
engine parses to the same settings, and the engine's limits are the CRD's."""

from __future__ import annotations

import pytest

from ovllm_cli.main import parse_args
from ovllm_engine import speculative
from ovllm_operator import builders
from ovllm_operator.builders import Resource
from ovllm_operator.spec import SpeculativeSpec


def engine_speculation(spec: dict) -> speculative.SpeculativeConfig:
    resource = Resource.from_body({"metadata": {"name": "chat", "namespace": "ns", "uid": "u"}, "spec": {
        "model": {"hub": "Qwen/Qwen2.5-7B-Instruct"}, "modelCache": {}, "engine": {"speculative": spec}}})
    (container,) = builders.deployment(resource, builders.model_plan(resource))["spec"]["template"]["spec"][
        "containers"]
    return speculative.parse(parse_args(container["args"]).speculative_config)


def test_the_engine_reads_the_operators_ngram_settings():
    config = engine_speculation({"method": "ngram", "numSpeculativeTokens": 16, "promptLookupMax": 8})
    assert (config.method, config.num_speculative_tokens, config.prompt_lookup_max) == ("ngram", 16, 8)
    assert engine_speculation({"method": "ngram"}).prompt_lookup_max == speculative.DEFAULT_PROMPT_LOOKUP_MAX
    assert builders.PROMPT_LOOKUP_MAX == speculative.DEFAULT_PROMPT_LOOKUP_MAX


def test_the_engine_reads_the_operators_converted_draft():
    config = engine_speculation({"method": "draftModel", "numSpeculativeTokens": 1,
                                 "draftModel": {"hub": "Qwen/Qwen2.5-0.5B-Instruct"}})
    assert (config.method, config.num_speculative_tokens) == ("draft_model", 1)
    assert config.model.startswith("/models/Qwen2.5-0.5B-Instruct--int4--")
    assert config.quantization is None  # converted by the operator's Job: the engine converts nothing


@pytest.mark.parametrize(("field", "engine_limit"), [
    ("num_speculative_tokens", speculative.MAX_SPECULATIVE_TOKENS), ("prompt_lookup_max", speculative.MAX_NGRAM),
])
def test_the_crds_limits_are_the_engines(field, engine_limit):
    limits = {meta.le for meta in SpeculativeSpec.model_fields[field].metadata if hasattr(meta, "le")}
    assert limits == {engine_limit}


def test_the_plain_pipeline_under_load_is_the_engines_and_counted_in_memory():
    from ovllm_operator import sizing

    assert sizing.ENGINE_DISABLE_BY_BATCH_SIZE == speculative.DEFAULT_DISABLE_BY_BATCH_SIZE
    config = engine_speculation({"method": "ngram", "disableByBatchSize": 8})
    assert config.disable_by_batch_size == 8

    def weights(speculative_spec: dict | None, max_num_seqs: int = 256) -> float:
        engine = {"maxNumSeqs": max_num_seqs, **({"speculative": speculative_spec} if speculative_spec else {})}
        resource = Resource.from_body({"metadata": {"name": "chat", "namespace": "ns", "uid": "u"}, "spec": {
            "model": {"hub": "Qwen/Qwen2.5-7B-Instruct"}, "engine": engine}})
        return sizing.weights_gib(resource.spec)

    plain = weights(None)
    assert weights({"method": "ngram"}) == pytest.approx(2 * plain)  # a speculating and a plain pipeline
    assert weights({"method": "ngram", "disableByBatchSize": 256}) == pytest.approx(plain)  # never turned off
