"""What every pod the operator makes shares (engine, conversion, router): a non-root user with the
runtime's seccomp profile, containers that cannot gain privileges or write their root filesystem
(the `restricted` Pod Security Standard), and the spec's node selector and tolerations."""

from __future__ import annotations

from ovllm_operator.spec import OVLLMDeploymentSpec

USER_ID = 1000


def container_security() -> dict:
    return {"allowPrivilegeEscalation": False, "readOnlyRootFilesystem": True, "runAsNonRoot": True,
            "capabilities": {"drop": ["ALL"]}}


def pod_security(fs_group: bool) -> dict:
    """fs_group: volumes (the model cache) are made writable for the pod's group."""
    security = {"runAsNonRoot": True, "runAsUser": USER_ID, "runAsGroup": USER_ID}
    if fs_group:
        security["fsGroup"] = USER_ID
    return {**security, "seccompProfile": {"type": "RuntimeDefault"}}


def placement(spec: OVLLMDeploymentSpec) -> dict:
    """The spec's nodeSelector and tolerations, as pod spec fields (absent when not set). The
    instruction-set affinity is the engine's and the converter's alone (isa.py)."""
    fields: dict = {}
    if spec.node_selector:
        fields["nodeSelector"] = dict(spec.node_selector)
    if spec.tolerations:
        fields["tolerations"] = [dict(item) for item in spec.tolerations]
    return fields
