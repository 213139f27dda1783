"""The pure builders: what each spec turns into, without a cluster."""

from __future__ import annotations

import copy
import json

import pytest

from ovllm_engine.server import main
from ovllm_operator import builders, names, router_builders, sizing
from ovllm_operator.builders import Resource
from ovllm_operator.isa import NFD_PREFIX, merge_affinity
from ovllm_operator.spec import SpecError, parameters_from_name


def deployment_of(resource):
    """The engine Deployment as a reconcile builds it: from the resource's one model plan."""
    return builders.deployment(resource, builders.model_plan(resource))


def conversion_job_of(resource):
    return builders.conversion_job(resource, builders.model_plan(resource))

def make(spec: dict, name: str = "chat", namespace: str = "team-a") -> Resource:
    return Resource.from_body({"metadata": {"name": name, "namespace": namespace, "uid": "uid-1"}, "spec": spec})


HUB = {"model": {"hub": "Qwen/Qwen2.5-0.5B-Instruct"}}


def engine_container(deployment: dict) -> dict:
    (container,) = deployment["spec"]["template"]["spec"]["containers"]
    return container


def env_values(container: dict) -> dict:
    return {item["name"]: item.get("value", item.get("valueFrom")) for item in container["env"]}


def test_engine_env_is_the_contract_from_the_spec_exactly():
    resource = make({**HUB, "engine": {"kvCacheSpaceGiB": 12, "kvCachePrecision": "f16"}, "cpu": {"cores": 6}})
    env = env_values(engine_container(deployment_of(resource)))
    assert env == {
        "VLLM_OPENVINO_KVCACHE_SPACE": "12",
        "VLLM_OPENVINO_CPU_KV_CACHE_PRECISION": "f16",
        "VLLM_OPENVINO_ENABLE_QUANTIZED_WEIGHTS": "ON",
        "OVLLM_INFERENCE_THREADS": "6",
        "HF_HOME": "/cache/huggingface",
        "HOME": "/tmp",
    }


@pytest.mark.parametrize(("weight_format", "switch", "flags"), [
    ("int8", "ON", []), ("int4", "OFF", ["--weight-format", "int4"]), ("fp16", "OFF", ["--weight-format", "fp16"]),
])
def test_weight_format_travels_as_the_env_switch_or_a_flag(weight_format, switch, flags):
    resource = make({"model": {"hub": "Qwen/Qwen2.5-7B-Instruct", "weightFormat": weight_format,
                               "revision": "v1"}})
    pod = deployment_of(resource)["spec"]["template"]["spec"]
    assert env_values(engine_container(deployment_of(resource)))[
        "VLLM_OPENVINO_ENABLE_QUANTIZED_WEIGHTS"] == switch
    # Without a model cache each pod converts for itself, in an init container with the converter
    # image, into its emptyDir; the engine serves that directory.
    (init,) = pod["initContainers"]
    assert init["image"] == "ghcr.io/ovllm/ovllm-converter:0.1.0"
    assert init["args"] == ["convert", "Qwen/Qwen2.5-7B-Instruct", "--output", "/cache/model", *flags,
                            "--revision", "v1"]
    assert env_values(init)["VLLM_OPENVINO_ENABLE_QUANTIZED_WEIGHTS"] == switch
    assert pod["containers"][0]["args"][1] == "/cache/model"


def test_engine_args_carry_the_batching_settings_and_extra_args():
    resource = make({**HUB, "model": {**HUB["model"], "servedModelName": "qwen"},
                     "engine": {"maxNumSeqs": 32, "maxNumBatchedTokens": 1024, "maxModelLen": 4096,
                                "enablePrefixCaching": False, "extraArgs": ["--max-request-mb=8"]}})
    args = engine_container(deployment_of(resource))["args"]
    assert args[:2] == ["serve", "/cache/model"]
    for pair in (["--served-model-name", "qwen"], ["--max-num-seqs", "32"], ["--max-num-batched-tokens", "1024"],
                 ["--max-model-len", "4096"], ["--port", "8000"]):
        index = args.index(pair[0])
        assert args[index:index + 2] == pair
    assert "--no-enable-prefix-caching" in args and "--enable-chunked-prefill" in args
    assert args[-1] == "--max-request-mb=8"


def test_engine_shutdown_fits_the_pods_grace_period():
    """preStop (endpoints drop the pod), then --shutdown-grace for requests in flight, then error events
    and the engine's stop: all before the kubelet's SIGKILL at terminationGracePeriodSeconds."""
    pod = deployment_of(make(HUB))["spec"]["template"]["spec"]
    container = engine_container(deployment_of(make(HUB)))
    prestop = container["lifecycle"]["preStop"]["sleep"]["seconds"]
    args = container["args"]
    grace = float(args[args.index("--shutdown-grace") + 1])
    assert prestop >= 5 and grace == 30
    # after the grace: error events 5 s, cancelling 1 s, the engine's stop 5 s (server/main.py)
    exit_seconds = main.FINAL_SECONDS + main.CANCEL_SECONDS + main.ENGINE_STOP_SECONDS
    assert pod["terminationGracePeriodSeconds"] > prestop + grace + exit_seconds
    # draining answers /health with 503: liveness must not kill the pod before the grace is up
    liveness = container["livenessProbe"]
    assert liveness["periodSeconds"] * liveness["failureThreshold"] > pod["terminationGracePeriodSeconds"]
    # a longer grace in extraArgs (the last one wins, as in argparse) lengthens the pod's
    longer = make({**HUB, "engine": {"extraArgs": ["--shutdown-grace", "60", "--shutdown-grace=120"]}})
    pod = deployment_of(longer)["spec"]["template"]["spec"]
    assert pod["terminationGracePeriodSeconds"] > prestop + 120 + exit_seconds


def test_resources_are_guaranteed_cores_and_estimated_memory():
    resource = make({**HUB, "engine": {"kvCacheSpaceGiB": 8}, "cpu": {"cores": 4}})
    resources = engine_container(deployment_of(resource))["resources"]
    # 0.5B int8 weights (~0.5 GiB) + 8 GiB KV + 2 GiB overhead, rounded up.
    assert resources == {"requests": {"cpu": "4", "memory": "11Gi"}, "limits": {"cpu": "4", "memory": "11Gi"}}
    given = make({**HUB, "cpu": {"memory": "24Gi"}})
    assert engine_container(deployment_of(given))["resources"]["limits"]["memory"] == "24Gi"


def test_memory_estimate_follows_size_and_weight_format():
    int4 = make({"model": {"hub": "Qwen/Qwen2.5-7B-Instruct", "weightFormat": "int4"}})
    fp16 = make({"model": {"hub": "Qwen/Qwen2.5-7B-Instruct", "weightFormat": "fp16"}})
    assert sizing.engine_memory(int4.spec) == "10Gi"  # 7e9 * 0.6 B = 3.9 GiB + 4 + 2
    assert sizing.engine_memory(fp16.spec) == "20Gi"  # 7e9 * 2 B = 13.04 GiB + 4 + 2
    hinted = make({"model": {"hub": "acme/chat", "parametersBillions": 1.5}})
    assert sizing.parameters_billions(hinted.spec) == 1.5
    unknown = make({"model": {"imagePath": "/opt/model"}})
    assert sizing.engine_memory(unknown.spec) == "13Gi"  # assumed 7B: 6.8 GiB + 4 + 2
    assert sizing.converter_memory(hinted.spec) == "10Gi"  # 1.5e9 * 4.5 B = 6.3 GiB + 3


@pytest.mark.parametrize(("name", "billions"), [
    ("Qwen/Qwen2.5-0.5B-Instruct", 0.5), ("meta-llama/Llama-3.1-8B", 8), ("mistralai/Mixtral-8x7B-v0.1", 56),
    ("OpenVINO/Qwen2-1.5B-Instruct-int4-ov", 1.5), ("openai-community/gpt2", None),
])
def test_parameters_from_name(name, billions):
    assert parameters_from_name(name) == billions


def test_memory_below_the_kv_cache_is_reported_not_built():
    with pytest.raises(SpecError, match=r"spec.cpu.memory: 8Gi cannot hold spec.engine.kvCacheSpaceGiB=16"):
        make({**HUB, "engine": {"kvCacheSpaceGiB": 16}, "cpu": {"memory": "8Gi"}})


@pytest.mark.parametrize(("isa", "features"), [
    ("avx2", ["AVX2"]),
    ("avx512", ["AVX2", "AVX512F", "AVX512BW", "AVX512VL"]),
    ("amx", ["AVX2", "AVX512F", "AVX512BW", "AVX512VL", "AMXTILE", "AMXBF16"]),
])
def test_min_isa_is_required_node_affinity_on_nfd_labels(isa, features):
    pod = deployment_of(make({**HUB, "cpu": {"minISA": isa}}))["spec"]["template"]["spec"]
    (term,) = pod["affinity"]["nodeAffinity"]["requiredDuringSchedulingIgnoredDuringExecution"]["nodeSelectorTerms"]
    assert term["matchExpressions"] == [
        {"key": f"{NFD_PREFIX}{feature}", "operator": "In", "values": ["true"]} for feature in features]


def test_user_affinity_is_merged_never_replaced():
    user = {
        "nodeAffinity": {
            "requiredDuringSchedulingIgnoredDuringExecution": {"nodeSelectorTerms": [
                {"matchExpressions": [{"key": "zone", "operator": "In", "values": ["a"]}]},
                {"matchExpressions": [{"key": "zone", "operator": "In", "values": ["b"]}]},
            ]},
            "preferredDuringSchedulingIgnoredDuringExecution": [{"weight": 1, "preference": {"matchExpressions": [
                {"key": "disk", "operator": "In", "values": ["ssd"]}]}}],
        },
        "podAntiAffinity": {"preferredDuringSchedulingIgnoredDuringExecution": []},
    }
    original = copy.deepcopy(user)
    merged = merge_affinity(user, "avx512")
    assert user == original  # the spec is not modified
    terms = merged["nodeAffinity"]["requiredDuringSchedulingIgnoredDuringExecution"]["nodeSelectorTerms"]
    # Terms are ORed: each one keeps the user's expression and gains the ISA ones.
    assert [t["matchExpressions"][0]["values"] for t in terms] == [["a"], ["b"]]
    for term in terms:
        assert {e["key"] for e in term["matchExpressions"][1:]} == {
            f"{NFD_PREFIX}{f}" for f in ("AVX2", "AVX512F", "AVX512BW", "AVX512VL")}
    assert merged["nodeAffinity"]["preferredDuringSchedulingIgnoredDuringExecution"] == \
        original["nodeAffinity"]["preferredDuringSchedulingIgnoredDuringExecution"]
    assert merged["podAntiAffinity"] == original["podAntiAffinity"]


def test_pod_is_locked_down_and_probed():
    deployment = deployment_of(make(HUB))
    pod = deployment["spec"]["template"]["spec"]
    container = engine_container(deployment)
    assert pod["securityContext"]["runAsNonRoot"] is True and pod["securityContext"]["runAsUser"] != 0
    assert container["securityContext"] == {"allowPrivilegeEscalation": False, "readOnlyRootFilesystem": True,
                                            "runAsNonRoot": True, "capabilities": {"drop": ["ALL"]}}
    for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
        assert container[probe]["httpGet"] == {"path": "/health", "port": "http"}
    # Loading gets half an hour before liveness applies; a pod that converts for itself first gets
    # two hours before the Deployment counts it as stuck.
    startup = container["startupProbe"]
    assert startup["periodSeconds"] * startup["failureThreshold"] == 30 * 60
    assert deployment["spec"]["progressDeadlineSeconds"] >= 2 * 3600
    cached = deployment_of(make({**HUB, "modelCache": {}}))
    assert 30 * 60 <= cached["spec"]["progressDeadlineSeconds"] < 2 * 3600
    assert "initContainers" not in cached["spec"]["template"]["spec"]
    (init,) = pod["initContainers"]
    assert init["securityContext"] == container["securityContext"]
    assert deployment["spec"]["template"]["metadata"]["annotations"]["prometheus.io/scrape"] == "true"


def test_model_cache_means_one_conversion_job_and_pods_reading_its_output():
    resource = make({**HUB, "modelCache": {"size": "30Gi", "storageClassName": "nfs"}})
    job = conversion_job_of(resource)
    args = job["spec"]["template"]["spec"]["containers"][0]["args"]
    assert args[:3] == ["convert", "Qwen/Qwen2.5-0.5B-Instruct", "--output"]
    output = args[3]
    assert output.startswith("/models/Qwen2.5-0.5B-Instruct--int8--")
    container = engine_container(deployment_of(resource))
    assert container["args"][1] == output
    assert {"name": "models", "mountPath": "/models", "readOnly": True} in container["volumeMounts"]
    claim = builders.cache_claim(resource)
    assert claim["metadata"]["name"] == "chat-model-cache"
    assert claim["spec"] == {"accessModes": ["ReadWriteMany"], "resources": {"requests": {"storage": "30Gi"}},
                             "storageClassName": "nfs"}
    # A new model (or weight format) is a new Job and a new directory; the same spec the same ones.
    int4 = make({**HUB, "model": {**HUB["model"], "weightFormat": "int4"}, "modelCache": {}})
    assert conversion_job_of(int4)["metadata"]["name"] != job["metadata"]["name"]
    assert builders.model_plan(int4).serve_path != output
    assert conversion_job_of(resource) == job
    assert len(job["metadata"]["name"]) <= 63


def test_image_models_are_served_as_they_are():
    resource = make({"model": {"imagePath": "/opt/models/qwen-ov"}})
    assert conversion_job_of(resource) is None
    assert builders.cache_claim(resource) is None
    assert engine_container(deployment_of(resource))["args"][1] == "/opt/models/qwen-ov"


@pytest.mark.parametrize(("model", "serve", "flags"), [
    ({"imagePath": "/opt/models/SmolLM2-135M-Instruct.Q4_1.gguf"}, "/opt/models/SmolLM2-135M-Instruct.Q4_1.gguf", []),
    ({"pvc": {"claimName": "weights", "path": "gguf/qwen2.5-7b-instruct-q4_k_m.gguf"}},
     "/source/gguf/qwen2.5-7b-instruct-q4_k_m.gguf", []),
    ({"pvc": {"claimName": "weights", "path": "gguf"}, "ggufFile": "qwen2.5-7b-instruct-q4_k_m.gguf"},
     "/source/gguf", ["--gguf-file", "qwen2.5-7b-instruct-q4_k_m.gguf"]),
    ({"hub": "Qwen/Qwen2.5-7B-Instruct-GGUF", "ggufFile": "qwen2.5-7b-instruct-q4_k_m.gguf", "revision": "v1",
      "hubTokenSecretRef": {"name": "hf"}},
     "Qwen/Qwen2.5-7B-Instruct-GGUF", ["--gguf-file", "qwen2.5-7b-instruct-q4_k_m.gguf", "--revision", "v1"]),
])
def test_gguf_files_are_served_as_they_are_without_conversion(model, serve, flags):
    """GenAI reads a GGUF itself: no Job, no init container, whatever the weight format or cache says."""
    cache = {} if "imagePath" not in model else None
    resource = make({"model": {**model, "weightFormat": "int4"}, "modelCache": cache})
    assert resource.spec.model.is_gguf and not resource.spec.model.needs_conversion
    assert conversion_job_of(resource) is None
    pod = deployment_of(resource)["spec"]["template"]["spec"]
    assert "initContainers" not in pod
    container = engine_container(deployment_of(resource))
    assert container["args"][1] == serve
    assert container["args"][-len(flags):] == flags if flags else "--gguf-file" not in container["args"]
    assert "--weight-format" not in container["args"]
    env = env_values(container)
    if "hubTokenSecretRef" in model:  # the engine downloads the file, so it gets the token
        assert env["HF_TOKEN"] == {"secretKeyRef": {"name": "hf", "key": "token"}}
    else:
        assert "HF_TOKEN" not in env
    if "pvc" in model:
        assert {"name": "source", "mountPath": "/source", "readOnly": True} in container["volumeMounts"]


def test_pvc_source_is_mounted_read_only():
    resource = make({"model": {"pvc": {"claimName": "weights", "path": "llama/8b"}}, "modelCache": {}})
    job = conversion_job_of(resource)
    assert job["spec"]["template"]["spec"]["containers"][0]["args"][1] == "/source/llama/8b"
    assert {"name": "source", "persistentVolumeClaim": {"claimName": "weights", "readOnly": True}} in \
        job["spec"]["template"]["spec"]["volumes"]


def test_service_endpoint_and_children_are_owned():
    resource = make({**HUB, "service": {"port": 80, "type": "NodePort", "annotations": {"a": "b"}}})
    svc = builders.service(resource)
    assert svc["spec"]["ports"] == [{"name": "http", "port": 80, "targetPort": "http", "protocol": "TCP"}]
    assert svc["metadata"]["annotations"] == {"a": "b"}
    assert names.endpoint("chat", "team-a", 80) == "http://chat.team-a.svc:80/v1"
    for child in (svc, deployment_of(resource), builders.service_monitor(resource)):
        (owner,) = child["metadata"]["ownerReferences"]
        assert owner["kind"] == "OVLLMDeployment" and owner["uid"] == "uid-1" and owner["controller"] is True


def test_service_annotations_do_not_touch_the_pod_template():
    before = deployment_of(make(HUB))
    after = deployment_of(make({**HUB, "service": {"annotations": {"team": "x"}}}))
    assert before == after
    assert deployment_of(make({**HUB, "engine": {"kvCacheSpaceGiB": 6}})) != before


def test_api_key_and_hub_token_come_from_secrets():
    resource = make({"model": {**HUB["model"], "hubTokenSecretRef": {"name": "hf", "key": "token"}},
                     "apiKeySecretRef": {"name": "keys", "key": "api-key"}})
    pod = deployment_of(resource)["spec"]["template"]["spec"]
    env = env_values(pod["containers"][0])
    assert env["VLLM_API_KEY"] == {"secretKeyRef": {"name": "keys", "key": "api-key"}}
    assert "HF_TOKEN" not in env  # only what downloads gets the hub token
    assert env_values(pod["initContainers"][0])["HF_TOKEN"] == {"secretKeyRef": {"name": "hf", "key": "token"}}


def test_extra_env_may_not_override_the_contract():
    with pytest.raises(SpecError, match="spec.engine.extraEnv: VLLM_OPENVINO_KVCACHE_SPACE"):
        make({**HUB, "engine": {"extraEnv": [{"name": "VLLM_OPENVINO_KVCACHE_SPACE", "value": "99"}]}})
    other = make({**HUB, "engine": {"extraEnv": [{"name": "HOME", "value": "/data"}, {"name": "X", "value": "1"}]}})
    env = env_values(engine_container(deployment_of(other)))
    assert env["HOME"] == "/data" and env["X"] == "1"


def test_pdb_and_service_monitor():
    assert builders.pod_disruption_budget(make(HUB)) is None
    pdb = builders.pod_disruption_budget(make({**HUB, "podDisruptionBudget": {"maxUnavailable": 1}}))
    assert pdb["spec"] == {"selector": {"matchLabels": names.selector_labels("chat")}, "maxUnavailable": 1}
    monitor = builders.service_monitor(make({**HUB, "metrics": {"serviceMonitorLabels": {"release": "prom"}}}))
    assert monitor["metadata"]["labels"]["release"] == "prom"
    assert monitor["spec"]["endpoints"] == [{"port": "http", "path": "/metrics", "interval": "30s"}]
    # the chart's OVLLMEngineDown alert selects engine targets by this label
    assert monitor["spec"]["podTargetLabels"] == ["app.kubernetes.io/component", "app.kubernetes.io/instance"]
    assert builders.service_monitor(make({**HUB, "metrics": {"enabled": False}})) is None


@pytest.mark.parametrize(("spec", "message"), [
    ({"model": {}}, "spec.model: Value error, set exactly one source"),
    ({"model": {"hub": "a/b", "imagePath": "/m"}}, "set exactly one source"),
    ({"model": {"imagePath": "/m", "ggufFile": "m.gguf"}}, "ggufFile names a file in a hub repo or a pvc directory"),
    ({**HUB, "engine": {"tensorParallelSize": 2}}, "spec.engine.tensorParallelSize"),
    ({**HUB, "replicas": -1}, "spec.replicas"),
    ({**HUB, "cpu": {"minISA": "sse4"}}, "spec.cpu.minISA"),
    ({**HUB, "unknownField": 1}, "spec.unknownField"),
])
def test_invalid_specs_name_the_field(spec, message):
    with pytest.raises(SpecError, match=message.replace(".", r"\.")):
        make(spec)


def test_without_a_router_the_service_selects_the_engines_and_nothing_else_is_built():
    resource = make(HUB)
    assert builders.service(resource)["spec"]["selector"] == names.selector_labels("chat")
    monitor = builders.service_monitor(resource)
    # One selector for the engines' Service, and the router's when there is one.
    assert monitor["spec"]["selector"]["matchLabels"] == {"app.kubernetes.io/instance": "chat",
                                                         "app.kubernetes.io/managed-by": "ovllm-operator"}
    assert builders.service(resource)["metadata"]["labels"].items() >= monitor["spec"]["selector"][
        "matchLabels"].items()


def test_a_router_fronts_the_engines_with_only_the_rights_to_watch_endpointslices():
    resource = make({**HUB, "router": {"enabled": True, "strategy": "least-load", "replicas": 2,
                                       "prefixChars": 200, "loadFactor": 1.5},
                     "tolerations": [{"key": "llm", "operator": "Exists"}]})
    service = builders.service(resource)
    assert service["spec"]["selector"] == names.router_selector_labels("chat")
    assert service["spec"]["ports"][0]["port"] == 8000
    kinds = [(child["kind"], child["metadata"]["name"]) for child in router_builders.router_children(resource)]
    assert kinds == [("ServiceAccount", "chat-router"), ("Role", "chat-router"), ("RoleBinding", "chat-router"),
                     ("Service", "chat-engines"), ("Deployment", "chat-router")]
    account, role, binding, engines, deployment = router_builders.router_children(resource)
    assert role["rules"] == [{"apiGroups": ["discovery.k8s.io"], "resources": ["endpointslices"],
                              "verbs": ["get", "list", "watch"]}]
    assert binding["subjects"] == [{"kind": "ServiceAccount", "name": "chat-router", "namespace": "team-a"}]
    assert binding["roleRef"]["name"] == role["metadata"]["name"]
    assert engines["spec"]["clusterIP"] == "None"
    assert engines["spec"]["selector"] == names.selector_labels("chat")
    assert engines["metadata"]["labels"].items() >= builders.service_monitor(resource)["spec"]["selector"][
        "matchLabels"].items()
    pod = deployment["spec"]["template"]
    assert deployment["spec"]["replicas"] == 2
    assert deployment["spec"]["selector"]["matchLabels"] == names.router_selector_labels("chat")
    assert pod["metadata"]["labels"].items() >= names.router_selector_labels("chat").items()
    # No router pod may ever count as an engine replica or receive the engines' traffic.
    assert not pod["metadata"]["labels"].items() >= names.selector_labels("chat").items()
    assert pod["spec"]["serviceAccountName"] == "chat-router" and pod["spec"]["automountServiceAccountToken"]
    assert pod["spec"]["tolerations"] == [{"key": "llm", "operator": "Exists"}]
    assert "affinity" not in pod["spec"]  # the router needs no instruction-set floor
    (container,) = pod["spec"]["containers"]
    assert container["args"] == ["router", "--host", "0.0.0.0", "--port", "8000", "--service", "chat-engines",
                                 "--namespace", "team-a", "--strategy", "least-load", "--prefix-chars", "200",
                                 "--load-factor", "1.5"]
    assert container["securityContext"]["readOnlyRootFilesystem"] and pod["spec"]["securityContext"]["runAsNonRoot"]
    assert container["resources"]["requests"] == container["resources"]["limits"] == {"cpu": "1", "memory": "512Mi"}
    for child in router_builders.router_children(resource):
        assert child["metadata"]["ownerReferences"][0]["uid"] == "uid-1"


@pytest.mark.parametrize(("autoscaling", "message"), [
    ({"minReplicas": 3, "maxReplicas": 2, "target": 4}, "maxReplicas must be at least minReplicas"),
    ({"maxReplicas": 2, "metric": "kvCacheUsage", "target": 80}, "at most 1"),
    ({"maxReplicas": 2, "target": 0}, "spec.autoscaling.target"),
    ({"maxReplicas": 2}, "spec.autoscaling.target"),
])
def test_invalid_autoscaling_is_refused_naming_the_field(autoscaling, message):
    with pytest.raises(SpecError, match=message):
        make({**HUB, "autoscaling": autoscaling})


DRAFT_HUB = {"hub": "Qwen/Qwen2.5-0.5B-Instruct"}
SEVEN_B = {"model": {"hub": "Qwen/Qwen2.5-7B-Instruct"}}


def with_speculative(spec: dict, **speculative) -> dict:
    return {**spec, "engine": {**spec.get("engine", {}), "speculative": speculative}}


def speculative_config(resource) -> dict | None:
    args = engine_container(deployment_of(resource))["args"]
    return json.loads(args[args.index("--speculative-config") + 1]) if "--speculative-config" in args else None


def test_ngram_speculation_is_compact_json_with_the_lookup_default():
    resource = make(with_speculative(HUB, method="ngram"))
    args = engine_container(deployment_of(resource))["args"]
    assert args[args.index("--speculative-config") + 1] == (
        '{"method":"ngram","num_speculative_tokens":4,"prompt_lookup_max":3}')
    tuned = make(with_speculative(HUB, method="ngram", numSpeculativeTokens=8, promptLookupMax=5))
    assert speculative_config(tuned) == {"method": "ngram", "num_speculative_tokens": 8, "prompt_lookup_max": 5}
    assert speculative_config(make(HUB)) is None


def test_an_image_draft_is_passed_as_it_is_and_converts_nothing():
    resource = make(with_speculative({"model": {"imagePath": "/opt/models/qwen-7b"}}, method="draftModel",
                                     draftModel={"imagePath": "/opt/models/draft.gguf"}, numSpeculativeTokens=3))
    assert speculative_config(resource) == {"method": "draft_model", "model": "/opt/models/draft.gguf",
                                            "num_speculative_tokens": 3}
    assert "initContainers" not in deployment_of(resource)["spec"]["template"]["spec"]
    assert conversion_job_of(resource) is None


def test_without_a_cache_the_draft_converts_in_its_own_init_container_beside_the_model():
    resource = make(with_speculative(SEVEN_B, method="draftModel",
                                     draftModel={**DRAFT_HUB, "revision": "v2", "weightFormat": "int8"}))
    pod = deployment_of(resource)["spec"]["template"]["spec"]
    draft, model = pod["initContainers"]
    assert (draft["name"], model["name"]) == ("convert-draft", "convert")
    assert draft["args"] == ["convert", "Qwen/Qwen2.5-0.5B-Instruct", "--output", "/cache/draft",
                             "--weight-format", "int8", "--revision", "v2"]
    assert model["args"][:4] == ["convert", "Qwen/Qwen2.5-7B-Instruct", "--output", "/cache/model"]
    assert draft["volumeMounts"] == model["volumeMounts"]
    assert speculative_config(resource) == {"method": "draft_model", "model": "/cache/draft",
                                            "num_speculative_tokens": 4}


def test_with_a_cache_the_job_converts_the_draft_then_the_model_into_their_own_directories():
    resource = make({**with_speculative(SEVEN_B, method="draftModel", draftModel=DRAFT_HUB), "modelCache": {}})
    pod = conversion_job_of(resource)["spec"]["template"]["spec"]
    (draft,) = pod["initContainers"]
    (model,) = pod["containers"]
    draft_dir, model_dir = draft["args"][3], model["args"][3]
    assert draft["args"] == ["convert", "Qwen/Qwen2.5-0.5B-Instruct", "--output", draft_dir, "--weight-format", "int4"]
    assert draft_dir.startswith("/models/Qwen2.5-0.5B-Instruct--int4--") and model_dir.startswith("/models/")
    assert draft_dir != model_dir and draft["volumeMounts"] == model["volumeMounts"]
    assert env_values(draft)["VLLM_OPENVINO_ENABLE_QUANTIZED_WEIGHTS"] == "OFF"  # the draft's int4, not int8
    assert speculative_config(resource)["model"] == draft_dir
    assert engine_container(deployment_of(resource))["args"][1] == model_dir
    # The conversion pod needs the bigger conversion's memory: the 7B model's.
    assert draft["resources"] == model["resources"] == conversion_job_of(make({**SEVEN_B, "modelCache": {}}))[
        "spec"]["template"]["spec"]["containers"][0]["resources"]


@pytest.mark.parametrize("model", [{"imagePath": "/opt/models/qwen-7b"},
                                   {"hub": "Qwen/Qwen2.5-7B-Instruct-GGUF", "ggufFile": "q4.gguf"}])
def test_a_hub_draft_converts_even_when_the_model_does_not(model):
    draft = {**DRAFT_HUB, "ggufFile": "draft-q8.gguf", "weightFormat": "fp16"}
    cached = make({**with_speculative({"model": model}, method="draftModel", draftModel=draft), "modelCache": {}})
    (container,) = conversion_job_of(cached)["spec"]["template"]["spec"]["containers"]
    assert container["name"] == "convert-draft"
    assert container["args"][-4:] == ["--weight-format", "fp16", "--gguf-file", "draft-q8.gguf"]
    # A 0.5B draft's conversion: 0.5e9 * 4.5 B = 2.1 GiB + 3.
    assert container["resources"]["limits"]["memory"] == "6Gi"
    uncached = make(with_speculative({"model": model}, method="draftModel", draftModel=draft))
    (init,) = deployment_of(uncached)["spec"]["template"]["spec"]["initContainers"]
    assert (init["name"], init["args"][3]) == ("convert-draft", "/cache/draft")


def test_the_hub_token_serves_the_draft_download_too():
    resource = make(with_speculative({"model": {**SEVEN_B["model"], "hubTokenSecretRef": {"name": "hf"}}},
                                     method="draftModel", draftModel=DRAFT_HUB))
    for init in deployment_of(resource)["spec"]["template"]["spec"]["initContainers"]:
        assert env_values(init)["HF_TOKEN"] == {"secretKeyRef": {"name": "hf", "key": "token"}}


def test_the_conversion_job_changes_with_the_draft():
    base = {**SEVEN_B, "modelCache": {}}
    names_of = {conversion_job_of(make(spec))["metadata"]["name"] for spec in (
        base,
        with_speculative(base, method="draftModel", draftModel=DRAFT_HUB),
        with_speculative(base, method="draftModel", draftModel={**DRAFT_HUB, "weightFormat": "int8"}),
        with_speculative(base, method="draftModel", draftModel={"hub": "Qwen/Qwen2.5-1.5B-Instruct"}),
    )}
    assert len(names_of) == 4
    # ngram needs no conversion: the Job stays the model's own.
    assert conversion_job_of(make(with_speculative(base, method="ngram")))["metadata"]["name"] == (
        conversion_job_of(make(base))["metadata"]["name"])


def test_the_memory_estimate_counts_the_drafts_weights():
    never_off = {"disableByBatchSize": 256}  # at maxNumSeqs: no plain pipeline beside (counted below)
    plain = make(SEVEN_B)
    named = make(with_speculative(SEVEN_B, method="draftModel", draftModel={"hub": "Qwen/Qwen2.5-1.5B-Instruct"},
                                  **never_off))
    unnamed = make(with_speculative(SEVEN_B, method="draftModel", draftModel={"imagePath": "/opt/draft"}, **never_off))
    sized = make(with_speculative(SEVEN_B, method="draftModel", draftModel={
        "imagePath": "/opt/draft", "parametersBillions": 3, "weightFormat": "fp16"}, **never_off))
    assert sizing.engine_memory(plain.spec) == "13Gi"  # 7e9 * 1.05 B = 6.8 GiB + 4 + 2
    assert sizing.engine_memory(named.spec) == "14Gi"  # + 1.5e9 * 0.6 B = 0.84 GiB
    assert sizing.weights_gib(unnamed.spec) - sizing.weights_gib(plain.spec) == pytest.approx(
        0.5e9 * 0.6 / 2**30)  # a draft's size unknown: 0.5B assumed, int4 by default
    assert sizing.engine_memory(sized.spec) == "19Gi"  # + 3e9 * 2 B = 5.6 GiB
    assert sizing.engine_memory(make(with_speculative(SEVEN_B, method="ngram", **never_off)).spec) == "13Gi"
    # by default the engine also keeps a plain pipeline for loaded times: a second copy of the model
    assert sizing.engine_memory(make(with_speculative(SEVEN_B, method="ngram")).spec) == "20Gi"  # + 6.8 GiB


@pytest.mark.parametrize(("speculative", "message"), [
    ({"method": "ngram", "draftModel": DRAFT_HUB}, "draftModel applies only to method draftModel"),
    ({"method": "draftModel"}, "method draftModel needs draftModel"),
    ({"method": "draftModel", "draftModel": DRAFT_HUB, "promptLookupMax": 3}, "promptLookupMax applies only to"),
    ({"method": "draftModel", "draftModel": {**DRAFT_HUB, "imagePath": "/d"}}, "exactly one draft source"),
    ({"method": "draftModel", "draftModel": {"imagePath": "/d", "revision": "v1"}}, "only to a hub draft"),
    ({"method": "ngram", "numSpeculativeTokens": 17}, "spec.engine.speculative.numSpeculativeTokens"),
])
def test_inconsistent_speculation_is_reported_naming_the_field(speculative, message):
    with pytest.raises(SpecError, match="spec.engine.speculative") as caught:
        make(with_speculative(HUB, **speculative))
    assert message in str(caught.value)


@pytest.mark.parametrize("speculative", [None, {"method": "ngram"},
                                         {"method": "draftModel", "draftModel": DRAFT_HUB}])
def test_a_deployment_tells_what_it_serves_so_a_conversion_keeps_the_pair(speculative):
    from ovllm_operator import reconcile

    spec = {**SEVEN_B, "modelCache": {}} if speculative is None else with_speculative(
        {**SEVEN_B, "modelCache": {}}, **speculative)
    resource = make(spec)
    plan = builders.model_plan(resource)
    serving = reconcile.served_now(builders.deployment(resource, plan))
    assert serving == builders.served(resource, plan)
    # A new draft being converted: the pods keep the model and draft they serve.
    newer = make({**spec, "engine": {"speculative": {"method": "draftModel", "draftModel": {
        "hub": "Qwen/Qwen2.5-1.5B-Instruct"}}}})
    kept = builders.deployment(newer, builders.model_plan(newer), serving)
    assert reconcile.served_now(kept) == serving
