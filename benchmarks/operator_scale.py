#!/usr/bin/env python3
"""The operator at fleet scale: its cost to the API server and to itself, and how fast it reacts,
with N OVLLMDeployments on the project's real test control plane (hack/controlplane.py: etcd,
kube-apiserver, controller-manager, scheduler, kwok's fake nodes, which mark pods Running and Ready
and complete Job pods).

Several operator designs are measured side by side in one run, each from its own source tree (a
checkout of this repository), each on a FRESH control plane per size, so one design's leftovers never
disturb another's numbers:

    # from the repository root:
    git worktree add /tmp/ovllm-old 28839b6        # the timer-resync design
    .venv/bin/python benchmarks/operator_scale.py \\
        --operator OLD=/tmp/ovllm-old --operator NEW=. \\
        --operator-args OLD='--resync-seconds 10' \\
        --resources 60,1000 --out benchmarks/results/operator_scale.json
    git worktree remove /tmp/ovllm-old

Each operator runs as `python -m ovllm_cli operator --standalone --liveness-port P --metrics-port M
--log-format json ARGS` with this interpreter, cwd = its tree and PYTHONPATH = the tree's source
roots (cli, edge, engine, operator, router) ahead of everything else (the venv's editable install of
one checkout would otherwise win). The CRDs are installed from the design's own tree.

First, per size, the floor (skip with --no-floor): on its own fresh control plane, N plain
Deployments and Services like the engines' are created by hand, with no operator, and timed until
every Deployment has its pod ready: how fast the control plane alone makes N engines ready, a bound
no operator design can beat (at the controller-manager's default client rate limit, 20 requests a
second, it took 239 s for N=1000 on 2 cores; hack/controlplane.py now raises that limit, and the
JSON records the control plane's client_rate flags).

Then per design and size:

1. baseline: after --settle-seconds, the control plane (with its CRDs, nodes and volumes, no
   operator, no resources) for --idle-seconds: requests per minute, from the sum of kube-apiserver's
   own apiserver_request_total (its /metrics) at the start and end of the window.
2. rollout: the operator starts; N resources (an `imagePath` model, 1 replica) are created at once by
   16 threads (creation time recorded on its own); then the time from the first create until every
   resource reports phase Ready with status.observedGeneration == metadata.generation, polled with one
   LIST a second (a LIST that takes t seconds is followed by at least t of
   sleep, so the benchmark's own polling cannot dominate 2 cores).
3. idle: after --settle-seconds, the same window with the operator: requests per minute, their
   breakdown by verb and resource (and its difference from the baseline), the operator's requests per
   resource per minute ((with - without) / N), its CPU over the window (utime+stime of it and any
   children, from /proc, as % of one core), its RSS at the end and its own counters' increments.
   The baseline has no resources: whatever the controller-manager or kwok do more for N Deployments
   is counted as the operator's (their share shows in the breakdown, e.g. nodes and leases).
4. reactions, the median (and mean) of --trials trials, each on a different resource, each after a
   random pause of up to --trial-jitter seconds (the same pauses for every design; trials run back to
   back would otherwise all hit the same point of a periodic resync), each timed from the action
   until a GET every 0.1 s sees its effect:
   a. deleting an engine Deployment by hand -> a Deployment of that name with a new uid;
   b. spec.replicas 1 -> 2 (a merge patch of the resource) -> status.readyReplicas == 2;
   c. a conversion Job finishing -> the resource's ModelReady condition True: a new resource whose
      `hub` model has a modelCache claim (bound to a PV made for it), so the operator runs a
      conversion Job, whose pod kwok completes; timed from the Job's Complete condition (also
      reported: the resource's create -> Job Complete and create -> Ready).
5. autoscaler (skip with --no-autoscale): spec.autoscaling is turned on for M (--autoscaled, default
   N) of the resources; the kwok pods' addresses answer nothing, so every read of their /metrics
   fails or times out (how one read ends here is recorded as pod_metrics_probe: some sandboxes'
   networks answer every address with an HTTP 404 at once, which is the cheap case). After a
   warm-up, the operator's own autoscaler step counter (ovllm_operator_autoscaler_steps_total, all
   reasons) over --autoscale-window gives the steps per second achieved, against the M / interval
   needed (interval: the design's --autoscale-seconds argument, else --autoscale-interval, the
   operator's default).

The results go to --out as JSON (with the machine's CPU model and core count, and each tree's
commit), and a table of every design side by side, with each design's ratio to the first, is printed
at the end. Everything the run starts (control planes, operators) is stopped, and its scratch
directory removed, before it exits.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import importlib.util
import json
import math
import os
import random
import shlex
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.parse
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import urllib3
import yaml
from prometheus_client.parser import text_string_to_metric_families

ROOT = Path(__file__).resolve().parents[1]
GROUP, VERSION, PLURAL = "ovllm.io", "v1alpha1", "ovllmdeployments"
NAMESPACE = "bench"
SOURCE_ROOTS = ("operator", "cli", "engine", "router", "edge")
CREATE_THREADS = 16
RETRIED = {429, 500, 502, 503, 504}
STEP_COUNTER = "ovllm_operator_autoscaler_steps_total"

# Quick to become Ready on kwok: an image's model (no conversion), one replica.
ENGINE_SPEC = {
    "model": {"imagePath": "/opt/models/qwen"},
    "replicas": 1,
    "engine": {"image": "ovllm/engine:test"},
    "cpu": {"cores": 1, "memory": "8Gi"},
}
# Needs a conversion Job: a hub model with a model cache claim (bound to one of the PVs made here).
CONVERTED_SPEC = {
    "model": {"hub": "Qwen/Qwen2.5-0.5B-Instruct", "weightFormat": "int4"},
    "replicas": 1,
    "engine": {"image": "ovllm/engine:test", "converterImage": "ovllm/converter:test"},
    "cpu": {"cores": 1, "memory": "8Gi"},
    "modelCache": {"storageClassName": "manual", "size": "10Gi"},
}
AUTOSCALING = {"minReplicas": 1, "maxReplicas": 2, "metric": "inFlightRequests", "target": 2}
# Fake nodes big enough for any N (the project's five hold 32 one-core pods each).
BENCH_NODE_CAPACITY = {"cpu": "100000", "memory": "400Ti", "pods": "250"}


def load_controlplane():
    """hack/controlplane.py, by path, as the tests load it."""
    name = "ovllm_controlplane"
    if name not in sys.modules:
        spec = importlib.util.spec_from_file_location(name, ROOT / "hack" / "controlplane.py")
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module
        spec.loader.exec_module(module)
    return sys.modules[name]


_t0 = time.monotonic()


def log(message: str) -> None:
    print(f"[scale {time.monotonic() - _t0:7.1f}s] {message}", file=sys.stderr, flush=True)


# ------------------------------------------------------------------------------------ API client

class Api:
    """A small REST client for the control plane, as its admin (urllib3: raw JSON, shared by threads,
    retrying throttling and server errors)."""

    def __init__(self, plane, token: str):
        self.server = plane.server
        self.http = urllib3.PoolManager(maxsize=CREATE_THREADS + 4, cert_reqs="CERT_REQUIRED",
                                        ca_certs=str(plane.run_dir / "pki" / "ca.crt"))
        self.headers = {"Authorization": f"Bearer {token}", "Accept": "application/json"}

    def raw(self, method: str, path: str, body=None, content_type: str = "application/json",
            timeout: float = 30.0, retry_for: float = 120.0) -> tuple[int, bytes]:
        deadline, attempt = time.monotonic() + retry_for, 0
        headers = dict(self.headers)
        data = None
        if body is not None:
            headers["Content-Type"] = content_type
            data = json.dumps(body).encode()
        while True:
            attempt += 1
            try:
                response = self.http.request(method, self.server + path, body=data, headers=headers,
                                             timeout=urllib3.Timeout(total=timeout), retries=False)
                if response.status not in RETRIED or time.monotonic() > deadline:
                    return response.status, response.data
                delay = float(response.headers.get("Retry-After") or 0) or min(0.2 * attempt, 2.0)
            except urllib3.exceptions.HTTPError:
                if time.monotonic() > deadline:
                    raise
                delay = min(0.2 * attempt, 2.0)
            time.sleep(delay)

    def call(self, method: str, path: str, body=None, ok=(200, 201), **kwargs) -> tuple[int, dict]:
        status, raw = self.raw(method, path, body, **kwargs)
        decoded = json.loads(raw) if raw and raw[:1] in (b"{", b"[") else {"raw": raw[:500].decode(errors="replace")}
        if ok and status not in ok and status != 404:
            raise RuntimeError(f"{method} {path}: HTTP {status}: {json.dumps(decoded)[:500]}")
        return status, decoded

    def get(self, path: str, **kwargs) -> dict | None:
        status, body = self.call("GET", path, **kwargs)
        return body if status == 200 else None

    def merge_patch(self, path: str, body: dict) -> dict:
        return self.call("PATCH", path, body, content_type="application/merge-patch+json")[1]


def cr_path(name: str = "") -> str:
    return f"/apis/{GROUP}/{VERSION}/namespaces/{NAMESPACE}/{PLURAL}" + (f"/{name}" if name else "")


def deployment_path(name: str) -> str:
    return f"/apis/apps/v1/namespaces/{NAMESPACE}/deployments/{name}"


def cr_body(name: str, spec: dict) -> dict:
    return {"apiVersion": f"{GROUP}/{VERSION}", "kind": "OVLLMDeployment",
            "metadata": {"name": name, "namespace": NAMESPACE}, "spec": spec}


def is_ready(obj: dict) -> bool:
    status = obj.get("status") or {}
    return status.get("phase") == "Ready" and status.get("observedGeneration") == obj["metadata"].get("generation")


def condition(obj: dict, type_: str) -> dict:
    for item in (obj.get("status") or {}).get("conditions") or []:
        if item.get("type") == type_:
            return item
    return {}


# ----------------------------------------------------------------------------- metrics, /proc

def request_counts(api: Api) -> tuple[float, dict[str, float]]:
    """kube-apiserver's apiserver_request_total: the sum over every series, and per 'VERB resource'."""
    status, raw = api.raw("GET", "/metrics", timeout=60)
    taken = time.monotonic()
    if status != 200:
        raise RuntimeError(f"GET /metrics: HTTP {status}")
    # Only this family's lines: the whole page is megabytes, and parsing it costs seconds of a core.
    lines = [line for line in raw.decode().splitlines() if line.startswith(("apiserver_request_total",
                                                                             "# TYPE apiserver_request_total"))]
    by_key: dict[str, float] = {}
    for family in text_string_to_metric_families("\n".join(lines) + "\n"):
        for sample in family.samples:
            if sample.name != "apiserver_request_total":
                continue
            labels = sample.labels
            resource = labels.get("resource") or "(non-resource)"
            if labels.get("group"):
                resource = f"{resource}.{labels['group']}"
            if labels.get("subresource"):
                resource += f"/{labels['subresource']}"
            key = f"{labels.get('verb', '?')} {resource}"
            by_key[key] = by_key.get(key, 0.0) + sample.value
    return taken, by_key


def request_window(before: tuple[float, dict], after: tuple[float, dict]) -> dict:
    minutes = (after[0] - before[0]) / 60
    delta = {key: after[1].get(key, 0.0) - before[1].get(key, 0.0) for key in set(before[1]) | set(after[1])}
    per_minute = {key: round(value / minutes, 2) for key, value in sorted(delta.items(), key=lambda kv: -kv[1])
                  if value > 0}
    return {"seconds": round(after[0] - before[0], 1), "requests": sum(delta.values()),
            "requests_per_minute": round(sum(delta.values()) / minutes, 1), "by_verb_resource_per_minute": per_minute}


CLK_TCK = os.sysconf("SC_CLK_TCK")


def _stat_fields(pid: int) -> list[str] | None:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return None


def descendants(pid: int) -> list[int]:
    """Every live process below pid (by parent pid)."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit() and (fields := _stat_fields(int(entry.name))):
            children.setdefault(int(fields[1]), []).append(int(entry.name))
    found, todo = [], [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            found.append(child)
            todo.append(child)
    return found


def cpu_seconds(pid: int) -> float:
    """utime+stime of pid and its live descendants, plus what its reaped children used."""
    total = 0.0
    for index, process in enumerate([pid, *descendants(pid)]):
        fields = _stat_fields(process)
        if fields:  # fields[11..14]: utime stime cutime cstime (stat's fields 14-17)
            total += int(fields[11]) + int(fields[12]) + (int(fields[13]) + int(fields[14]) if index == 0 else 0)
    return total / CLK_TCK


def memory_mib(pid: int) -> dict:
    """VmRSS and VmHWM (peak) of pid, with its descendants' RSS added."""
    out = {"rss_mib": 0.0, "peak_rss_mib": 0.0, "threads": 0}
    for index, process in enumerate([pid, *descendants(pid)]):
        with contextlib.suppress(OSError):
            for line in Path(f"/proc/{process}/status").read_text().splitlines():
                key, _, value = line.partition(":")
                if key == "VmRSS":
                    out["rss_mib"] += int(value.split()[0]) / 1024
                elif key == "VmHWM" and index == 0:
                    out["peak_rss_mib"] += int(value.split()[0]) / 1024
                elif key == "Threads" and index == 0:
                    out["threads"] = int(value)
    return {key: round(value, 1) for key, value in out.items()}


# ------------------------------------------------------------------------------------- operator

class Operator:
    """`ovllm operator` from one source tree, with this interpreter."""

    def __init__(self, name: str, tree: Path, args: list[str], kubeconfig: Path, log_path: Path, free_port):
        self.name, self.tree = name, tree
        self.liveness_port, self.metrics_port = free_port(), free_port()
        self.log_path = log_path
        roots = [str(tree / root) for root in SOURCE_ROOTS if (tree / root).is_dir()]
        env = {**os.environ, "KUBECONFIG": str(kubeconfig),
               "PYTHONPATH": os.pathsep.join([*roots, *filter(None, [os.environ.get("PYTHONPATH")])])}
        self.command = [sys.executable, "-m", "ovllm_cli", "operator", "--standalone",
                        "--liveness-port", str(self.liveness_port), "--metrics-port", str(self.metrics_port),
                        "--log-format", "json", *args]
        with open(log_path, "ab") as log_file:
            self.process = subprocess.Popen(self.command, cwd=tree, env=env, stdout=log_file,
                                            stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                            start_new_session=True)
        self.pid = self.process.pid
        self.http = urllib3.PoolManager()

    def wait_live(self, timeout: float = 90.0) -> float:
        """Until its liveness endpoint answers (kopf has started); returns the seconds it took."""
        started = time.monotonic()
        while time.monotonic() - started < timeout:
            if self.process.poll() is not None:
                raise RuntimeError(f"operator {self.name} exited with {self.process.returncode}:\n{self.log_tail()}")
            with contextlib.suppress(urllib3.exceptions.HTTPError):
                if self.http.request("GET", f"http://127.0.0.1:{self.liveness_port}/healthz", timeout=2,
                                     retries=False).status == 200:
                    return time.monotonic() - started
            time.sleep(0.3)
        raise RuntimeError(f"operator {self.name}: no /healthz within {timeout:g}s:\n{self.log_tail()}")

    def counters(self) -> dict[str, float]:
        """Its own counters (ovllm_operator_*_total), one entry per label set."""
        response = self.http.request("GET", f"http://127.0.0.1:{self.metrics_port}/metrics", timeout=10, retries=2)
        out = {}
        for family in text_string_to_metric_families(response.data.decode()):
            for sample in family.samples:
                if sample.name.startswith("ovllm_operator_") and sample.name.endswith("_total"):
                    labels = ",".join(f"{k}={v}" for k, v in sorted(sample.labels.items()))
                    out[f"{sample.name}{{{labels}}}"] = sample.value
        return out

    def alive(self) -> bool:
        return self.process.poll() is None

    def log_tail(self, lines: int = 40) -> str:
        with contextlib.suppress(OSError):
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        return ""

    def stop(self, timeout: float = 30.0) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        # Anything it started is in its session (start_new_session): none should be left.
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.pid, signal.SIGKILL)


def counter_delta(before: dict, after: dict) -> dict:
    return {key: after[key] - before.get(key, 0.0) for key in sorted(after) if after[key] - before.get(key, 0.0)}


# ---------------------------------------------------------------------------------- the phases

def setup_cluster(api: Api, controlplane, tree: Path, pods_needed: int, volumes: int) -> dict:
    """The design's CRDs, nodes for every pod, a default StorageClass and a PV per conversion trial."""
    names = []
    for path in sorted((tree / "crds").glob("*.yaml")):
        for crd in yaml.safe_load_all(path.read_text()):
            if crd:
                api.call("POST", "/apis/apiextensions.k8s.io/v1/customresourcedefinitions", crd, ok=(201, 409))
                names.append(crd["metadata"]["name"])
    for name in names:
        deadline = time.monotonic() + 60
        while not any(c["type"] == "Established" and c["status"] == "True" for c in (
                (api.get(f"/apis/apiextensions.k8s.io/v1/customresourcedefinitions/{name}") or {})
                .get("status", {}).get("conditions") or [])):
            if time.monotonic() > deadline:
                raise RuntimeError(f"CRD {name} not established")
            time.sleep(0.2)
    # The resource's own path answers only once discovery has it.
    deadline = time.monotonic() + 60
    while api.raw("GET", cr_path() + "?limit=1")[0] == 404 and time.monotonic() < deadline:
        time.sleep(0.2)
    nodes = max(1, math.ceil(pods_needed / (int(BENCH_NODE_CAPACITY["pods"]) * 0.8)))
    for index in range(nodes):
        node = controlplane.node_manifest("amx-a")  # every ISA label: any spec.cpu.minISA fits
        name = f"bench-{index}"
        node["metadata"]["name"] = name
        node["metadata"]["labels"]["kubernetes.io/hostname"] = name
        node["status"] = {"capacity": BENCH_NODE_CAPACITY, "allocatable": BENCH_NODE_CAPACITY}
        api.call("POST", "/api/v1/nodes", node, ok=(201, 409))
    api.call("POST", "/api/v1/namespaces", {"metadata": {"name": NAMESPACE}}, ok=(201, 409))
    api.call("POST", "/apis/storage.k8s.io/v1/storageclasses", {
        "metadata": {"name": "manual", "annotations": {"storageclass.kubernetes.io/is-default-class": "true"}},
        "provisioner": "kubernetes.io/no-provisioner", "volumeBindingMode": "Immediate"}, ok=(201, 409))
    for index in range(volumes):
        api.call("POST", "/api/v1/persistentvolumes", {
            "metadata": {"name": f"bench-cache-{index}"},
            "spec": {"capacity": {"storage": "100Gi"}, "accessModes": ["ReadWriteMany"],
                     "storageClassName": "manual", "hostPath": {"path": f"/tmp/ovllm-bench-cache-{index}"}}},
            ok=(201, 409))
    deadline = time.monotonic() + 60  # the namespace's default ServiceAccount: pods wait for it
    while api.get(f"/api/v1/namespaces/{NAMESPACE}/serviceaccounts/default") is None:
        if time.monotonic() > deadline:
            raise RuntimeError("no default ServiceAccount in the benchmark's namespace")
        time.sleep(0.2)
    deadline = time.monotonic() + 60
    wanted = {f"bench-{i}" for i in range(nodes)}
    while True:
        listed = api.get("/api/v1/nodes?labelSelector=type%3Dkwok") or {}
        ready = {n["metadata"]["name"] for n in listed.get("items", []) if any(
            c["type"] == "Ready" and c["status"] == "True" for c in n.get("status", {}).get("conditions", []))}
        if wanted <= ready:
            break
        if time.monotonic() > deadline:
            raise RuntimeError(f"bench nodes not Ready: {sorted(wanted - ready)}")
        time.sleep(0.5)
    return {"crds": names, "bench_nodes": nodes, "volumes": volumes}


def idle_window(api: Api, seconds: float, operator: Operator | None = None) -> dict:
    if operator:
        counters_before, cpu_before = operator.counters(), cpu_seconds(operator.pid)
    before = request_counts(api)
    time.sleep(seconds)
    after = request_counts(api)
    result = request_window(before, after)
    if operator:
        cpu = cpu_seconds(operator.pid) - cpu_before
        result["operator"] = {"cpu_seconds": round(cpu, 2),
                              "cpu_percent_of_one_core": round(100 * cpu / (after[0] - before[0]), 2),
                              **memory_mib(operator.pid),
                              "counters": counter_delta(counters_before, operator.counters())}
    return result


def create_all(api: Api, names: list[str], spec: dict) -> dict:
    failures: list[str] = []

    def one(name: str) -> None:
        status, body = api.call("POST", cr_path(), cr_body(name, spec), ok=None)
        if status not in (201, 409):  # 409: a create retried after a timeout had worked
            failures.append(f"{name}: HTTP {status}: {json.dumps(body)[:200]}")

    started = time.monotonic()
    with ThreadPoolExecutor(CREATE_THREADS) as pool:
        list(pool.map(one, names))
    if failures:
        raise RuntimeError(f"{len(failures)} creates failed, e.g. {failures[:3]}")
    return {"seconds": round(time.monotonic() - started, 2)}


def wait_all_ready(api: Api, names: list[str], started: float, timeout: float, alive=lambda: True,
                   path: str | None = None, ready=is_ready, phase_of=None) -> tuple[dict, list[str]]:
    """One LIST a second (at most half the time spent listing) until every resource is Ready for its
    generation; each resource's first Ready time is kept for percentiles. Returns the summary and
    the names that became Ready."""
    path = path or cr_path()
    phase_of = phase_of or (lambda item: (item.get("status") or {}).get("phase") or "(none)")
    wanted, first_ready = set(names), {}
    timeline, phases, list_seconds, lists = [], {}, 0.0, 0
    last_mark = -10.0
    while True:
        began = time.monotonic()
        status, raw = api.raw("GET", path, timeout=60)
        took = time.monotonic() - began
        list_seconds, lists = list_seconds + took, lists + 1
        seen = time.monotonic() - started
        if status == 200:
            phases = {}
            for item in json.loads(raw).get("items", []):
                name = item["metadata"]["name"]
                if name not in wanted:
                    continue
                phase = phase_of(item)
                phases[phase] = phases.get(phase, 0) + 1
                if name not in first_ready and ready(item):
                    first_ready[name] = seen
            if seen - last_mark >= 5:
                timeline.append([round(seen, 1), len(first_ready)])
                last_mark = seen
        if len(first_ready) == len(wanted) or seen > timeout or not alive():
            break
        time.sleep(max(1.0 - took, took))
    times = sorted(first_ready.values())
    done = len(first_ready) == len(wanted)
    timeline.append([round(time.monotonic() - started, 1), len(first_ready)])
    return {
        "all_ready": done,
        "ready": len(first_ready), "of": len(wanted),
        "seconds_to_all_ready": round(times[-1], 2) if done else None,
        "seconds_per_resource": round(times[-1] / len(wanted), 4) if done else None,
        "ready_p50_seconds": round(statistics.median(times), 2) if times else None,
        "ready_p90_seconds": round(times[int(0.9 * (len(times) - 1))], 2) if times else None,
        "phases_at_end": phases,
        "timeline": timeline,
        "lists": lists, "mean_list_seconds": round(list_seconds / max(lists, 1), 3),
        **({} if done else {"timed_out_after": timeout}),
    }, [name for name in names if name in first_ready]


def poll_until(check, timeout: float, interval: float = 0.1):
    """check() every interval until it returns something truthy; (seconds, value) or (None, None)."""
    started = time.monotonic()
    while time.monotonic() - started < timeout:
        if value := check():
            return time.monotonic() - started, value
        time.sleep(interval)
    return None, None


def summary(trials: list[dict]) -> dict:
    seconds = [t["seconds"] for t in trials if t.get("seconds") is not None]
    return {"median_seconds": round(statistics.median(seconds), 2) if seconds else None,
            "mean_seconds": round(statistics.mean(seconds), 2) if seconds else None,
            "max_seconds": round(max(seconds), 2) if seconds else None,
            "timeouts": sum(1 for t in trials if t.get("seconds") is None), "trials": trials}


def react_delete(api: Api, name: str, timeout: float) -> dict:
    old = api.get(deployment_path(name))
    if old is None:
        return {"resource": name, "seconds": None, "error": "no Deployment"}
    uid = old["metadata"]["uid"]
    started = time.monotonic()
    api.call("DELETE", deployment_path(name), {"propagationPolicy": "Background"})
    seconds, _ = poll_until(lambda: (d := api.get(deployment_path(name))) and d["metadata"]["uid"] != uid, timeout)
    return {"resource": name, "seconds": None if seconds is None else round(time.monotonic() - started, 2)}


def react_scale(api: Api, name: str, timeout: float) -> dict:
    started = time.monotonic()
    api.merge_patch(cr_path(name), {"spec": {"replicas": 2}})
    seconds, _ = poll_until(lambda: ((api.get(cr_path(name)) or {}).get("status") or {}).get("readyReplicas") == 2,
                            timeout)
    return {"resource": name, "seconds": None if seconds is None else round(time.monotonic() - started, 2)}


def react_conversion(api: Api, name: str, timeout: float) -> dict:
    """Create a resource that needs a conversion Job; time the Job's Complete condition to the
    resource's ModelReady=True (and the resource to Ready)."""
    selector = urllib.parse.quote(f"app.kubernetes.io/instance={name},app.kubernetes.io/component=converter")
    jobs_path = f"/apis/batch/v1/namespaces/{NAMESPACE}/jobs"
    started = time.monotonic()
    api.call("POST", cr_path(), cr_body(name, CONVERTED_SPEC))
    marks: dict[str, float] = {}
    job_name = None
    while time.monotonic() - started < timeout and "ready" not in marks:
        now = time.monotonic() - started
        if "job_complete" not in marks:
            if job_name is None:
                jobs = (api.get(f"{jobs_path}?labelSelector={selector}") or {}).get("items") or []
                job = jobs[0] if jobs else None
                if job:
                    job_name = job["metadata"]["name"]
                    marks["job_created"] = now
            else:
                job = api.get(f"{jobs_path}/{job_name}")
            if job and any(c.get("type") == "Complete" and c.get("status") == "True"
                           for c in (job.get("status") or {}).get("conditions") or []):
                marks["job_complete"] = now
        obj = api.get(cr_path(name)) or {}
        model = condition(obj, "ModelReady")
        if "converted" not in marks and model.get("status") == "True":
            marks["converted"] = now
        if "converted" in marks and is_ready(obj):
            marks["ready"] = now
        time.sleep(0.1)
    result = {"resource": name, "job": job_name, **{f"{k}_after_create": round(v, 2) for k, v in marks.items()}}
    if "job_complete" in marks and "converted" in marks:
        result["seconds"] = round(max(0.0, marks["converted"] - marks["job_complete"]), 2)
    else:
        result["seconds"] = None
        result["error"] = f"timed out after {timeout:g}s with {sorted(marks)}"
    return result


def spread(names: list[str], count: int, offset: int) -> list[str]:
    """count names spread over the list, shifted by offset so that each reaction gets its own."""
    if not names:
        return []
    step = max(1, len(names) // max(count, 1))
    return [names[(offset + i * step) % len(names)] for i in range(count)]


def probe_pod_metrics(api: Api, name: str) -> dict:
    """How a read of one engine pod's /metrics ends from this machine (the operator's reads end the
    same way): kwok's pod addresses have nothing behind them, so it is refused, unreachable, times
    out, or (behind some sandboxes' network) answered by something else."""
    selector = urllib.parse.quote(f"app.kubernetes.io/instance={name},app.kubernetes.io/name=ovllm-engine")
    pods = (api.get(f"/api/v1/namespaces/{NAMESPACE}/pods?labelSelector={selector}") or {}).get("items") or []
    address = next((p["status"]["podIP"] for p in pods if (p.get("status") or {}).get("podIP")), None)
    if address is None:
        return {"outcome": "no pod address"}
    url = f"http://{address}:8000/metrics"
    started = time.monotonic()
    try:
        response = urllib3.PoolManager().request("GET", url, timeout=urllib3.Timeout(total=2.0), retries=False)
        outcome = f"HTTP {response.status}"
    except urllib3.exceptions.HTTPError as exc:
        outcome = f"{type(exc).__name__}: {exc}"[:200]
    return {"url": url, "outcome": outcome, "seconds": round(time.monotonic() - started, 3)}


def autoscale_phase(api: Api, operator: Operator, names: list[str], interval: float, warmup: float,
                    window: float) -> dict:
    probe = probe_pod_metrics(api, names[0])
    started = time.monotonic()
    with ThreadPoolExecutor(CREATE_THREADS) as pool:
        list(pool.map(lambda n: api.merge_patch(cr_path(n), {"spec": {"autoscaling": AUTOSCALING}}), names))
    enabled_seconds = time.monotonic() - started
    time.sleep(warmup)
    before_counters, cpu_before = operator.counters(), cpu_seconds(operator.pid)
    before = request_counts(api)
    time.sleep(window)
    after = request_counts(api)
    after_counters = operator.counters()
    cpu = cpu_seconds(operator.pid) - cpu_before
    elapsed = after[0] - before[0]
    deltas = counter_delta(before_counters, after_counters)
    steps = sum(v for k, v in deltas.items() if k.startswith(STEP_COUNTER))
    listed = json.loads(api.raw("GET", cr_path(), timeout=60)[1]).get("items", [])
    reasons: dict[str, int] = {}
    wanted = set(names)
    for item in listed:
        if item["metadata"]["name"] in wanted:
            reason = ((item.get("status") or {}).get("autoscaling") or {}).get("lastDecisionReason") or "(none)"
            reasons[reason] = reasons.get(reason, 0) + 1
    needed = len(names) / interval
    return {
        "autoscaled": len(names), "interval_seconds": interval, "enable_seconds": round(enabled_seconds, 2),
        "warmup_seconds": warmup, "window_seconds": round(elapsed, 1),
        "steps": steps, "steps_per_second": round(steps / elapsed, 2), "steps_needed_per_second": round(needed, 2),
        "achieved_fraction": round(steps / elapsed / needed, 3) if needed else None,
        "steps_by_counter": {k: v for k, v in deltas.items() if k.startswith(STEP_COUNTER)},
        "last_decision_reasons": reasons,
        "operator_cpu_percent_of_one_core": round(100 * cpu / elapsed, 2), **memory_mib(operator.pid),
        "api_requests_per_minute": request_window(before, after)["requests_per_minute"],
        "pod_metrics_probe": probe,
    }


def autoscale_interval(args: list[str], default: float) -> float:
    for index, arg in enumerate(args):
        if arg == "--autoscale-seconds" and index + 1 < len(args):
            return float(args[index + 1])
        if arg.startswith("--autoscale-seconds="):
            return float(arg.split("=", 1)[1])
    return default


def run_one(design: str, tree: Path, operator_args: list[str], n: int, opts, work: Path, runs: list) -> None:
    """Every phase for one design at one size, on its own control plane; its result goes into runs at
    once and fills as it goes, so an interrupted run keeps what it measured."""
    controlplane = load_controlplane()
    run_dir = work / f"{design}-{n}"
    run_dir.mkdir(parents=True)
    result: dict = {"design": design, "resources": n, "phases": {}}
    runs.append(result)
    phases = result["phases"]
    wall = time.monotonic()
    plane = operator = None
    try:
        log(f"{design} N={n}: starting a control plane in {run_dir}")
        began = time.monotonic()
        plane = controlplane.start(run_dir)
        result["control_plane_start_seconds"] = round(time.monotonic() - began, 1)
        api = Api(plane, controlplane.TOKEN)
        autoscaled = min(n, opts.autoscaled if opts.autoscaled is not None else n)
        pods = n + opts.trials * 2 + (autoscaled * 2 if opts.autoscale else 0) + 10
        result["setup"] = setup_cluster(api, controlplane, tree, pods, opts.trials)

        log(f"{design} N={n}: 1. settling {opts.settle_seconds:g}s, then a {opts.idle_seconds:g}s baseline "
            "without the operator")
        time.sleep(opts.settle_seconds)  # the new nodes' first heartbeats and registration events
        phases["baseline"] = idle_window(api, opts.idle_seconds)
        log(f"{design} N={n}:    {phases['baseline']['requests_per_minute']} requests/min")

        operator = Operator(design, tree, operator_args, plane.kubeconfig, run_dir / "operator.log",
                            controlplane.free_port)
        result["operator_command"] = operator.command
        result["operator_start_seconds"] = round(operator.wait_live(), 2)

        log(f"{design} N={n}: 2. creating {n} resources")
        names = [f"r-{i:05d}" for i in range(n)]
        before = request_counts(api)
        cpu_before = cpu_seconds(operator.pid)
        started = time.monotonic()
        creation = create_all(api, names, ENGINE_SPEC)
        rollout, ready_names = wait_all_ready(api, names, started, opts.ready_timeout, operator.alive)
        after = request_counts(api)
        rollout["create"] = creation
        rollout["operator_cpu_seconds"] = round(cpu_seconds(operator.pid) - cpu_before, 1)
        rollout["api_requests"] = request_window(before, after)["requests"]
        phases["rollout"] = rollout
        log(f"{design} N={n}:    created in {creation['seconds']}s; {rollout['ready']}/{n} Ready"
            + (f" after {rollout['seconds_to_all_ready']}s" if rollout["all_ready"] else
               f" at the {opts.ready_timeout:g}s timeout ({rollout['phases_at_end']})"))
        if not operator.alive():
            raise RuntimeError(f"the operator exited with {operator.process.returncode}:\n{operator.log_tail()}")

        log(f"{design} N={n}: 3. settling {opts.settle_seconds:g}s, then {opts.idle_seconds:g}s idle with it")
        time.sleep(opts.settle_seconds)
        idle = idle_window(api, opts.idle_seconds, operator)
        base = phases["baseline"]
        extra = idle["requests_per_minute"] - base["requests_per_minute"]
        idle["operator_requests_per_minute"] = round(extra, 1)
        idle["requests_per_resource_per_minute"] = round(extra / n, 4)
        keys = set(idle["by_verb_resource_per_minute"]) | set(base["by_verb_resource_per_minute"])
        diff = {k: round(idle["by_verb_resource_per_minute"].get(k, 0) - base["by_verb_resource_per_minute"].get(k, 0),
                         2) for k in keys}
        idle["difference_from_baseline_per_minute"] = dict(sorted(
            ((k, v) for k, v in diff.items() if abs(v) >= 0.05), key=lambda kv: -abs(kv[1])))
        phases["idle"] = idle
        log(f"{design} N={n}:    {idle['requests_per_minute']} requests/min, "
            f"{idle['requests_per_resource_per_minute']} per resource per minute; operator CPU "
            f"{idle['operator']['cpu_percent_of_one_core']}%, RSS {idle['operator']['rss_mib']} MiB")

        log(f"{design} N={n}: 4. reactions, {opts.trials} trials each")
        # A random pause before each trial (the same sequence for every design): trials run back to
        # back would otherwise land at the same point of a periodic resync, all early or all late.
        jitter = random.Random(opts.seed)

        def trial(react, name):
            time.sleep(jitter.uniform(0, opts.trial_jitter))
            return react(api, name, opts.reaction_timeout)

        reactions = {
            "delete_deployment": summary([trial(react_delete, name) for name in spread(ready_names, opts.trials, 0)]),
            "scale_1_to_2": summary([trial(react_scale, name) for name in spread(ready_names, opts.trials, 1)]),
            "conversion_done": summary([trial(react_conversion, f"conv-{i}") for i in range(opts.trials)]),
        }
        phases["reactions"] = reactions
        medians = {kind: reaction["median_seconds"] for kind, reaction in reactions.items()}
        log(f"{design} N={n}:    medians (s): {medians}")

        if opts.autoscale:
            interval = autoscale_interval(operator_args, opts.autoscale_interval)
            warmup = opts.autoscale_warmup if opts.autoscale_warmup is not None else max(2 * interval, 20.0)
            log(f"{design} N={n}: 5. autoscaling on {autoscaled} resources; {warmup:g}s warm-up, "
                f"{opts.autoscale_window:g}s window")
            phases["autoscale"] = autoscale_phase(api, operator, spread(names, autoscaled, 0)
                                                  if autoscaled < n else names, interval, warmup, opts.autoscale_window)
            a = phases["autoscale"]
            log(f"{design} N={n}:    {a['steps_per_second']} steps/s of {a['steps_needed_per_second']} needed")
        if not operator.alive():
            raise RuntimeError(f"the operator exited with {operator.process.returncode}:\n{operator.log_tail()}")
    except Exception as exc:  # recorded; the next size or design goes on
        result["error"] = f"{type(exc).__name__}: {exc}"
        if operator:
            result["operator_log_tail"] = operator.log_tail()
        log(f"{design} N={n}: FAILED: {result['error'][:2000]}")
    except KeyboardInterrupt:
        result["error"] = "interrupted"
        raise
    finally:
        if operator:
            operator.stop()
        if plane and (left := plane.stop()):
            result["left_on_host"] = left
        if not opts.keep:
            shutil.rmtree(run_dir, ignore_errors=True)
        result["wall_seconds"] = round(time.monotonic() - wall, 1)


# ---------------------------------------------------------------------------- the control plane's floor

def deployment_ready(item: dict) -> bool:
    status = item.get("status") or {}
    return (status.get("readyReplicas") or 0) >= item["spec"].get("replicas", 1) and status.get(
        "observedGeneration", 0) >= item["metadata"].get("generation", 0)


def plain_children(name: str) -> tuple[dict, dict]:
    """A Deployment and a Service like an engine's (same pod size, ISA affinity, labels), made by hand."""
    labels = {"app.kubernetes.io/name": "ovllm-engine", "app.kubernetes.io/instance": name}
    size = {"cpu": str(ENGINE_SPEC["cpu"]["cores"]), "memory": ENGINE_SPEC["cpu"]["memory"]}
    affinity = {"nodeAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": {"nodeSelectorTerms": [
        {"matchExpressions": [{"key": "feature.node.kubernetes.io/cpu-cpuid.AVX2", "operator": "In",
                               "values": ["true"]}]}]}}}
    deployment = {
        "apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": name, "labels": labels},
        "spec": {"replicas": 1, "selector": {"matchLabels": labels}, "template": {
            "metadata": {"labels": labels},
            "spec": {"affinity": affinity, "automountServiceAccountToken": False, "enableServiceLinks": False,
                     "containers": [{"name": "engine", "image": ENGINE_SPEC["engine"]["image"],
                                     "args": ["serve", ENGINE_SPEC["model"]["imagePath"]],
                                     "ports": [{"name": "http", "containerPort": 8000}],
                                     "resources": {"requests": size, "limits": size}}]}}},
    }
    service = {"apiVersion": "v1", "kind": "Service", "metadata": {"name": name, "labels": labels},
               "spec": {"selector": labels, "ports": [{"name": "http", "port": 8000, "targetPort": "http"}]}}
    return deployment, service


def run_floor(tree: Path, n: int, opts, work: Path, floors: list) -> None:
    """What the control plane alone needs for N engines: N Deployments and Services created at once
    by hand (no operator) until every Deployment has its pod ready. No operator design can be faster."""
    controlplane = load_controlplane()
    run_dir = work / f"floor-{n}"
    run_dir.mkdir(parents=True)
    result: dict = {"resources": n}
    floors.append(result)
    wall = time.monotonic()
    plane = None
    try:
        log(f"floor N={n}: {n} Deployments and Services by hand on a fresh control plane")
        plane = controlplane.start(run_dir)
        api = Api(plane, controlplane.TOKEN)
        setup_cluster(api, controlplane, tree, n + 10, 0)
        names = [f"r-{i:05d}" for i in range(n)]
        failures: list[str] = []

        def one(name: str) -> None:
            for kind, body in zip(("apps/v1 deployments", "v1 services"), plain_children(name), strict=True):
                prefix = "/apis/apps/v1" if kind.startswith("apps") else "/api/v1"
                status, answer = api.call("POST", f"{prefix}/namespaces/{NAMESPACE}/{kind.split()[1]}", body,
                                          ok=None)
                if status not in (201, 409):
                    failures.append(f"{kind} {name}: HTTP {status}: {json.dumps(answer)[:200]}")

        before = request_counts(api)
        started = time.monotonic()
        with ThreadPoolExecutor(CREATE_THREADS) as pool:
            list(pool.map(one, names))
        created = time.monotonic() - started
        if failures:
            raise RuntimeError(f"{len(failures)} creates failed, e.g. {failures[:3]}")
        rollout, _ = wait_all_ready(
            api, names, started, opts.ready_timeout, path=f"/apis/apps/v1/namespaces/{NAMESPACE}/deployments",
            ready=deployment_ready, phase_of=lambda item: "Ready" if deployment_ready(item) else "NotReady")
        rollout["create"] = {"seconds": round(created, 2)}
        rollout["api_requests"] = request_window(before, request_counts(api))["requests"]
        result["rollout"] = rollout
        log(f"floor N={n}:    {rollout['ready']}/{n} Deployments ready"
            + (f" after {rollout['seconds_to_all_ready']}s" if rollout["all_ready"] else " at the timeout"))
    except Exception as exc:  # recorded; the designs' runs go on
        result["error"] = f"{type(exc).__name__}: {exc}"
        log(f"floor N={n}: FAILED: {result['error'][:2000]}")
    except KeyboardInterrupt:
        result["error"] = "interrupted"
        raise
    finally:
        if plane and (left := plane.stop()):
            result["left_on_host"] = left
        if not opts.keep:
            shutil.rmtree(run_dir, ignore_errors=True)
        result["wall_seconds"] = round(time.monotonic() - wall, 1)


# ------------------------------------------------------------------------------------- reporting

def machine() -> dict:
    info = {"cpus": os.cpu_count()}
    with contextlib.suppress(OSError, subprocess.SubprocessError):
        for line in subprocess.run(["lscpu"], capture_output=True, text=True, timeout=10).stdout.splitlines():
            key, _, value = line.partition(":")
            if key.strip() in ("Model name", "CPU(s)", "Core(s) per socket", "Socket(s)", "Thread(s) per core"):
                info[key.strip()] = value.strip()
    with contextlib.suppress(OSError):
        info["memory_gib"] = round(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30, 1)
    return info


def tree_version(tree: Path) -> dict:
    out = {"tree": str(tree)}
    with contextlib.suppress(OSError, subprocess.SubprocessError):
        out["commit"] = subprocess.run(["git", "-C", str(tree), "rev-parse", "HEAD"], capture_output=True,
                                       text=True, timeout=10).stdout.strip()
        changed = subprocess.run(["git", "-C", str(tree), "status", "--porcelain", "--untracked-files=no"],
                                 capture_output=True, text=True, timeout=30).stdout.splitlines()
        out["uncommitted_files"] = len(changed)
    return out


ROWS = (  # label, target, path into a run's result
    ("baseline requests/min (no operator)", "", ("phases", "baseline", "requests_per_minute")),
    ("create N resources, s", "", ("phases", "rollout", "create", "seconds")),
    ("first create -> all Ready, s", "<=120 @1000", ("phases", "rollout", "seconds_to_all_ready")),
    ("  Ready resources at the end", "", ("phases", "rollout", "ready")),
    ("  p50 Ready, s", "", ("phases", "rollout", "ready_p50_seconds")),
    ("  operator CPU s during rollout", "", ("phases", "rollout", "operator_cpu_seconds")),
    ("idle requests/min (with operator)", "", ("phases", "idle", "requests_per_minute")),
    ("operator requests/resource/min", "<=0.5", ("phases", "idle", "requests_per_resource_per_minute")),
    ("operator CPU idle, % of a core", "<=5", ("phases", "idle", "operator", "cpu_percent_of_one_core")),
    ("operator RSS, MiB", "<=300", ("phases", "idle", "operator", "rss_mib")),
    ("deleted Deployment back, s (median)", "", ("phases", "reactions", "delete_deployment", "median_seconds")),
    ("scale 1->2 readyReplicas, s (median)", "", ("phases", "reactions", "scale_1_to_2", "median_seconds")),
    ("Job Complete -> ModelReady, s (median)", "", ("phases", "reactions", "conversion_done", "median_seconds")),
    ("autoscaler steps/s", "", ("phases", "autoscale", "steps_per_second")),
    ("autoscaler steps/s needed", "", ("phases", "autoscale", "steps_needed_per_second")),
    ("autoscaler CPU, % of a core", "", ("phases", "autoscale", "operator_cpu_percent_of_one_core")),
    ("wall time of the run, s", "", ("wall_seconds",)),
)


def dig(obj, path):
    for key in path:
        if not isinstance(obj, dict) or key not in obj:
            return None
        obj = obj[key]
    return obj


def fmt(value) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.3g}" if abs(value) < 10 else f"{value:.1f}"
    return str(value)


def table(results: dict, designs: list[str]) -> str:
    lines = [f"CPU: {results['machine'].get('Model name', '?')}, {results['machine'].get('cpus')} cores"]
    first = designs[0]
    ratios = [f"{d}/{first}" for d in designs[1:]]
    for n in results["sizes"]:
        runs = {r["design"]: r for r in results["runs"] if r["resources"] == n}
        header = [f"N={n}", "target", *designs, *ratios]
        rows = [header]
        for label, target, path in ROWS:
            values = [dig(runs.get(d), path) for d in designs]
            ratio_cells = []
            for value in values[1:]:
                base = values[0]
                ok = isinstance(value, int | float) and isinstance(base, int | float) and base
                ratio_cells.append(f"{value / base:.2f}" if ok else "-")
            rows.append([label, target, *map(fmt, values), *ratio_cells])
        for floor in (f for f in results.get("floor", []) if f["resources"] == n):
            rows.append(["floor: N Deployments by hand, s", "", fmt(dig(floor, ("rollout", "seconds_to_all_ready")))
                         if "error" not in floor else "FAILED"])
        for design in designs:
            if error := dig(runs.get(design), ("error",)):
                rows.append([f"{design} FAILED", "", error.splitlines()[0][:80]])
        widths = [max(len(row[i]) for row in rows if i < len(row)) for i in range(len(header))]
        lines.append("")
        for index, row in enumerate(rows):
            lines.append("  ".join(cell.ljust(widths[i]) if i == 0 else cell.rjust(widths[i])
                                   for i, cell in enumerate(row)).rstrip())
            if index == 0:
                lines.append("  ".join("-" * w for w in widths))
    return "\n".join(lines)


# ------------------------------------------------------------------------------------------ main

def _interrupt(signum, frame):
    raise KeyboardInterrupt


def parse_pairs(values: list[str], what: str) -> dict[str, str]:
    pairs = {}
    for value in values:
        name, sep, rest = value.partition("=")
        if not sep or not name:
            raise SystemExit(f"{what} takes NAME=VALUE, not {value!r}")
        pairs[name] = rest
    return pairs


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--operator", action="append", default=[], metavar="NAME=TREE",
                        help="a design to measure: NAME and the checkout to run it from (repeat; the first is "
                             "the baseline of the ratios; default: CURRENT=this checkout)")
    parser.add_argument("--operator-args", action="append", default=[], metavar="NAME='ARGS'",
                        help="extra `ovllm operator` arguments for one design, shell-quoted")
    parser.add_argument("--resources", default="1000", help="N, or sizes separated by commas (default 1000)")
    parser.add_argument("--idle-seconds", type=float, default=60.0, help="each idle window (default 60)")
    parser.add_argument("--settle-seconds", type=float, default=20.0,
                        help="wait before each idle window: after the cluster's setup, and after all are Ready "
                             "(default 20)")
    parser.add_argument("--ready-timeout", type=float, default=900.0,
                        help="give up waiting for all Ready after this long (default 900 s)")
    parser.add_argument("--trials", type=int, default=3, help="trials per reaction (default 3)")
    parser.add_argument("--trial-jitter", type=float, default=10.0,
                        help="a random pause of 0 to this many seconds before each reaction trial, so that "
                             "trials sample every point of a periodic resync (default 10)")
    parser.add_argument("--seed", type=int, default=0, help="of the trials' pauses (default 0)")
    parser.add_argument("--reaction-timeout", type=float, default=180.0, help="per trial (default 180 s)")
    parser.add_argument("--no-floor", dest="floor", action="store_false",
                        help="skip the floor: N Deployments and Services made by hand, without an operator, on "
                             "their own control plane (how fast the control plane alone makes N engines ready)")
    parser.add_argument("--no-autoscale", dest="autoscale", action="store_false", help="skip phase 5")
    parser.add_argument("--autoscaled", type=int, default=None, help="M resources autoscaled (default N)")
    parser.add_argument("--autoscale-interval", type=float, default=15.0,
                        help="the operator's autoscale interval when its args set no --autoscale-seconds "
                             "(default 15, the operator's default)")
    parser.add_argument("--autoscale-warmup", type=float, default=None,
                        help="after enabling autoscaling, before the window (default 2 intervals, at least 20 s)")
    parser.add_argument("--autoscale-window", type=float, default=60.0, help="default 60 s")
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "operator_scale.json")
    parser.add_argument("--work-dir", type=Path, default=None, help="scratch (default a new dir in /tmp)")
    parser.add_argument("--keep", action="store_true", help="keep each run's directory (logs, etcd)")
    opts = parser.parse_args(argv)

    designs = parse_pairs(opts.operator, "--operator") or {"CURRENT": str(ROOT)}
    extra = {name: shlex.split(value) for name, value in parse_pairs(opts.operator_args, "--operator-args").items()}
    if unknown := set(extra) - set(designs):
        raise SystemExit(f"--operator-args for unknown designs: {', '.join(sorted(unknown))}")
    trees = {name: Path(path).resolve() for name, path in designs.items()}
    for name, tree in trees.items():
        if not (tree / "operator" / "ovllm_operator").is_dir() or not (tree / "crds").is_dir():
            raise SystemExit(f"{name}: {tree} is not a checkout of this repository (no operator/ or crds/)")
    sizes = [int(s) for s in opts.resources.split(",") if s.strip()]
    controlplane = load_controlplane()
    if lacking := controlplane.missing():
        raise SystemExit(f"control plane binaries missing ({', '.join(lacking)}): make controlplane")

    # SIGTERM ends the run like Ctrl-C: every finally below stops what it started.
    signal.signal(signal.SIGTERM, _interrupt)
    work = Path(tempfile.mkdtemp(prefix="ovllm-scale-", dir=opts.work_dir))
    results = {
        "benchmark": "operator_scale", "command": [sys.executable, *sys.argv],
        "started": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "machine": machine(), "sizes": sizes,
        "control_plane": {"client_rate": list(getattr(controlplane, "CLIENT_RATE", ()) or ()) or "defaults",
                          "binaries": str(controlplane.install_dir())},
        "designs": {name: {**tree_version(tree), "operator_args": extra.get(name, [])} for name, tree in trees.items()},
        "settings": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(opts).items()
                     if k not in ("operator", "operator_args")},
        "engine_spec": ENGINE_SPEC, "converted_spec": CONVERTED_SPEC, "autoscaling_spec": AUTOSCALING,
        "floor": [], "runs": [],
    }
    opts.out.parent.mkdir(parents=True, exist_ok=True)
    lock = threading.Lock()

    def save() -> None:
        with lock:
            opts.out.write_text(json.dumps(results, indent=2) + "\n")

    try:
        for n in sizes:
            if opts.floor:
                run_floor(next(iter(trees.values())), n, opts, work, results["floor"])
                save()
            for name, tree in trees.items():
                run_one(name, tree, extra.get(name, []), n, opts, work, results["runs"])
                save()
    except KeyboardInterrupt:
        results["interrupted"] = True
        log("interrupted")
    finally:
        results["finished"] = datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds")
        save()
        if not opts.keep:
            shutil.rmtree(work, ignore_errors=True)
    print(table(results, list(trees)))
    print(f"\nresults: {opts.out}")
    failed = any("error" in r for r in results["runs"] + results["floor"])
    return 1 if results.get("interrupted") or failed else 0


if __name__ == "__main__":
    sys.exit(main())
