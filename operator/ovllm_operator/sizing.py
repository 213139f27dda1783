"""Pod sizes from the spec: memory from an estimate of the weights plus the KV cache plus overhead.

The estimate errs high: a pod killed for memory restarts in a loop, one that asked for a little too
much only wastes it. Numbers are GiB.
"""

from __future__ import annotations

import math

from ovllm_operator.spec import OVLLMDeploymentSpec, parameters_from_name

# Bytes per parameter of the served IR, with the embedding and norms that stay wider.
BYTES_PER_PARAMETER = {"fp16": 2.0, "int8": 1.05, "int4": 0.6}
# The server process, tokenizers, OpenVINO's compiled model and buffers.
ENGINE_OVERHEAD_GIB = 2.0
# Conversion loads the source weights (up to fp32) in torch and writes IR beside them.
CONVERTER_BYTES_PER_PARAMETER = 4.5
CONVERTER_OVERHEAD_GIB = 3.0
# When a model's size is neither given nor written in its name: assume the common 7B class.
UNKNOWN_PARAMETERS_BILLIONS = 7.0

def gib(value: float) -> str:
    return f"{math.ceil(value)}Gi"


def parameters_billions(spec: OVLLMDeploymentSpec) -> float | None:
    """The given size, else the one written in the source's or served name."""
    model = spec.model
    if model.parameters_billions:
        return model.parameters_billions
    for name in (model.hub, model.pvc.path if model.pvc else None, model.image_path, model.served_model_name):
        if name and (found := parameters_from_name(name)):
            return found
    return None


def weights_gib(spec: OVLLMDeploymentSpec) -> float:
    params = parameters_billions(spec) or UNKNOWN_PARAMETERS_BILLIONS
    return params * 1e9 * BYTES_PER_PARAMETER[spec.model.weight_format] / 2**30


def engine_memory(spec: OVLLMDeploymentSpec) -> str:
    """The engine pod's memory request and limit: the spec's, else weights + KV cache + overhead."""
    if spec.cpu.memory:
        return spec.cpu.memory
    return gib(weights_gib(spec) + spec.engine.kv_cache_space_gib + ENGINE_OVERHEAD_GIB)


def minimum_engine_gib(spec: OVLLMDeploymentSpec) -> float:
    """Less than this cannot hold the KV cache the spec asks for plus the engine itself."""
    return spec.engine.kv_cache_space_gib + ENGINE_OVERHEAD_GIB / 2


def converter_memory(spec: OVLLMDeploymentSpec) -> str:
    if spec.model_cache and spec.model_cache.converter_memory:
        return spec.model_cache.converter_memory
    params = parameters_billions(spec) or UNKNOWN_PARAMETERS_BILLIONS
    return gib(params * 1e9 * CONVERTER_BYTES_PER_PARAMETER / 2**30 + CONVERTER_OVERHEAD_GIB)
