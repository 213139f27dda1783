"""EndpointSlices to backend URLs: the pure part of `--service` discovery, on slices shaped as the
API server returns them (`kubectl get endpointslices -o json`). The watch itself runs against a real
control plane in the operator's end-to-end tests."""

from __future__ import annotations

from ovllm_router.discovery import apply_event, backends_from_slices, slice_backends


def endpoint(ip: str, ready=True, serving=True, terminating=False, pod: str = "engine-0") -> dict:
    conditions = {"ready": ready, "serving": serving, "terminating": terminating}
    return {"addresses": [ip], "conditions": {k: v for k, v in conditions.items() if v is not None},
            "nodeName": "node-1", "targetRef": {"kind": "Pod", "name": pod, "namespace": "llm"}}


def endpoint_slice(name: str, endpoints: list[dict], ports=None, address_type: str = "IPv4", version: str = "1"):
    return {
        "apiVersion": "discovery.k8s.io/v1",
        "kind": "EndpointSlice",
        "addressType": address_type,
        "metadata": {"name": name, "namespace": "llm", "resourceVersion": version,
                     "labels": {"kubernetes.io/service-name": "qwen", "endpointslice.kubernetes.io/managed-by":
                                "endpointslice-controller.k8s.io"},
                     "ownerReferences": [{"apiVersion": "v1", "kind": "Service", "name": "qwen"}]},
        "endpoints": endpoints,
        "ports": [{"name": "http", "port": 8000, "protocol": "TCP"}] if ports is None else ports,
    }


def test_only_ready_endpoints_that_are_not_terminating():
    slice_ = endpoint_slice("qwen-abc12", [
        endpoint("10.1.0.5"),
        endpoint("10.1.0.6", ready=False),  # starting: readiness probe not yet passed
        endpoint("10.1.0.7", ready=False, serving=True, terminating=True),  # draining after SIGTERM
        endpoint("10.1.0.8", ready=None, serving=None, terminating=None),  # conditions unknown: taken as ready
    ])
    assert slice_backends(slice_) == {"http://10.1.0.5:8000", "http://10.1.0.8:8000"}


def test_the_port_named_http_else_the_first():
    named = [{"name": "metrics", "port": 9090, "protocol": "TCP"}, {"name": "http", "port": 8000, "protocol": "TCP"}]
    assert slice_backends(endpoint_slice("a", [endpoint("10.1.0.5")], ports=named)) == {"http://10.1.0.5:8000"}
    unnamed = [{"port": 8080, "protocol": "TCP"}, {"name": "other", "port": 9000, "protocol": "TCP"}]
    assert slice_backends(endpoint_slice("b", [endpoint("10.1.0.5")], ports=unnamed)) == {"http://10.1.0.5:8080"}
    # a slice without ports (a Service without ports, or a selector matching nothing yet) serves nothing
    assert slice_backends(endpoint_slice("c", [endpoint("10.1.0.5")], ports=[])) == set()
    no_endpoints = endpoint_slice("d", [])
    no_endpoints["endpoints"] = None  # the API omits an empty list
    assert slice_backends(no_endpoints) == set()


def test_ipv6_addresses_in_brackets():
    slice_ = endpoint_slice("v6", [endpoint("fd00::5")], address_type="IPv6")
    assert slice_backends(slice_) == {"http://[fd00::5]:8000"}


def test_several_slices_of_one_service_and_watch_events():
    first = endpoint_slice("qwen-abc12", [endpoint("10.1.0.5", pod="e-0"), endpoint("10.1.0.6", pod="e-1")])
    second = endpoint_slice("qwen-def34", [endpoint("10.1.0.7", pod="e-2"), endpoint("10.1.0.5", pod="e-0")])
    slices = {"qwen-abc12": first}
    slices = apply_event(slices, "ADDED", second)
    assert backends_from_slices(slices) == ["http://10.1.0.5:8000", "http://10.1.0.6:8000", "http://10.1.0.7:8000"]
    # a replica starts terminating
    modified = endpoint_slice("qwen-abc12", [endpoint("10.1.0.5", pod="e-0"),
                                             endpoint("10.1.0.6", ready=False, terminating=True, pod="e-1")],
                              version="2")
    slices = apply_event(slices, "MODIFIED", modified)
    assert backends_from_slices(slices) == ["http://10.1.0.5:8000", "http://10.1.0.7:8000"]
    # a slice deleted: its endpoints go, the other slice's stay
    before = dict(slices)
    slices = apply_event(slices, "DELETED", second)
    assert backends_from_slices(slices) == ["http://10.1.0.5:8000"]
    assert "qwen-def34" in before  # apply_event returns a new dict
    assert apply_event(slices, "DELETED", second) == slices  # deleting twice is harmless
    assert backends_from_slices({}) == []
