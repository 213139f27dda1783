"""Pure functions from a resource to the children it should have: no cluster, no I/O, so every
rule here is unit-tested on plain dictionaries. reconcile.py applies what they return.

Everything a builder returns is a full desired state for server-side apply: the same spec gives the
same objects, byte for byte, so re-applying them changes nothing and restarts nothing.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass

from kubernetes.utils.quantity import parse_quantity

from ovllm_operator import names, pods, sizing
from ovllm_operator.isa import merge_affinity
from ovllm_operator.spec import DraftModelSpec, OVLLMDeploymentSpec, SpecError

# The engine's environment contract (ovllm_engine/config.py and vLLM's OpenVINO backend). The
# operator never imports the engine; tests/operator/test_contract.py checks these names against it.
KVCACHE_SPACE = "VLLM_OPENVINO_KVCACHE_SPACE"
KV_CACHE_PRECISION = "VLLM_OPENVINO_CPU_KV_CACHE_PRECISION"
QUANTIZED_WEIGHTS = "VLLM_OPENVINO_ENABLE_QUANTIZED_WEIGHTS"
INFERENCE_THREADS = "OVLLM_INFERENCE_THREADS"
API_KEY = "VLLM_API_KEY"
CONTRACT_ENV = (KVCACHE_SPACE, KV_CACHE_PRECISION, "VLLM_OPENVINO_KV_CACHE_PRECISION", QUANTIZED_WEIGHTS,
                INFERENCE_THREADS, API_KEY, "HF_HOME", "HF_TOKEN")

CACHE_MOUNT = "/cache"  # a writable emptyDir: HF_HOME, and the IR of a pod that converts for itself
# Time budgets: the startup probe's for loading IR, and a pod's for downloading and converting in
# its init container first (the Deployment's progress deadline covers both).
LOAD_SECONDS = 30 * 60
CONVERT_IN_POD_SECONDS = 2 * 60 * 60
PROBE_PERIOD = 10
# Shutdown of a pod (engine or router): the preStop sleep lets the EndpointSlice controller, kube-proxy
# and the router drop the terminating pod before it hears SIGTERM; then the server drains (requests in
# flight get --shutdown-grace, new ones 503), streams still running get an error event, and the
# process exits, all within terminationGracePeriodSeconds (after which the kubelet sends SIGKILL).
PRESTOP_SECONDS = 5
SHUTDOWN_GRACE_SECONDS = 30  # --shutdown-grace, unless spec.engine.extraArgs says otherwise
# After the grace the server needs at most 11 s (error events 5, cancelling 1, the engine's stop 5:
# engine/ovllm_engine/server/main.py); 4 more of margin.
EXIT_SECONDS = 15
TERMINATION_GRACE_SECONDS = PRESTOP_SECONDS + SHUTDOWN_GRACE_SECONDS + EXIT_SECONDS  # the router's
SPECULATIVE_CONFIG = "--speculative-config"
PROMPT_LOOKUP_MAX = 3  # vLLM's n-gram default, when spec.engine.speculative.promptLookupMax is absent


@dataclass(frozen=True)
class Resource:
    """The parts of an OVLLMDeployment that builders read."""

    name: str
    namespace: str
    uid: str
    spec: OVLLMDeploymentSpec

    @classmethod
    def from_body(cls, body) -> Resource:
        from ovllm_operator.spec import parse_spec

        metadata = body["metadata"]
        spec = parse_spec(dict(body.get("spec") or {}))
        resource = cls(metadata["name"], metadata["namespace"], metadata["uid"], spec)
        check(resource)
        return resource

    def owner_reference(self) -> dict:
        # controller: true makes the resource the children's one manager; deleting it lets the
        # garbage collector delete them.
        return {"apiVersion": f"{names.GROUP}/{names.VERSION}", "kind": names.KIND, "name": self.name,
                "uid": self.uid, "controller": True, "blockOwnerDeletion": True}

    def metadata(self, name: str, component: str = "engine", **extra) -> dict:
        return {"name": name, "namespace": self.namespace, "labels": names.labels(self.name, component),
                "ownerReferences": [self.owner_reference()], **extra}

    @property
    def served_model_name(self) -> str:
        return self.spec.model.served_model_name or self.name


@dataclass(frozen=True)
class Conversion:
    """One `ovllm convert` run: the model's, or the speculative decoding draft's."""

    container: str  # the converter container's name
    source: str  # as `ovllm convert` takes it: a hub id or a mounted directory
    output: str  # the IR directory it writes
    flags: tuple[str, ...]
    weight_format: str  # sets the container's quantized-weights switch


@dataclass(frozen=True)
class ModelPlan:
    """Where the engine pods find their model (and draft), and what converts them first."""

    serve_path: str  # the MODEL argument of `ovllm serve`: an IR directory, or a GGUF source as it is
    uses_job: bool  # a conversion Job fills the model cache first
    convert_in_pod: bool  # no model cache: init containers convert into the pod's emptyDir
    draft_path: str | None  # the draft model of --speculative-config: converted IR, or imagePath
    conversions: tuple[Conversion, ...]  # in the order they run, the draft's first


def source_path(resource: Resource) -> str:
    """The source as `ovllm serve` and `ovllm convert` take it: a hub id or a mounted directory."""
    model = resource.spec.model
    if model.hub:
        return model.hub
    if model.pvc:
        return f"{names.SOURCE_MOUNT}/{model.pvc.path}".rstrip("/")
    return model.image_path


def converted_path(resource: Resource, in_pod_name: str, source: str, weight_format: str,
                   trust_remote_code: bool = False) -> str:
    """Where a conversion writes its IR: a directory of its own in the model cache, named by what
    makes its output differ, or without a cache a fixed one in the pod's emptyDir."""
    if resource.spec.model_cache is None:
        return f"{CACHE_MOUNT}/{in_pod_name}"
    key = names.conversion_key(source, weight_format, trust_remote_code)
    return f"{names.MODELS_MOUNT}/{names.model_dir_name(source, weight_format, key)}"


def _model(resource: Resource) -> tuple[str, Conversion | None]:
    """The MODEL argument, and the conversion that writes it when the source is not served as it is."""
    model = resource.spec.model
    if model.is_gguf:  # the engine reads the file itself (a hub repo's: downloads it at start)
        return source_path(resource), None
    if not model.needs_conversion:
        return model.image_path, None
    output = converted_path(resource, "model", model.source, model.weight_format, model.trust_remote_code)
    return output, Conversion("convert", source_path(resource), output, tuple(conversion_flags(resource)),
                              model.weight_format)


def _draft(resource: Resource) -> tuple[str | None, Conversion | None]:
    """The draft model's path for the engine, and the conversion that writes it for a hub draft. The
    engine could convert a hub draft itself, but its image has no torch: conversion stays with the
    converter image, as the model's does."""
    draft = sizing.draft_model(resource.spec)
    if draft is None:
        return None, None
    if draft.image_path:
        return draft.image_path, None
    output = converted_path(resource, "draft", draft.source, draft.weight_format)
    return output, Conversion("convert-draft", draft.hub, output, draft_conversion_flags(draft), draft.weight_format)


def model_plan(resource: Resource) -> ModelPlan:
    serve_path, model_conversion = _model(resource)
    draft_path, draft_conversion = _draft(resource)
    conversions = tuple(step for step in (draft_conversion, model_conversion) if step)
    uses_job = bool(conversions) and resource.spec.model_cache is not None
    return ModelPlan(serve_path, uses_job, bool(conversions) and not uses_job, draft_path, conversions)


def conversion_flags(resource: Resource) -> list[str]:
    """`--weight-format` for fp16 and int4 (int8 travels as VLLM_OPENVINO_ENABLE_QUANTIZED_WEIGHTS=ON,
    as in vLLM's OpenVINO backend), the hub revision, and consent to remote code."""
    model = resource.spec.model
    flags = [] if model.weight_format == "int8" else ["--weight-format", model.weight_format]
    if model.revision:
        flags += ["--revision", model.revision]
    if model.trust_remote_code:
        flags.append("--trust-remote-code")
    return flags


def draft_conversion_flags(draft: DraftModelSpec) -> tuple[str, ...]:
    """The weight format always as a flag: the draft's default (int4) is not the model's, and a flag
    says it whatever the environment's switch."""
    flags = ("--weight-format", draft.weight_format)
    if draft.revision:
        flags += ("--revision", draft.revision)
    if draft.gguf_file:
        flags += ("--gguf-file", draft.gguf_file)
    return flags


def quantized_weights_switch(weight_format: str) -> dict:
    """vLLM's OpenVINO switch: ON exactly for int8 weights (fp16 and int4 go as --weight-format)."""
    return {"name": QUANTIZED_WEIGHTS, "value": "ON" if weight_format == "int8" else "OFF"}


def secret_env(name: str, ref) -> dict:
    return {"name": name, "valueFrom": {"secretKeyRef": {"name": ref.name, "key": ref.key}}}


def engine_env(resource: Resource) -> list[dict]:
    """The engine container's environment: the contract from the spec, then the user's extraEnv."""
    spec = resource.spec
    env = [
        {"name": KVCACHE_SPACE, "value": str(spec.engine.kv_cache_space_gib)},
        {"name": KV_CACHE_PRECISION, "value": spec.engine.kv_cache_precision},
        quantized_weights_switch(spec.model.weight_format),
        {"name": INFERENCE_THREADS, "value": str(spec.cpu.cores)},
        {"name": "HF_HOME", "value": f"{CACHE_MOUNT}/huggingface"},
        {"name": "HOME", "value": "/tmp"},  # the root filesystem is read-only
    ]
    if spec.api_key_secret_ref:
        env.append(secret_env(API_KEY, spec.api_key_secret_ref))
    if spec.model.is_gguf and spec.model.hub_token_secret_ref:  # the engine downloads a hub GGUF itself
        env.append(secret_env("HF_TOKEN", spec.model.hub_token_secret_ref))
    return _with_extra_env(env, spec.engine.extra_env)


def _with_extra_env(env: list[dict], extra: tuple[dict, ...]) -> list[dict]:
    """Append the user's variables; one replaces the operator's of the same name (env names must be
    unique). Contract variables never get here: check() refuses them."""
    overridden = {item["name"] for item in extra}
    return [item for item in env if item["name"] not in overridden] + [dict(item) for item in extra]


@dataclass(frozen=True)
class Served:
    """What the engine container serves: the MODEL argument and the --speculative-config value. While a
    conversion runs, the pods keep the pair they serve, never a half-converted one."""

    model: str
    speculative_config: str | None


def speculative_config(resource: Resource, draft_path: str | None) -> str | None:
    """--speculative-config as the engine takes it (vLLM's keys), compact and stable so that the same
    spec gives the same pod template."""
    speculative = resource.spec.engine.speculative
    if speculative is None:
        return None
    config = {"num_speculative_tokens": speculative.num_speculative_tokens}
    if speculative.disable_by_batch_size:
        config["disable_by_batch_size"] = speculative.disable_by_batch_size
    if speculative.method == "ngram":
        config |= {"method": "ngram", "prompt_lookup_max": speculative.prompt_lookup_max or PROMPT_LOOKUP_MAX}
    else:
        config |= {"method": "draft_model", "model": draft_path}
    return json.dumps(config, separators=(",", ":"), sort_keys=True)


def served(resource: Resource, plan: ModelPlan) -> Served:
    """What the plan serves once its conversions are done."""
    return Served(plan.serve_path, speculative_config(resource, plan.draft_path))


def engine_args(resource: Resource, serving: Served) -> list[str]:
    """`ovllm serve` flags, serving serving's model and draft."""
    engine = resource.spec.engine
    args = ["serve", serving.model,
            "--host", "0.0.0.0", "--port", str(names.ENGINE_PORT),
            "--served-model-name", resource.served_model_name,
            "--max-num-seqs", str(engine.max_num_seqs),
            "--max-num-batched-tokens", str(engine.max_num_batched_tokens),
            "--enable-prefix-caching" if engine.enable_prefix_caching else "--no-enable-prefix-caching",
            "--enable-chunked-prefill" if engine.enable_chunked_prefill else "--no-enable-chunked-prefill",
            "--shutdown-grace", str(SHUTDOWN_GRACE_SECONDS)]
    if engine.max_model_len:
        args += ["--max-model-len", str(engine.max_model_len)]
    if serving.speculative_config:
        args += [SPECULATIVE_CONFIG, serving.speculative_config]
    model = resource.spec.model
    if model.gguf_file:
        args += ["--gguf-file", model.gguf_file]
    if model.is_gguf and model.revision:
        args += ["--revision", model.revision]
    return args + list(engine.extra_args)


def shutdown_grace(resource: Resource) -> float:
    """The engine's --shutdown-grace: ours, or the last one in extraArgs (argparse's rule), so that
    terminationGracePeriodSeconds always covers it. An unreadable value is the engine's to refuse."""
    grace = float(SHUTDOWN_GRACE_SECONDS)
    args = list(resource.spec.engine.extra_args)
    for index, arg in enumerate(args):
        value = None
        if arg == "--shutdown-grace" and index + 1 < len(args):
            value = args[index + 1]
        elif arg.startswith("--shutdown-grace="):
            value = arg.split("=", 1)[1]
        try:
            grace = max(0.0, float(value)) if value is not None else grace
        except ValueError:
            pass
    return grace


def check(resource: Resource) -> None:
    """What the schema cannot check (or a CRD older than the operator did not): a memory limit below
    the KV cache the spec asks for, and extra variables that would override the engine's contract."""
    spec = resource.spec
    forbidden = [item["name"] for item in spec.engine.extra_env if item["name"] in CONTRACT_ENV]
    if forbidden:
        raise SpecError(f"spec.engine.extraEnv: {', '.join(forbidden)} is set from the spec; "
                        "set the spec field instead")
    if spec.cpu.memory and parse_quantity(spec.cpu.memory) < sizing.minimum_engine_gib(spec) * 2**30:
        raise SpecError(
            f"spec.cpu.memory: {spec.cpu.memory} cannot hold spec.engine.kvCacheSpaceGiB="
            f"{spec.engine.kv_cache_space_gib} of KV cache plus the engine; give at least "
            f"{sizing.gib(sizing.minimum_engine_gib(spec) + 1)} or a smaller KV cache"
        )


def _pod_spec(resource: Resource, containers: list[dict], volumes: list[dict], **extra) -> dict:
    """What the engine pod and the conversion pod share: non-root with the runtime's seccomp profile,
    no service account token, and the same placement (conversion runs torch's CPU kernels, so it
    needs the same instruction-set floor as the engine)."""
    spec = resource.spec
    return {
        "containers": containers,
        "volumes": volumes,
        "securityContext": pods.pod_security(fs_group=True),
        "automountServiceAccountToken": False,
        "enableServiceLinks": False,
        "affinity": merge_affinity(spec.affinity, spec.cpu.min_isa),
        **pods.placement(spec),
        **extra,
    }


def _volumes(resource: Resource, models_read_only: bool) -> tuple[list[dict], list[dict]]:
    """Volumes and mounts: a writable /tmp and /cache (read-only root filesystem), the model cache
    claim at /models, and a pvc source read-only at /source."""
    spec = resource.spec
    volumes = [{"name": "tmp", "emptyDir": {}}, {"name": "cache", "emptyDir": {}}]
    mounts = [{"name": "tmp", "mountPath": "/tmp"}, {"name": "cache", "mountPath": CACHE_MOUNT}]
    if spec.model_cache is not None:
        claim = spec.model_cache.claim_name or names.cache_claim_name(resource.name)
        volumes.append({"name": "models", "persistentVolumeClaim": {"claimName": claim,
                                                                    "readOnly": models_read_only}})
        mounts.append({"name": "models", "mountPath": names.MODELS_MOUNT, "readOnly": models_read_only})
    if spec.model.pvc is not None:
        volumes.append({"name": "source", "persistentVolumeClaim": {"claimName": spec.model.pvc.claim_name,
                                                                    "readOnly": True}})
        mounts.append({"name": "source", "mountPath": names.SOURCE_MOUNT, "readOnly": True})
    return volumes, mounts


def converter(resource: Resource, conversion: Conversion, hf_home: str) -> dict:
    """A container that runs `ovllm convert` (converter image: torch, optimum-intel, NNCF): in the
    conversion Job, or as an engine pod's init container when there is no model cache."""
    spec = resource.spec
    env = [
        quantized_weights_switch(conversion.weight_format),
        {"name": "HF_HOME", "value": hf_home},
        {"name": "HOME", "value": "/tmp"},
    ]
    if spec.model.hub_token_secret_ref:  # the draft's hub downloads use the model's token too
        env.append(secret_env("HF_TOKEN", spec.model.hub_token_secret_ref))
    memory = sizing.converter_memory(spec)
    return {
        "name": conversion.container,
        "image": spec.engine.converter_image,
        "imagePullPolicy": spec.engine.image_pull_policy,
        "command": ["ovllm"],
        "args": ["convert", conversion.source, "--output", conversion.output, *conversion.flags],
        "env": env,
        "resources": {"requests": {"cpu": str(spec.cpu.cores), "memory": memory}, "limits": {"memory": memory}},
        "securityContext": pods.container_security(),
    }


def pod_template(resource: Resource, plan: ModelPlan, serving: Served | None = None) -> dict:
    """The engine pod. serving overrides what the plan serves: while a new conversion runs, the pods
    keep serving the last converted model and draft."""
    spec = resource.spec
    memory = sizing.engine_memory(spec)
    cores = str(spec.cpu.cores)
    health = {"httpGet": {"path": "/health", "port": "http"}}
    volumes, mounts = _volumes(resource, models_read_only=True)
    container = {
        "name": "engine",
        "image": spec.engine.image,
        "imagePullPolicy": spec.engine.image_pull_policy,
        "command": ["ovllm"],
        "args": engine_args(resource, serving or served(resource, plan)),
        "env": engine_env(resource),
        "ports": [{"name": "http", "containerPort": names.ENGINE_PORT, "protocol": "TCP"}],
        # Guaranteed QoS (requests equal limits): a static CPU manager can pin the engine's threads.
        "resources": {"requests": {"cpu": cores, "memory": memory}, "limits": {"cpu": cores, "memory": memory}},
        # Loading a large model takes minutes; liveness and readiness start only after this succeeds.
        "startupProbe": {**health, "periodSeconds": PROBE_PERIOD,
                         "failureThreshold": math.ceil(LOAD_SECONDS / PROBE_PERIOD)},
        "readinessProbe": {**health, "periodSeconds": 5, "failureThreshold": 2},
        # While draining /health answers 503: readiness drops the pod, liveness (60 s) outlasts the grace.
        "livenessProbe": {**health, "periodSeconds": 10, "failureThreshold": 6, "timeoutSeconds": 5},
        "lifecycle": {"preStop": {"sleep": {"seconds": PRESTOP_SECONDS}}},
        "securityContext": pods.container_security(),
        "volumeMounts": mounts,
    }
    annotations = {}
    if spec.metrics.enabled:
        annotations = {"prometheus.io/scrape": "true", "prometheus.io/port": str(names.ENGINE_PORT),
                       "prometheus.io/path": "/metrics"}
    termination = PRESTOP_SECONDS + math.ceil(shutdown_grace(resource)) + EXIT_SECONDS
    pod_spec = _pod_spec(resource, [container], volumes, terminationGracePeriodSeconds=termination)
    if plan.convert_in_pod:
        # Without a model cache each pod converts for itself (the draft, then the model), into its
        # emptyDir, before the engine starts: the engine image stays free of torch.
        init_mounts = [mount for mount in mounts if mount["name"] != "models"]
        pod_spec["initContainers"] = [{**converter(resource, conversion, f"{CACHE_MOUNT}/huggingface"),
                                       "volumeMounts": init_mounts} for conversion in plan.conversions]
    metadata = {"labels": names.labels(resource.name)}
    if annotations:
        metadata["annotations"] = annotations
    return {"metadata": metadata, "spec": pod_spec}


def deployment(resource: Resource, plan: ModelPlan, serving: Served | None = None) -> dict:
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": resource.metadata(resource.name),
        "spec": {
            "replicas": resource.spec.replicas,
            "selector": {"matchLabels": names.selector_labels(resource.name)},
            # Never below the serving capacity during a rollout: one new pod at a time, and an old
            # one goes only when a new one is ready.
            "strategy": {"type": "RollingUpdate", "rollingUpdate": {"maxSurge": 1, "maxUnavailable": 0}},
            "progressDeadlineSeconds": (CONVERT_IN_POD_SECONDS if plan.convert_in_pod
                                        else LOAD_SECONDS) + 600,
            "revisionHistoryLimit": 3,
            "template": pod_template(resource, plan, serving),
        },
    }


def service(resource: Resource) -> dict:
    """The resource's endpoint: the engine pods, or the router in front of them when it is enabled."""
    spec = resource.spec.service
    routed = resource.spec.router.enabled
    metadata = resource.metadata(resource.name, component="router" if routed else "engine")
    if spec.annotations:
        metadata["annotations"] = dict(spec.annotations)
    selector = names.router_selector_labels(resource.name) if routed else names.selector_labels(resource.name)
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": metadata,
        "spec": {
            "type": spec.type,
            "selector": selector,
            "ports": [{"name": "http", "port": spec.port, "targetPort": "http", "protocol": "TCP"}],
        },
    }


def pod_disruption_budget(resource: Resource) -> dict | None:
    pdb = resource.spec.pod_disruption_budget
    if pdb is None:
        return None
    budget = {"minAvailable": pdb.min_available} if pdb.min_available is not None else {
        "maxUnavailable": pdb.max_unavailable}
    return {
        "apiVersion": "policy/v1",
        "kind": "PodDisruptionBudget",
        "metadata": resource.metadata(resource.name),
        "spec": {"selector": {"matchLabels": names.selector_labels(resource.name)}, **budget},
    }


def cache_claim(resource: Resource) -> dict | None:
    """The model cache claim, created only when absent (an existing claim is used as it is)."""
    cache = resource.spec.model_cache
    if cache is None:
        return None
    spec = {"accessModes": list(cache.access_modes), "resources": {"requests": {"storage": cache.size}}}
    if cache.storage_class_name:
        spec["storageClassName"] = cache.storage_class_name
    name = cache.claim_name or names.cache_claim_name(resource.name)
    return {"apiVersion": "v1", "kind": "PersistentVolumeClaim",
            "metadata": resource.metadata(name, component="model-cache"), "spec": spec}


def conversion_job(resource: Resource, plan: ModelPlan) -> dict | None:
    """One Job that converts the model, and the draft, into the cache before any engine pod starts."""
    if not plan.uses_job:
        return None
    volumes, mounts = _volumes(resource, models_read_only=False)
    # Downloads land on the cache volume too: a retried Job does not download again.
    containers = [{**converter(resource, conversion, f"{names.MODELS_MOUNT}/.huggingface"), "volumeMounts": mounts}
                  for conversion in plan.conversions]
    # The draft converts in an init container, the model in the pod's one container: one after the
    # other, so the pod needs the memory of the bigger conversion, not of both; and a draft (small)
    # that cannot be converted fails the Job in minutes, not after the model's long conversion.
    *init_containers, last = containers
    extra = {"initContainers": init_containers} if init_containers else {}
    pod_spec = _pod_spec(resource, [last], volumes, restartPolicy="Never", **extra)
    job_spec = {
        "backoffLimit": 2,
        "template": {"metadata": {"labels": names.labels(resource.name, "converter")}, "spec": pod_spec},
    }
    # A Job's spec is immutable, so its name carries a hash of it: any change (a new model, a fixed
    # image) makes a new Job, and one whose output is already complete finishes at once.
    return {
        "apiVersion": "batch/v1",
        "kind": "Job",
        "metadata": resource.metadata(names.job_name(resource.name, names.digest(job_spec)), component="converter"),
        "spec": job_spec,
    }


def service_monitor(resource: Resource) -> dict | None:
    metrics = resource.spec.metrics
    if not metrics.enabled:
        return None
    metadata = resource.metadata(resource.name)
    metadata["labels"] = {**metadata["labels"], **metrics.service_monitor_labels}
    return {
        "apiVersion": "monitoring.coreos.com/v1",
        "kind": "ServiceMonitor",
        "metadata": metadata,
        "spec": {
            # The resource's Services: the engines', and the router's when it runs (the router's
            # own metrics; the engines are then scraped through their headless Service).
            "selector": {"matchLabels": {"app.kubernetes.io/instance": resource.name,
                                         "app.kubernetes.io/managed-by": names.FIELD_MANAGER}},
            "namespaceSelector": {"matchNames": [resource.namespace]},
            "endpoints": [{"port": "http", "path": "/metrics", "interval": metrics.interval}],
            # engine or router, and which resource: as prometheus.io-annotation scrapes label them
            # (pod labels mapped), so the chart's alerts and dashboard select engines either way
            "podTargetLabels": ["app.kubernetes.io/component", "app.kubernetes.io/instance"],
        },
    }
