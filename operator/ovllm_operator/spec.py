"""The OVLLMDeployment spec as pydantic models: the operator's typed view of what the CRD schema
(crds/ovllm.io_ovllmdeployments.yaml) already checked.

The API server applies the schema's defaults and rules before the operator sees a resource, so these
models mostly re-state them; they exist so that a resource which got past an older or edited CRD is
reported in status instead of crashing a handler. A test keeps field names and defaults equal to the
CRD's.
"""

from __future__ import annotations

import re
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator
from pydantic.alias_generators import to_camel

QUANTITY = r"^[0-9]+(\.[0-9]+)?(Ki|Mi|Gi|Ti|k|M|G|T)?$"


class SpecError(ValueError):
    """A spec the operator cannot act on; the message names the field and is shown in status."""


class _Model(BaseModel):
    model_config = ConfigDict(alias_generator=to_camel, populate_by_name=True, extra="forbid", frozen=True)


class HubTokenSecretRef(_Model):
    name: str = Field(min_length=1)
    key: str = Field(default="token", min_length=1)


class ApiKeySecretRef(_Model):
    name: str = Field(min_length=1)
    key: str = Field(default="api-key", min_length=1)


class PvcSource(_Model):
    claim_name: str = Field(min_length=1)
    path: str = ""


class ModelSpec(_Model):
    hub: str | None = None
    revision: str | None = None
    hub_token_secret_ref: HubTokenSecretRef | None = None
    pvc: PvcSource | None = None
    image_path: str | None = None
    gguf_file: str | None = None
    served_model_name: str | None = None
    weight_format: Literal["fp16", "int8", "int4"] = "int8"
    trust_remote_code: bool = False
    parameters_billions: float | None = Field(default=None, gt=0)

    @model_validator(mode="after")
    def _one_source(self) -> ModelSpec:
        sources = [name for name in ("hub", "pvc", "image_path") if getattr(self, name) is not None]
        if len(sources) != 1:
            raise ValueError("set exactly one source: hub, pvc or imagePath")
        if self.revision is not None and self.hub is None:
            raise ValueError("revision applies only to a hub source")
        if self.gguf_file is not None and self.image_path is not None:
            raise ValueError("ggufFile names a file in a hub repo or a pvc directory; for an image, put the "
                             "file's path in imagePath")
        return self

    @property
    def source(self) -> str:
        """The source as one string, for status and the memory estimate."""
        file = f"/{self.gguf_file}" if self.gguf_file else ""
        if self.hub:
            return self.hub + (f"@{self.revision}" if self.revision else "") + file
        if self.pvc:
            return f"pvc://{self.pvc.claim_name}/{self.pvc.path}".rstrip("/") + file
        return self.image_path

    @property
    def is_gguf(self) -> bool:
        """A GGUF file, which the engine serves as it is (GenAI reads it): no conversion."""
        if self.gguf_file:
            return True
        path = self.image_path or (self.pvc.path if self.pvc else "")
        return path.lower().endswith(".gguf")

    @property
    def needs_conversion(self) -> bool:
        """A hub id or a volume may hold a Hugging Face model; an image path is IR or GGUF by contract."""
        return self.image_path is None and not self.is_gguf


class DraftModelSpec(_Model):
    hub: str | None = None
    revision: str | None = None
    gguf_file: str | None = None
    image_path: str | None = None
    weight_format: Literal["fp16", "int8", "int4"] = "int4"
    parameters_billions: float | None = Field(default=None, gt=0)

    @model_validator(mode="after")
    def _one_source(self) -> DraftModelSpec:
        if (self.hub is None) == (self.image_path is None):
            raise ValueError("set exactly one draft source: hub or imagePath")
        if self.hub is None and (self.revision is not None or self.gguf_file is not None):
            raise ValueError("revision and ggufFile apply only to a hub draft (draftModel.hub)")
        return self

    @property
    def source(self) -> str:
        """The source as one string, for the conversion key and the IR directory's name."""
        if self.image_path:
            return self.image_path
        file = f"/{self.gguf_file}" if self.gguf_file else ""
        return self.hub + (f"@{self.revision}" if self.revision else "") + file


class SpeculativeSpec(_Model):
    method: Literal["ngram", "draftModel"]
    num_speculative_tokens: int = Field(default=4, ge=1, le=16)
    prompt_lookup_max: int | None = Field(default=None, ge=1, le=8)
    disable_by_batch_size: int | None = Field(default=None, ge=1)
    draft_model: DraftModelSpec | None = None

    @model_validator(mode="after")
    def _coherent(self) -> SpeculativeSpec:
        if self.method == "ngram" and self.draft_model is not None:
            raise ValueError("draftModel applies only to method draftModel: ngram (prompt lookup) needs no draft")
        if self.method == "draftModel" and self.draft_model is None:
            raise ValueError("method draftModel needs draftModel (hub or imagePath)")
        if self.method == "draftModel" and self.prompt_lookup_max is not None:
            raise ValueError("promptLookupMax applies only to method ngram")
        return self


class EngineSpec(_Model):
    image: str = "ghcr.io/ovllm/ovllm-engine:0.1.0"
    converter_image: str = "ghcr.io/ovllm/ovllm-converter:0.1.0"
    image_pull_policy: Literal["Always", "IfNotPresent", "Never"] = "IfNotPresent"
    kv_cache_space_gib: int = Field(default=4, ge=1, alias="kvCacheSpaceGiB")
    kv_cache_precision: Literal["u8", "f16", "bf16", "f32"] = "u8"
    enable_prefix_caching: bool = True
    enable_chunked_prefill: bool = True
    max_num_batched_tokens: int = Field(default=256, ge=1)
    max_num_seqs: int = Field(default=256, ge=1)
    max_model_len: int | None = Field(default=None, ge=1)
    tensor_parallel_size: Literal[1] | None = None
    pipeline_parallel_size: Literal[1] | None = None
    extra_args: tuple[str, ...] = ()
    extra_env: tuple[dict[str, Any], ...] = ()
    speculative: SpeculativeSpec | None = None


class CpuSpec(_Model):
    min_isa: Literal["avx2", "avx512", "amx"] = Field(default="avx2", alias="minISA")
    cores: int = Field(default=2, ge=1)
    memory: str | None = Field(default=None, pattern=QUANTITY)


class ModelCacheSpec(_Model):
    claim_name: str | None = None
    size: str = Field(default="50Gi", pattern=QUANTITY)
    storage_class_name: str | None = None
    access_modes: tuple[str, ...] = ("ReadWriteMany",)
    converter_memory: str | None = Field(default=None, pattern=QUANTITY)


class ServiceSpec(_Model):
    type: Literal["ClusterIP", "NodePort", "LoadBalancer"] = "ClusterIP"
    port: int = Field(default=8000, ge=1, le=65535)
    annotations: dict[str, str] = Field(default_factory=dict)


class MetricsSpec(_Model):
    enabled: bool = True
    interval: str = "30s"
    service_monitor_labels: dict[str, str] = Field(default_factory=dict)


class PodDisruptionBudgetSpec(_Model):
    min_available: int | str | None = None
    max_unavailable: int | str | None = None

    @model_validator(mode="after")
    def _exactly_one(self) -> PodDisruptionBudgetSpec:
        if (self.min_available is None) == (self.max_unavailable is None):
            raise ValueError("set exactly one of minAvailable or maxUnavailable")
        return self


class AutoscalingSpec(_Model):
    enabled: bool = True
    min_replicas: int = Field(default=1, ge=1)
    max_replicas: int = Field(ge=1)
    metric: Literal["waitingRequests", "inFlightRequests", "kvCacheUsage"] = "inFlightRequests"
    target: float = Field(gt=0)
    scale_up_stabilization_seconds: int = Field(default=0, ge=0, le=3600)
    scale_down_stabilization_seconds: int = Field(default=300, ge=0, le=3600)

    @model_validator(mode="after")
    def _coherent(self) -> AutoscalingSpec:
        if self.max_replicas < self.min_replicas:
            raise ValueError("maxReplicas must be at least minReplicas")
        if self.metric == "kvCacheUsage" and self.target > 1:
            raise ValueError("a kvCacheUsage target is a fraction of the KV cache: at most 1")
        return self


class RouterSpec(_Model):
    enabled: bool = False
    image: str = "ghcr.io/ovllm/ovllm-router:0.1.0"
    replicas: int = Field(default=1, ge=1)
    strategy: Literal["prefix-hash", "least-load", "round-robin"] = "prefix-hash"
    prefix_chars: int = Field(default=100, ge=1)
    load_factor: float = Field(default=1.25, ge=1)
    cpu: str = Field(default="1", pattern=r"^[0-9]+(\.[0-9]+)?m?$")
    memory: str = Field(default="512Mi", pattern=QUANTITY)


class OVLLMDeploymentSpec(_Model):
    model: ModelSpec
    replicas: int = Field(default=1, ge=0)
    engine: EngineSpec = Field(default_factory=EngineSpec)
    cpu: CpuSpec = Field(default_factory=CpuSpec)
    model_cache: ModelCacheSpec | None = None
    service: ServiceSpec = Field(default_factory=ServiceSpec)
    metrics: MetricsSpec = Field(default_factory=MetricsSpec)
    api_key_secret_ref: ApiKeySecretRef | None = None
    node_selector: dict[str, str] = Field(default_factory=dict)
    tolerations: tuple[dict[str, Any], ...] = ()
    affinity: dict[str, Any] = Field(default_factory=dict)
    pod_disruption_budget: PodDisruptionBudgetSpec | None = None
    autoscaling: AutoscalingSpec | None = None
    router: RouterSpec = Field(default_factory=RouterSpec)

    @property
    def autoscaled(self) -> bool:
        return self.autoscaling is not None and self.autoscaling.enabled


def parse_spec(spec: dict) -> OVLLMDeploymentSpec:
    """Validate a resource's spec, or raise SpecError whose message names each wrong field."""
    try:
        return OVLLMDeploymentSpec.model_validate(spec)
    except ValidationError as exc:
        problems = []
        for error in exc.errors():
            where = ".".join(str(part) for part in ("spec", *error["loc"]))
            problems.append(f"{where}: {error['msg']}")
        raise SpecError("; ".join(problems)) from None


_SIZE_IN_NAME = re.compile(r"(?:(\d+)x)?(\d+(?:\.\d+)?)[bB](?![a-zA-Z])")


def parameters_from_name(name: str) -> float | None:
    """Billions of parameters written in a model's name: Qwen2.5-7B-Instruct -> 7, Mixtral-8x7B -> 56."""
    found = _SIZE_IN_NAME.findall(name.rsplit("/", 1)[-1])
    if not found:
        return None
    experts, size = found[-1]
    return float(size) * (int(experts) if experts else 1)
