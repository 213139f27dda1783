"""Pod sizes from the spec: memory from an estimate of the weights plus the KV cache plus overhead.

The estimate errs high: a pod killed for memory restarts in a loop, one that asked for a little too
much only wastes it. Numbers are GiB.
"""

from __future__ import annotations

import math

from ovllm_operator.spec import DraftModelSpec, OVLLMDeploymentSpec, parameters_from_name

# Bytes per parameter of the served IR, with the embedding and norms that stay wider.
BYTES_PER_PARAMETER = {"fp16": 2.0, "int8": 1.05, "int4": 0.6}
# The server process, tokenizers, OpenVINO's compiled model and buffers.
ENGINE_OVERHEAD_GIB = 2.0
# Conversion loads the source weights (up to fp32) in torch and writes IR beside them.
CONVERTER_BYTES_PER_PARAMETER = 4.5
CONVERTER_OVERHEAD_GIB = 3.0
# When a model's size is neither given nor written in its name: assume the common 7B class.
UNKNOWN_PARAMETERS_BILLIONS = 7.0
# The engine's default disable_by_batch_size (engine/ovllm_engine/speculative.py; test_contract checks it):
# below spec.engine.maxNumSeqs the engine keeps a plain pipeline, a second copy of the weights, beside the
# speculating one.
ENGINE_DISABLE_BY_BATCH_SIZE = 4
# A draft model's size when neither given nor written in its name: drafts are the 0.5B class.
UNKNOWN_DRAFT_PARAMETERS_BILLIONS = 0.5

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


def draft_model(spec: OVLLMDeploymentSpec) -> DraftModelSpec | None:
    """The speculative decoding draft the engine loads beside the model, if any."""
    speculative = spec.engine.speculative
    return speculative.draft_model if speculative else None


def draft_parameters_billions(draft: DraftModelSpec) -> float:
    """The given size, else the one written in the draft's hub id or path, else a small draft's."""
    if draft.parameters_billions:
        return draft.parameters_billions
    for name in (draft.hub, draft.image_path):
        if name and (found := parameters_from_name(name)):
            return found
    return UNKNOWN_DRAFT_PARAMETERS_BILLIONS


def _served_gib(params_billions: float, weight_format: str) -> float:
    return params_billions * 1e9 * BYTES_PER_PARAMETER[weight_format] / 2**30


def weights_gib(spec: OVLLMDeploymentSpec) -> float:
    """The served weights: the model's, plus the draft's when speculative decoding uses one, plus a
    second copy of the model's when the engine also keeps a plain pipeline for loaded times."""
    params = parameters_billions(spec) or UNKNOWN_PARAMETERS_BILLIONS
    weights = _served_gib(params, spec.model.weight_format)
    speculative = spec.engine.speculative
    if speculative and (speculative.disable_by_batch_size or ENGINE_DISABLE_BY_BATCH_SIZE) < spec.engine.max_num_seqs:
        weights *= 2
    if draft := draft_model(spec):
        weights += _served_gib(draft_parameters_billions(draft), draft.weight_format)
    return weights


def engine_memory(spec: OVLLMDeploymentSpec) -> str:
    """The engine pod's memory request and limit: the spec's, else weights + KV cache + overhead."""
    if spec.cpu.memory:
        return spec.cpu.memory
    return gib(weights_gib(spec) + spec.engine.kv_cache_space_gib + ENGINE_OVERHEAD_GIB)


def minimum_engine_gib(spec: OVLLMDeploymentSpec) -> float:
    """Less than this cannot hold the KV cache the spec asks for plus the engine itself."""
    return spec.engine.kv_cache_space_gib + ENGINE_OVERHEAD_GIB / 2


def _converted_parameters(spec: OVLLMDeploymentSpec) -> list[float]:
    """Billions of parameters of each model that `ovllm convert` runs on: the model, the draft, both."""
    converted = []
    if spec.model.needs_conversion:
        converted.append(parameters_billions(spec) or UNKNOWN_PARAMETERS_BILLIONS)
    if (draft := draft_model(spec)) and draft.hub:
        converted.append(draft_parameters_billions(draft))
    return converted


def converter_memory(spec: OVLLMDeploymentSpec) -> str:
    """The memory of every converter container: the model's and the draft's conversions run one after
    the other, so the bigger of the two bounds them both."""
    if spec.model_cache and spec.model_cache.converter_memory:
        return spec.model_cache.converter_memory
    params = max(_converted_parameters(spec), default=0.0)
    return gib(params * 1e9 * CONVERTER_BYTES_PER_PARAMETER / 2**30 + CONVERTER_OVERHEAD_GIB)
