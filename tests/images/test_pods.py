"""The built images, run as the operator's pods run them (images_testing.Docker plays the pod specs
the operator's own builders make): the converter init container converts a Hugging Face model from a
read-only claim into the pod's emptyDir, the engine serves it under the pod's security context, the
router streams through to it, SIGTERM ends each within its grace, and every image stays small and
holds its role only."""

from __future__ import annotations

import shutil
import time

import pytest

from http_testing import openai_client
from images_testing import SIZE_LIMITS, TARGETS, empty_dir, image

pytestmark = [pytest.mark.e2e, pytest.mark.slow]


# How the engine pod gets its IR, the two ways the operator plans it: without a model cache an init
# container (converter image) converts into the pod's emptyDir; with one, a conversion Job's pod
# converts into the cache claim, which engine pods mount read-only.
PLANS = {"init-container": {}, "model-cache-job": {"modelCache": {"claimName": "cache"}}}


@pytest.fixture(scope="module", params=sorted(PLANS))
def ovllm_deployment(request):
    """An OVLLMDeployment of a Hugging Face model on a claim, with the router on, and the built images."""
    from ovllm_operator.builders import Resource

    return request.param, Resource.from_body({
        "metadata": {"name": "chat", "namespace": "images", "uid": "u"},
        "spec": {
            "model": {"pvc": {"claimName": "models", "path": "tiny"}, "weightFormat": "int8"},
            "engine": {"image": image("engine"), "converterImage": image("converter"), "kvCacheSpaceGiB": 1},
            "router": {"enabled": True, "image": image("router")},
            **PLANS[request.param],
        },
    })


@pytest.fixture(scope="module")
def engine_pod(docker_images, ovllm_deployment, tiny_hf, tmp_path_factory):
    """The model converted by the converter image as the operator plans it, then served by the engine
    container. Yields the engine's pod spec, its container name and its address."""
    from ovllm_operator import builders

    docker = docker_images
    plan, resource = ovllm_deployment
    claim = tmp_path_factory.mktemp("claim")
    claim.chmod(0o755)  # a volume the pod's user can read (mktemp makes it root's alone)
    shutil.copytree(tiny_hf, claim / "tiny")  # the claim holds the model at spec.model.pvc.path
    scratch = tmp_path_factory.mktemp("pod")
    volumes = {"tmp": empty_dir(scratch / "tmp"), "cache": empty_dir(scratch / "cache"), "source": claim,
               "models": empty_dir(scratch / "models")}
    plan_of = builders.model_plan(resource)
    pod = builders.deployment(resource, plan_of)["spec"]["template"]["spec"]
    if plan == "init-container":
        converter_pod, (converter,) = pod, pod["initContainers"]
    else:
        assert "initContainers" not in pod
        converter_pod = builders.conversion_job(resource, plan_of)["spec"]["template"]["spec"]
        (converter,) = converter_pod["containers"]
    converted = docker.run_pod_container(converter_pod, converter, volumes, name=f"{docker.network}-{plan}-convert",
                                         detach=False)
    assert converted.returncode == 0, converted.stdout[-3000:] + converted.stderr[-3000:]

    (engine,) = pod["containers"]
    served = engine["args"][1]  # `serve MODEL`: where the converter's output must be
    mount = next(m for m in engine["volumeMounts"] if served.startswith(m["mountPath"] + "/"))
    if plan == "model-cache-job":
        assert mount["name"] == "models" and mount["readOnly"] is True  # engines never write the cache
    output = volumes[mount["name"]] / served[len(mount["mountPath"]) + 1:]
    assert (output / "openvino_model.xml").is_file()
    assert "int8" in (output / "ovllm-conversion.json").read_text()

    name = f"{docker.network}-{plan}-engine"
    docker.run_pod_container(pod, engine, volumes, name=name, detach=True, publish=8000)
    base_url = docker.address(name, 8000)
    docker.wait_answering(name, base_url + "/health")
    return pod, name, base_url


def test_the_pod_spec_is_played_as_a_cluster_would(engine_pod):
    pod, _, _ = engine_pod
    (engine,) = pod["containers"]
    # What the flags below stand for: a test of a pod that was not locked down would prove little.
    assert engine["securityContext"]["readOnlyRootFilesystem"] is True
    assert engine["securityContext"]["capabilities"]["drop"] == ["ALL"]
    assert engine["securityContext"]["allowPrivilegeEscalation"] is False
    assert pod["securityContext"]["runAsUser"] == 1000
    assert {mount["mountPath"] for mount in engine["volumeMounts"]} >= {"/tmp", "/cache"}


def test_the_engine_image_serves_the_converted_model(docker_images, engine_pod):
    _, name, base_url = engine_pod
    client = openai_client(base_url)
    (model,) = [entry.id for entry in client.models.list().data]
    assert model == "chat"

    plain = client.chat.completions.create(model="chat", messages=[{"role": "user", "content": "Hello"}],
                                           max_tokens=8, temperature=0, extra_body={"ignore_eos": True})
    assert plain.choices[0].message.content and plain.usage.completion_tokens == 8

    chunks = list(client.chat.completions.create(model="chat", messages=[{"role": "user", "content": "Hello"}],
                                                 max_tokens=8, temperature=0, stream=True,
                                                 extra_body={"ignore_eos": True}))
    streamed = "".join(chunk.choices[0].delta.content or "" for chunk in chunks if chunk.choices)
    assert streamed == plain.choices[0].message.content  # greedy: the same text either way
    assert len(chunks) > 2

    import httpx
    from prometheus_client.parser import text_string_to_metric_families

    samples = [sample for family in text_string_to_metric_families(httpx.get(base_url + "/metrics", timeout=10).text)
               for sample in family.samples]
    finished = [sample.value for sample in samples if sample.name == "vllm:request_success_total"
                and sample.labels == {"model_name": "chat", "finished_reason": "length"}]
    assert finished == [2.0]
    # The engine process really runs as the pod's user, in a root filesystem it cannot write.
    assert docker_images("exec", name, "id", "-u").stdout.strip() == "1000"
    refused = docker_images("exec", name, "touch", "/opt/ovllm/x", check=False)
    assert refused.returncode != 0 and "Read-only file system" in refused.stderr


def test_the_router_image_streams_through_to_the_engine_chunk_by_chunk(docker_images, engine_pod,
                                                                        ovllm_deployment, tmp_path):
    from ovllm_operator import router_builders

    docker = docker_images
    _, engine_name, _ = engine_pod
    pod = router_builders.router_deployment(ovllm_deployment[1])["spec"]["template"]["spec"]
    (router,) = pod["containers"]
    # The EndpointSlice watch (--service, --namespace) needs a cluster: here the engine container is
    # the one backend. Every other argument is the operator's.
    args, words = [], iter(router["args"])
    for word in words:
        if word in ("--service", "--namespace"):
            next(words)
        else:
            args.append(word)
    args += ["--backend", f"http://{engine_name}:8000"]
    name = f"{docker.network}-{ovllm_deployment[0]}-router"
    docker.run_pod_container(pod, router, {"tmp": empty_dir(tmp_path / "tmp")}, name=name, detach=True,
                             publish=8000, args=args)
    base_url = docker.address(name, 8000)
    docker.wait_answering(name, base_url + "/health", timeout=60)

    arrivals = []
    started = time.monotonic()
    stream = openai_client(base_url).completions.create(model="chat", prompt="Once upon a time", max_tokens=256,
                                                  temperature=0, stream=True, extra_body={"ignore_eos": True})
    for chunk in stream:
        if chunk.choices and chunk.choices[0].text:
            arrivals.append(time.monotonic() - started)
    assert len(arrivals) >= 100
    # Unbuffered: the first token reached the client long before the last one was generated.
    assert arrivals[0] < 0.5 * arrivals[-1], (arrivals[0], arrivals[-1])

    stopped = time.monotonic()
    docker("stop", "--time", str(pod["terminationGracePeriodSeconds"]), name, timeout=120)
    assert docker.state(name)["ExitCode"] == 0, docker.logs(name)
    assert time.monotonic() - stopped < pod["terminationGracePeriodSeconds"]


def test_sigterm_ends_the_engine_within_its_grace(docker_images, engine_pod):
    pod, name, _ = engine_pod
    grace = pod["terminationGracePeriodSeconds"]
    stopped = time.monotonic()
    docker_images("stop", "--time", str(grace), name, timeout=grace + 60)
    took = time.monotonic() - stopped
    state = docker_images.state(name)
    assert state["ExitCode"] == 0 and not state["OOMKilled"], docker_images.logs(name)
    assert took < grace, f"took {took:.1f}s of a {grace}s grace"


def test_each_image_is_small_and_holds_its_role_only(docker_images):
    sizes = {target: docker_images.size(image(target)) for target in TARGETS}
    print("image sizes (MB):", {target: round(size / 1e6) for target, size in sizes.items()})
    for target, limit in SIZE_LIMITS.items():
        assert sizes[target] <= limit, f"{image(target)} is {sizes[target] / 1e6:.0f} MB, over {limit / 1e6:.0f} MB"
    operator = docker_images.distributions(image("operator"))
    router = docker_images.distributions(image("router"))
    engine = docker_images.distributions(image("engine"))
    converter = docker_images.distributions(image("converter"))
    assert {"kopf", "kubernetes"} <= operator and not operator & {"openvino", "openvino-genai", "torch"}
    assert {"aiohttp", "kubernetes"} <= router and not router & {"openvino", "openvino-genai", "torch", "kopf"}
    assert {"openvino-genai", "aiohttp"} <= engine and not engine & {"torch", "optimum-intel", "kopf"}
    assert {"torch", "optimum-intel", "nncf"} <= converter and "kopf" not in converter


@pytest.mark.parametrize("target", TARGETS)
def test_each_image_starts_its_role_read_only_as_a_pod_would_and_keeps_no_build_secret(docker_images, target):
    command = {"engine": "serve", "converter": "convert", "operator": "operator", "router": "router"}[target]
    result = docker_images("run", "--rm", "--read-only", "--tmpfs", "/tmp", "--cap-drop", "ALL", "--security-opt",
                           "no-new-privileges", image(target), "--help")
    assert f"usage: ovllm {command}" in result.stdout
    # The CA bundle the build was given (a BuildKit secret) is in no layer and no variable.
    config = docker_images("image", "inspect", "--format", "{{json .Config.Env}}", image(target)).stdout
    assert "/run/secrets" not in config and "SSL_CERT_FILE" not in config
    probe = docker_images("run", "--rm", "--entrypoint", "sh", image(target), "-c", "ls -A /run/secrets 2>/dev/null",
                          check=False)
    assert probe.stdout.strip() == ""
