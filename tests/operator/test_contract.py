"""The contract between operator and engine: the pod the operator builds, read by the engine's own
configuration code. The operator never imports the engine; this test imports both."""

from __future__ import annotations

import pytest

from ovllm_cli.main import parse_args
from ovllm_engine.config import parse_env
from ovllm_engine.onboard.options import resolve, resolve_for_gguf
from ovllm_operator import builders, router_builders
from ovllm_operator.builders import Resource


def deployment_of(resource):
    """The engine Deployment as a reconcile builds it: from the resource's one model plan."""
    return builders.deployment(resource, builders.model_plan(resource))


def conversion_job_of(resource):
    return builders.conversion_job(resource, builders.model_plan(resource))

def view(container: dict):
    """What `ovllm` in a built container would see: its parsed flags and environment settings."""
    assert container["command"] == ["ovllm"]
    args = parse_args(container["args"])
    env = {item["name"]: item["value"] for item in container["env"] if "value" in item}
    return args, parse_env(env)


def engine_view(spec: dict):
    """The engine container's view, and the view of the init container that converts its model."""
    resource = Resource.from_body({"metadata": {"name": "chat", "namespace": "ns", "uid": "u"}, "spec": spec})
    pod = deployment_of(resource)["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    converter = view(pod["initContainers"][0]) if pod.get("initContainers") else None
    return (*view(container), converter)


@pytest.mark.parametrize(("weight_format", "kv_precision", "kv_space"), [
    ("int8", "u8", 4), ("int4", "f16", 16), ("fp16", "bf16", 1), ("int8", "f32", 64),
])
def test_engine_sees_the_kv_space_precision_and_quantization_asked_for(weight_format, kv_precision, kv_space):
    args, settings, (convert_args, convert_settings) = engine_view({
        "model": {"hub": "Qwen/Qwen2.5-0.5B-Instruct", "weightFormat": weight_format},
        "engine": {"kvCacheSpaceGiB": kv_space, "kvCachePrecision": kv_precision},
        "cpu": {"cores": 3},
    })
    assert settings.kv_cache_space_gb == kv_space
    assert settings.kv_cache_precision == kv_precision
    assert settings.inference_threads == 3
    # The engine's own environment says the same as vLLM's contract (ON exactly for int8) ...
    assert settings.quantized_weights is (weight_format == "int8")
    # ... and the converter that writes the IR the engine serves produces the weights asked for.
    assert convert_args.model == "Qwen/Qwen2.5-0.5B-Instruct" and str(convert_args.output) == args.model
    assert resolve(convert_args, convert_settings).weight_format == weight_format


def test_engine_sees_the_batching_and_model_settings():
    args, _, converter = engine_view({
        "model": {"imagePath": "/opt/models/qwen", "servedModelName": "qwen"},
        "engine": {"maxNumSeqs": 16, "maxNumBatchedTokens": 2048, "maxModelLen": 8192,
                   "enablePrefixCaching": False, "enableChunkedPrefill": False},
    })
    assert (args.model, args.served_model_name, args.port) == ("/opt/models/qwen", "qwen", 8000)
    assert (args.max_num_seqs, args.max_num_batched_tokens, args.max_model_len) == (16, 2048, 8192)
    assert args.enable_prefix_caching is False and args.enable_chunked_prefill is False
    assert converter is None  # IR in the image: nothing converts


@pytest.mark.parametrize(("model", "served", "gguf_file"), [
    ({"pvc": {"claimName": "w", "path": "q/qwen2.5-0.5b-instruct-q4_k_m.gguf"}},
     "/source/q/qwen2.5-0.5b-instruct-q4_k_m.gguf", None),
    ({"hub": "Qwen/Qwen2.5-0.5B-Instruct-GGUF", "ggufFile": "qwen2.5-0.5b-instruct-q4_k_m.gguf"},
     "Qwen/Qwen2.5-0.5B-Instruct-GGUF", "qwen2.5-0.5b-instruct-q4_k_m.gguf"),
])
def test_a_gguf_source_is_served_as_it_is_whatever_the_weight_format(model, served, gguf_file):
    """The default weightFormat int8 sets VLLM_OPENVINO_ENABLE_QUANTIZED_WEIGHTS=ON; for a GGUF the engine
    must still serve the file as it is (the engine image cannot convert)."""
    args, settings, converter = engine_view({"model": model})
    assert converter is None
    assert (args.model, args.gguf_file, args.weight_format) == (served, gguf_file, None)
    assert settings.quantized_weights is True
    assert resolve_for_gguf(args, settings).weight_format is None


def test_the_conversion_job_asks_for_the_same_weights():
    resource = Resource.from_body({"metadata": {"name": "c", "namespace": "ns", "uid": "u"}, "spec": {
        "model": {"hub": "Qwen/Qwen2.5-7B-Instruct", "weightFormat": "int4", "revision": "abc"}, "modelCache": {}}})
    (container,) = conversion_job_of(resource)["spec"]["template"]["spec"]["containers"]
    args = parse_args(container["args"])
    settings = parse_env({item["name"]: item["value"] for item in container["env"] if "value" in item})
    assert (args.model, args.revision) == ("Qwen/Qwen2.5-7B-Instruct", "abc")
    assert resolve(args, settings).weight_format == "int4"
    assert str(args.output) == builders.model_plan(resource).serve_path


def test_operator_names_the_engine_contract_variables():
    from ovllm_engine import config

    assert builders.KVCACHE_SPACE == config.KVCACHE_SPACE
    assert builders.KV_CACHE_PRECISION == config.KV_CACHE_PRECISION
    assert builders.QUANTIZED_WEIGHTS == config.QUANTIZED_WEIGHTS
    assert builders.INFERENCE_THREADS == config.INFERENCE_THREADS
    assert builders.API_KEY == config.API_KEY


def test_the_router_pod_asks_the_router_for_what_the_spec_says():
    resource = Resource.from_body({"metadata": {"name": "chat", "namespace": "ns", "uid": "u"}, "spec": {
        "model": {"hub": "Qwen/Qwen2.5-0.5B-Instruct"},
        "router": {"enabled": True, "strategy": "round-robin", "prefixChars": 300, "loadFactor": 2}}})
    (container,) = router_builders.router_deployment(resource)["spec"]["template"]["spec"]["containers"]
    assert container["command"] == ["ovllm"]
    args = parse_args(container["args"])
    assert args.command == "router"
    assert (args.service, args.namespace, args.strategy, args.prefix_chars, args.load_factor, args.port) == (
        "chat-engines", "ns", "round-robin", 300, 2.0, 8000)
    assert args.backend is None  # discovery, not a fixed list
