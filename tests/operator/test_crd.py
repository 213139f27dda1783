"""The CRD, the operator's spec models and the README describe one API: a test keeps them equal."""

from __future__ import annotations

import json
import subprocess
import sys
import typing
from pathlib import Path

import pytest
import yaml
from kubernetes.client.exceptions import ApiException
from operator_testing import create
from pydantic import BaseModel

from ovllm_operator import names
from ovllm_operator.spec import OVLLMDeploymentSpec

ROOT = Path(__file__).resolve().parents[2]
CRD = yaml.safe_load((ROOT / "crds" / "ovllm.io_ovllmdeployments.yaml").read_text())
VERSION = CRD["spec"]["versions"][0]
SCHEMA = VERSION["schema"]["openAPIV3Schema"]


def _model_class(annotation) -> type[BaseModel] | None:
    for candidate in (annotation, *typing.get_args(annotation)):
        if isinstance(candidate, type) and issubclass(candidate, BaseModel):
            return candidate
    return None


def _compare(schema: dict, model: type[BaseModel], path: str, problems: list[str]) -> None:
    fields = {field.alias or name: field for name, field in model.model_fields.items()}
    properties = schema.get("properties", {})
    for missing in sorted(set(properties) - set(fields)):
        problems.append(f"{path}.{missing}: in the CRD, not in {model.__name__}")
    for missing in sorted(set(fields) - set(properties)):
        problems.append(f"{path}.{missing}: in {model.__name__}, not in the CRD")
    for key in sorted(set(fields) & set(properties)):
        field, prop = fields[key], properties[key]
        if "default" in prop and not isinstance(prop["default"], dict):
            default = field.get_default(call_default_factory=True)
            default = list(default) if isinstance(default, tuple) else default
            if default != prop["default"]:
                problems.append(f"{path}.{key}: default {prop['default']!r} in the CRD, {default!r} in the model")
        nested = _model_class(field.annotation)
        if nested is not None:
            _compare(prop, nested, f"{path}.{key}", problems)


def test_crd_spec_and_operator_model_have_the_same_fields_and_defaults():
    problems: list[str] = []
    _compare(SCHEMA["properties"]["spec"], OVLLMDeploymentSpec, "spec", problems)
    assert problems == []


def _field_paths(schema: dict, path: str):
    for key, prop in (schema.get("properties") or {}).items():
        yield f"{path}.{key}", prop
        yield from _field_paths(prop, f"{path}.{key}")
        if "items" in prop:
            yield from _field_paths(prop["items"], f"{path}.{key}[]")


def test_every_spec_field_is_described_in_the_schema_and_the_readme():
    undocumented = [path for path, prop in _field_paths(SCHEMA["properties"]["spec"], "spec")
                    if "[]" not in path and not prop.get("description")]
    assert undocumented == []
    sys.path.insert(0, str(ROOT / "hack"))
    import crd_table

    # README's field table is generated from the CRD: regenerate it with `python hack/crd_table.py`.
    assert crd_table.table() in (ROOT / "README.md").read_text()


def test_crd_names_scale_subresource_and_columns():
    assert CRD["metadata"]["name"] == f"{names.PLURAL}.{names.GROUP}"
    assert CRD["spec"]["scope"] == "Namespaced" and CRD["spec"]["names"]["shortNames"]
    assert VERSION["name"] == names.VERSION
    assert VERSION["subresources"]["scale"] == {
        "specReplicasPath": ".spec.replicas", "statusReplicasPath": ".status.replicas",
        "labelSelectorPath": ".status.selector"}
    columns = {column["name"] for column in VERSION["additionalPrinterColumns"]}
    assert {"Model", "Replicas", "Ready", "ISA", "KV", "Endpoint", "Age"} <= columns


def test_operator_imports_nothing_of_the_engine():
    code = ("import sys, ovllm_operator.controller, ovllm_operator.cli, ovllm_operator.reconcile; "
            "heavy = [m for m in ('ovllm_engine', 'openvino', 'openvino_genai', 'torch', 'optimum') "
            "if m in sys.modules]; print(heavy); sys.exit(1 if heavy else 0)")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr


HUB_MODEL = {"hub": "Qwen/Qwen2.5-7B-Instruct"}
DRAFT = {"hub": "Qwen/Qwen2.5-0.5B-Instruct"}


@pytest.mark.e2e
@pytest.mark.parametrize(("speculative", "message"), [
    ({"method": "ngram", "draftModel": DRAFT}, "spec.engine.speculative.draftModel applies only to method draftModel"),
    ({"method": "draftModel"}, "spec.engine.speculative.draftModel is required with method draftModel"),
    ({"method": "draftModel", "draftModel": DRAFT, "promptLookupMax": 3},
     "spec.engine.speculative.promptLookupMax applies only to method ngram"),
    ({"method": "ngram", "numSpeculativeTokens": 0}, "spec.engine.speculative.numSpeculativeTokens"),
    ({"method": "ngram", "numSpeculativeTokens": 17}, "spec.engine.speculative.numSpeculativeTokens"),
    ({"method": "draftModel", "draftModel": {**DRAFT, "imagePath": "/opt/draft"}},
     "spec.engine.speculative.draftModel: set exactly one source: hub or imagePath"),
    ({"method": "draftModel", "draftModel": {"imagePath": "/opt/draft", "revision": "v1"}},
     "spec.engine.speculative.draftModel.revision applies only to a hub draft"),
    ({"method": "medusa"}, "spec.engine.speculative.method"),
])
def test_the_api_server_refuses_inconsistent_speculation(api, namespace, speculative, message):
    with pytest.raises(ApiException) as caught:
        create(api, namespace, "invalid", {"model": HUB_MODEL, "engine": {"speculative": speculative}})
    assert caught.value.status == 422
    assert message in json.loads(caught.value.body)["message"]


@pytest.mark.e2e
def test_the_api_server_refuses_the_speculative_flag_in_extra_args(api, namespace):
    with pytest.raises(ApiException) as caught:
        create(api, namespace, "invalid", {"model": HUB_MODEL,
                                           "engine": {"extraArgs": ['--speculative-config={"method":"ngram"}']}})
    assert caught.value.status == 422
    assert "speculative decoding); set the spec field instead" in json.loads(caught.value.body)["message"]


@pytest.mark.e2e
def test_the_api_server_accepts_speculation_and_applies_its_defaults(api, namespace):
    ngram = create(api, namespace, "ngram", {"model": HUB_MODEL, "engine": {"speculative": {"method": "ngram"}}})
    assert ngram["spec"]["engine"]["speculative"] == {"method": "ngram", "numSpeculativeTokens": 4}
    draft = create(api, namespace, "draft", {"model": HUB_MODEL, "engine": {"speculative": {
        "method": "draftModel", "numSpeculativeTokens": 6, "draftModel": {**DRAFT, "revision": "main"}}}})
    assert draft["spec"]["engine"]["speculative"] == {"method": "draftModel", "numSpeculativeTokens": 6, "draftModel": {
        **DRAFT, "revision": "main", "weightFormat": "int4"}}
    # A model baked into the image needs no cache, unless a hub draft is converted into it.
    baked = {"model": {"imagePath": "/opt/models/qwen"}, "modelCache": {}}
    create(api, namespace, "baked", {**baked, "engine": {"speculative": {"method": "draftModel", "draftModel": DRAFT}}})
    with pytest.raises(ApiException) as caught:
        create(api, namespace, "baked-ngram", {**baked, "engine": {"speculative": {"method": "ngram"}}})
    assert "spec.modelCache: a model baked into the image" in json.loads(caught.value.body)["message"]
