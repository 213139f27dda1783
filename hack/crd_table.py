"""Print README.md's table of OVLLMDeployment fields from the CRD, so the two never disagree.

    python hack/crd_table.py   # paste between the markers in README.md; tests/operator/test_crd.py checks
"""

from __future__ import annotations

import json
from pathlib import Path

import yaml

CRD = Path(__file__).resolve().parent.parent / "crds" / "ovllm.io_ovllmdeployments.yaml"


def _type(prop: dict) -> str:
    if prop.get("x-kubernetes-int-or-string"):
        return "int or string"
    if "enum" in prop:
        return " \\| ".join(prop["enum"])
    kind = prop.get("type", "object")
    if kind == "array":
        return f"list of {prop['items'].get('type', 'object')}"
    if kind == "object" and "additionalProperties" in prop:
        return "map of string"
    return kind


def _rows(schema: dict, path: str):
    required = set(schema.get("required", []))
    for key, prop in schema.get("properties", {}).items():
        field = f"{path}.{key}"
        default = prop.get("default")
        if default is not None and default != {}:
            shown = f"`{json.dumps(default)}`"
        else:
            shown = "required" if key in required else ""
        description = prop.get("description", "").replace("|", "\\|")
        yield f"| `{field}` | {_type(prop)} | {shown} | {description} |"
        yield from _rows(prop, field)


def table() -> str:
    crd = yaml.safe_load(CRD.read_text())
    spec = crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["spec"]
    return "\n".join(["| field | type | default | meaning |", "| --- | --- | --- | --- |", *_rows(spec, "spec")])


if __name__ == "__main__":
    print(table())
