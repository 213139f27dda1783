#!/usr/bin/env python3
"""A real Kubernetes control plane for tests: etcd, kube-apiserver, kube-controller-manager,
kube-scheduler and kwok (fake nodes and pods), all built from upstream Go modules.

kwok plays the nodes and moves pods through their phases, so the operator's tests run against the
real API server, scheduler, garbage collector, Job controller and PV binder on a 2-core machine
without containers. With --real-node one real node joins them (hack/realnode.py): containerd, a
kubelet and kube-proxy from the same Kubernetes module, where pods really run. Standard library
only, so it runs before any venv.

    python hack/controlplane.py install [--helm] [--real-node]  # build the binaries once (Go required)
    python hack/controlplane.py up --dir RUNDIR [--real-node]    # start one; writes RUNDIR/kubeconfig
    python hack/controlplane.py load-images --dir RUNDIR IMAGE.. # Docker's images into the real node
    python hack/controlplane.py down --dir RUNDIR                # stop it, and clean up the host

From Python (the pytest fixtures): ``start(run_dir) -> ControlPlane`` and ``ControlPlane.stop()``.
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import importlib.util
import json
import os
import shutil
import signal
import socket
import ssl
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

K8S_VERSION = "v1.36.3"
K8S_STAGING_VERSION = "v0.36.3"  # k8s.io/api, client-go, ... are published as v0.x of the same release
ETCD_VERSION = "v3.6.16"
KWOK_VERSION = "v0.8.0"
HELM_VERSION = "v4.3.1"

# A conversion Job whose source is this string fails (see FAIL_STAGE): lets tests exercise failure.
FAILS_TO_CONVERT = "ovllm-test/fails-to-convert"

# The fake nodes, with the CPU feature labels Node Feature Discovery sets on real hardware.
NFD_CPUID = "feature.node.kubernetes.io/cpu-cpuid."
_AVX2 = ("AVX2",)
_AVX512 = (*_AVX2, "AVX512F", "AVX512BW", "AVX512VL", "AVX512VNNI")
_AMX = (*_AVX512, "AVX512BF16", "AMXTILE", "AMXBF16", "AMXINT8")
NODES: dict[str, tuple[str, ...]] = {
    "avx2-a": tuple(NFD_CPUID + f for f in _AVX2),
    "avx2-b": tuple(NFD_CPUID + f for f in _AVX2),
    "avx512-a": tuple(NFD_CPUID + f for f in _AVX512),
    "amx-a": tuple(NFD_CPUID + f for f in _AMX),
    "plain-a": (),
}
NODE_RESOURCES = {"cpu": "32", "memory": "128Gi", "pods": "110"}  # a modest Xeon server
KWOK_NODE_ANNOTATION = ("kwok.x-k8s.io/node", "fake")

# The controller-manager's and scheduler's own client rate limits, as clusters of a thousand
# Deployments set them: at the defaults (20 and 50 requests a second) the controller-manager alone
# takes about 4 minutes to make 1000 Deployments' ReplicaSets and pods (benchmarks/operator_scale.py).
CLIENT_RATE = ("--kube-api-qps=300", "--kube-api-burst=600")
TOKEN = "admin-token"  # static token of a system:masters user; loopback-only test clusters
SERVICE_CIDR = "10.96.0.0/16"
POD_CIDR = "10.244.0.1/16"

# How each binary proves it runs (an interrupted or foreign-arch build would not).
VERSION_ARGS = {
    "etcd": ["--version"],
    "kube-apiserver": ["--version"],
    "kube-controller-manager": ["--version"],
    "kube-scheduler": ["--version"],
    "kubectl": ["version", "--client"],
    "kwok": ["--version"],
}
# The real node's: its kubelet and kube-proxy, the pause container, crictl (cleans pods up at `down`).
NODE_VERSION_ARGS = {"kubelet": ["--version"], "kube-proxy": ["--version"], "pause": ["-v"], "crictl": ["--version"]}
K8S_COMMANDS = ("kube-apiserver", "kube-controller-manager", "kube-scheduler", "kubectl", "kubelet", "kube-proxy")
NODE_TOKEN = "real-0-node-token"  # the kubelet's: user system:node:real-0 in group system:nodes


def _load_realnode():
    """hack/realnode.py, importable however this file was loaded (as a script or by path)."""
    if "ovllm_realnode" not in sys.modules:
        spec = importlib.util.spec_from_file_location("ovllm_realnode", Path(__file__).with_name("realnode.py"))
        module = importlib.util.module_from_spec(spec)
        sys.modules["ovllm_realnode"] = module
        spec.loader.exec_module(module)
    return sys.modules["ovllm_realnode"]


realnode = _load_realnode()

# kwok's "fast" stages: nodes become Ready at once, pods Running at once, Job pods then Succeeded.
KWOK_STAGE_FILES = (
    "kustomize/stage/node/fast/node-initialize.yaml",
    "kustomize/stage/node/heartbeat/node-heartbeat.yaml",
    "kustomize/stage/pod/fast/pod-ready.yaml",
    "kustomize/stage/pod/fast/pod-complete.yaml",
    "kustomize/stage/pod/fast/pod-delete.yaml",
)
# kwok picks among all matching stages at random (by weight), so "complete" and "fail" must exclude
# each other: this selector term goes into pod-complete, its opposite (In) into FAIL_STAGE. The jq
# key yields every argument of the first container; In matches when any of them equals the value.
_FIRST_CONTAINER_ARGS = ".spec.containers.[0].args.[]"
COMPLETE_EXCLUSION = f"""\
    - key: '{_FIRST_CONTAINER_ARGS}'
      operator: 'NotIn'
      values:
      - '{FAILS_TO_CONVERT}'
"""
FAIL_STAGE = f"""\
apiVersion: kwok.x-k8s.io/v1alpha1
kind: Stage
metadata:
  name: ovllm-fails-to-convert
spec:
  resourceRef:
    apiGroup: v1
    kind: Pod
  selector:
    matchExpressions:
    - key: '.metadata.deletionTimestamp'
      operator: 'DoesNotExist'
    - key: '.status.phase'
      operator: 'In'
      values:
      - 'Running'
    - key: '{_FIRST_CONTAINER_ARGS}'
      operator: 'In'
      values:
      - '{FAILS_TO_CONVERT}'
  next:
    statusTemplate: |
      {{{{ $now := Now }}}}
      containerStatuses:
      {{{{ range .spec.containers }}}}
      - image: {{{{ .image | Quote }}}}
        name: {{{{ .name | Quote }}}}
        ready: false
        restartCount: 0
        started: false
        state:
          terminated:
            exitCode: 1
            finishedAt: {{{{ $now | Quote }}}}
            reason: Error
            startedAt: {{{{ $now | Quote }}}}
      {{{{ end }}}}
      phase: Failed
"""

_t0 = time.monotonic()


def log(message: str) -> None:
    """Progress on stderr with the elapsed time, so a slow cold build shows where it is."""
    print(f"[controlplane {time.monotonic() - _t0:7.1f}s] {message}", file=sys.stderr, flush=True)


# ---------------------------------------------------------------------------------------- install

def cache_root() -> Path:
    return Path(os.environ.get("OVLLM_CONTROLPLANE_CACHE") or "~/.cache/ovllm/controlplane").expanduser()


def install_dir() -> Path:
    """Keyed by every version, so a version bump builds next to (never over) the old binaries."""
    return cache_root() / f"k8s-{K8S_VERSION}-etcd-{ETCD_VERSION}-kwok-{KWOK_VERSION}"


def bin_dir() -> Path:
    return install_dir() / "bin"


def stages_path() -> Path:
    """kwok's stage config, copied out of the kwok module at install so `up` needs no module cache."""
    return install_dir() / "kwok-stages.yaml"


def helm_path() -> Path:
    return cache_root() / f"helm-{HELM_VERSION}" / "bin" / "helm"


def crictl_path() -> Path:
    return cache_root() / f"cri-tools-{realnode.CRICTL_VERSION}" / "bin" / "crictl"


def binary_path(name: str) -> Path:
    return crictl_path() if name == "crictl" else bin_dir() / name


def _runs(path: Path, args: list[str]) -> bool:
    try:
        return subprocess.run([path, *args], capture_output=True, timeout=60).returncode == 0
    except (OSError, subprocess.SubprocessError):
        return False


def missing(real_node: bool = False) -> list[str]:
    """What `up` needs and the cache lacks (cheap: no binary is run)."""
    names = [*VERSION_ARGS, *(NODE_VERSION_ARGS if real_node else ())]
    names = [name for name in names if not binary_path(name).is_file()]
    return names + ([stages_path().name] if not stages_path().is_file() else [])


def _go() -> str:
    go = shutil.which("go") or "/usr/local/go/bin/go"
    if not Path(go).is_file():
        raise SystemExit("Go is needed to build the control plane: install it from https://go.dev/dl/")
    return go


def _go_env(**extra: str) -> dict:
    """No workspace, no toolchain switching (it would download another Go), no inherited GOFLAGS."""
    env = {**os.environ, "GOWORK": "off", "GOTOOLCHAIN": "local", "GOFLAGS": "", "CGO_ENABLED": "0"}
    return {**env, **extra}


def _run(command: list, cwd: Path | None = None, env: dict | None = None) -> str:
    result = subprocess.run([str(c) for c in command], cwd=cwd, env=env or _go_env(),
                            capture_output=True, text=True)
    if result.returncode != 0:
        raise SystemExit(f"failed ({result.returncode}): {' '.join(map(str, command))}\n"
                         f"{result.stdout[-3000:]}{result.stderr[-6000:]}")
    return result.stdout


def _module_dir(module: str, version: str, scratch: Path) -> Path:
    """Download a module (source zip from the Go proxy) and return its read-only directory."""
    out = _run([_go(), "mod", "download", "-json", f"{module}@{version}"], cwd=scratch)
    return Path(json.loads(out)["Dir"])


def _pinned_modfile(source: Path, work: Path, pin_replaces) -> Path:
    """A copy of the module's go.mod whose local `replace ./...` directives (sources the module zip
    lacks) point at published versions instead; built with `-modfile`, so no source tree is copied."""
    work.mkdir()
    modfile = work / "go.mod"
    shutil.copyfile(source / "go.mod", modfile)
    shutil.copyfile(source / "go.sum", work / "go.sum")
    module = json.loads(_run([_go(), "mod", "edit", "-json", modfile]))
    required = {r["Path"] for r in module.get("Require") or []}
    edits = []
    for replace in module.get("Replace") or []:
        old, new = replace["Old"]["Path"], replace["New"]["Path"]
        if new.startswith("./") or new.startswith("../"):
            edits += pin_replaces(old, old in required)
    _run([_go(), "mod", "edit", *edits, modfile])
    return modfile


def _build_kubernetes(names: list[str], pause: bool, scratch: Path, out: Path) -> None:
    """k8s.io/kubernetes replaces its 32 staging modules (k8s.io/api, ...) with ./staging, absent from
    the module zip: pin the required ones to their published release, drop the unused ones."""
    source = _module_dir("k8s.io/kubernetes", K8S_VERSION, scratch)

    def pin(module: str, required: bool) -> list[str]:
        if not required:  # e.g. k8s.io/sample-cli-plugin: not required, no published tag to pin to
            return [f"-dropreplace={module}"]
        return [f"-replace={module}={module}@{K8S_STAGING_VERSION}"]

    modfile = _pinned_modfile(source, scratch / source.name, pin)
    major, minor = K8S_VERSION.lstrip("v").split(".")[:2]
    version_pkg = "k8s.io/component-base/version"
    ldflags = (f"-s -w -X {version_pkg}.gitVersion={K8S_VERSION} -X {version_pkg}.gitMajor={major} "
               f"-X {version_pkg}.gitMinor={minor} -X {version_pkg}.gitTreeState=clean")
    for name in names:
        log(f"building {name} {K8S_VERSION}")
        _run([_go(), "build", f"-modfile={modfile}", "-trimpath", f"-ldflags={ldflags}", "-o", out / name,
              f"./cmd/{name}"], cwd=source, env=_go_env(GOFLAGS="-mod=mod"))
    if pause:
        log("building pause from build/pause/linux/pause.c")
        realnode.build_pause(source, out / "pause", realnode.PAUSE_IMAGE.rsplit(":", 1)[1])


def _build_etcd(scratch: Path, out: Path) -> None:
    """etcd's server module replaces its sibling modules with ../api etc.: pin them to the release."""
    source = _module_dir("go.etcd.io/etcd/server/v3", ETCD_VERSION, scratch)

    def pin(module: str, required: bool) -> list[str]:
        return [f"-replace={module}={module}@{ETCD_VERSION}"] if required else [f"-dropreplace={module}"]

    modfile = _pinned_modfile(source, scratch / source.name, pin)
    _run([_go(), "mod", "edit", "-toolchain=none", modfile])
    log(f"building etcd {ETCD_VERSION}")
    _run([_go(), "build", f"-modfile={modfile}", "-trimpath", "-ldflags=-s -w", "-o", out / "etcd", "."],
         cwd=source, env=_go_env(GOFLAGS="-mod=mod"))


def _go_install(package: str, version: str, out: Path, ldflags: str = "") -> None:
    log(f"building {package}@{version}")
    _run([_go(), "install", "-trimpath", f"-ldflags=-s -w {ldflags}", f"{package}@{version}"], cwd=out,
         env=_go_env(GOBIN=str(out)))


def _write_stages(scratch: Path, path: Path) -> None:
    """kwok's upstream stages, plus the failing-conversion stage, made exclusive with pod-complete."""
    kwok = _module_dir("sigs.k8s.io/kwok", KWOK_VERSION, scratch)
    documents = []
    for name in KWOK_STAGE_FILES:
        text = (kwok / name).read_text()
        if name.endswith("/pod-complete.yaml"):
            anchor = "  selector:\n    matchExpressions:\n"
            if text.count(anchor) != 1:
                raise SystemExit(f"unexpected layout of {kwok / name}: cannot exclude {FAILS_TO_CONVERT}")
            text = text.replace(anchor, anchor + COMPLETE_EXCLUSION)
        documents.append(text)
    documents.append(FAIL_STAGE)
    tmp = path.with_suffix(".tmp")
    tmp.write_text("---\n".join(d if d.endswith("\n") else d + "\n" for d in documents))
    tmp.replace(path)


def install(helm: bool = False, real_node: bool = False) -> Path:
    """Build whatever the cache lacks (or has broken) and return the bin directory. Each binary is
    built in a scratch dir on the same filesystem and renamed into place, so an interrupted build
    never leaves a half-written binary that looks installed. With real_node, also install the Debian
    packages the real node runs (containerd, runc, CNI plugins)."""
    if real_node:
        realnode.install_host_packages()
    target = bin_dir()
    target.mkdir(parents=True, exist_ok=True)
    checks = {**VERSION_ARGS, **NODE_VERSION_ARGS}
    todo = [name for name, args in checks.items() if not _runs(binary_path(name), args)]
    if helm and not _runs(helm_path(), ["version"]):
        todo.append("helm")
    if not todo and stages_path().is_file():
        log(f"up to date: {target}")
        return target
    log(f"installing {', '.join(todo) or stages_path().name} into {cache_root()} "
        "(cold, on 2 cores: about 10 minutes, helm 2 more)")
    with tempfile.TemporaryDirectory(prefix=".build-", dir=install_dir()) as tmp:
        scratch, out = Path(tmp), Path(tmp) / "bin"
        out.mkdir()
        k8s = [name for name in K8S_COMMANDS if name in todo]
        if k8s or "pause" in todo:
            _build_kubernetes(k8s, "pause" in todo, scratch, out)
        if "etcd" in todo:
            _build_etcd(scratch, out)
        if "kwok" in todo:
            _go_install("sigs.k8s.io/kwok/cmd/kwok", KWOK_VERSION, out)
        if "helm" in todo:
            # Its release builds stamp the full version; without it, `helm version` says only v4.3.
            _go_install("helm.sh/helm/v4/cmd/helm", HELM_VERSION, out,
                        f"-X helm.sh/helm/v4/internal/version.version={HELM_VERSION}")
            helm_path().parent.mkdir(parents=True, exist_ok=True)
            (out / "helm").replace(helm_path())
        if "crictl" in todo:
            _go_install("sigs.k8s.io/cri-tools/cmd/crictl", realnode.CRICTL_VERSION, out)
            crictl_path().parent.mkdir(parents=True, exist_ok=True)
            (out / "crictl").replace(crictl_path())
        for binary in out.iterdir():
            binary.replace(target / binary.name)
        _write_stages(scratch, stages_path())
    for name in todo:
        path, args = (helm_path(), ["version"]) if name == "helm" else (binary_path(name), checks[name])
        if not _runs(path, args):
            raise SystemExit(f"{path} was built but does not run {' '.join(args)}")
    log(f"installed: {target}")
    return target


# -------------------------------------------------------------------------------------- run / stop

def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _openssl(*args: str, cwd: Path) -> None:
    subprocess.run(["openssl", *args], cwd=cwd, check=True, capture_output=True)


def _make_pki(pki: Path) -> None:
    """A CA that signs the API server's certificate (so clients verify TLS instead of skipping it),
    the API server's client certificate for kubelets, and the controller-manager's CSR signer, plus
    the service-account token signing key pair."""
    pki.mkdir(parents=True, exist_ok=True)
    _openssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", "ca.key", "-out", "ca.crt",
             "-days", "3650", "-subj", "/CN=ovllm-test-ca", cwd=pki)
    (pki / "apiserver.ext").write_text(
        "basicConstraints=CA:FALSE\nkeyUsage=critical,digitalSignature,keyEncipherment\n"
        "extendedKeyUsage=serverAuth\nauthorityKeyIdentifier=keyid\nsubjectAltName=IP:127.0.0.1,"
        f"IP:{realnode.GATEWAY},IP:10.96.0.1,DNS:localhost,DNS:kubernetes,DNS:kubernetes.default,DNS:kubernetes.default.svc\n")
    _openssl("req", "-newkey", "rsa:2048", "-nodes", "-keyout", "apiserver.key", "-out", "apiserver.csr",
             "-subj", "/CN=kube-apiserver", cwd=pki)
    _openssl("x509", "-req", "-in", "apiserver.csr", "-CA", "ca.crt", "-CAkey", "ca.key", "-CAcreateserial",
             "-days", "3650", "-extfile", "apiserver.ext", "-out", "apiserver.crt", cwd=pki)
    (pki / "client.ext").write_text("basicConstraints=CA:FALSE\nkeyUsage=critical,digitalSignature,keyEncipherment\n"
                                    "extendedKeyUsage=clientAuth\n")
    _openssl("req", "-newkey", "rsa:2048", "-nodes", "-keyout", "kubelet-client.key", "-out", "kubelet-client.csr",
             "-subj", "/O=system:masters/CN=kube-apiserver-kubelet-client", cwd=pki)
    _openssl("x509", "-req", "-in", "kubelet-client.csr", "-CA", "ca.crt", "-CAkey", "ca.key", "-CAcreateserial",
             "-days", "3650", "-extfile", "client.ext", "-out", "kubelet-client.crt", cwd=pki)
    _openssl("genrsa", "-out", "sa.key", "2048", cwd=pki)
    _openssl("rsa", "-in", "sa.key", "-pubout", "-out", "sa.pub", cwd=pki)


def _kubeconfig(server: str, ca: Path, token: str = TOKEN, user: str = "admin") -> str:
    """JSON is YAML: a kubeconfig every client reads, self-contained (the CA is inlined)."""
    ca_data = base64.b64encode(ca.read_bytes()).decode()
    return json.dumps({
        "apiVersion": "v1", "kind": "Config", "current-context": "ovllm-test",
        "clusters": [{"name": "ovllm-test", "cluster": {"server": server, "certificate-authority-data": ca_data}}],
        "users": [{"name": user, "user": {"token": token}}],
        "contexts": [{"name": "ovllm-test", "context": {"cluster": "ovllm-test", "user": user}}],
    }, indent=2)


def node_manifest(name: str) -> dict:
    """A fake node as kwok manages it: found by its annotation, Ready once kwok sees it. No kwok
    taint, so the operator's pods schedule without tolerations, as on a real cluster."""
    labels = {label: "true" for label in NODES[name]}
    labels |= {"type": "kwok", "kubernetes.io/hostname": name, "kubernetes.io/os": "linux",
               "kubernetes.io/arch": "amd64"}
    return {
        "apiVersion": "v1", "kind": "Node",
        "metadata": {"name": name, "labels": labels, "annotations": dict([KWOK_NODE_ANNOTATION])},
        "status": {"capacity": NODE_RESOURCES, "allocatable": NODE_RESOURCES},
    }


def _pid_alive(pid: int, name: str) -> bool:
    """True while `pid` is still our `name` process (not exited, not a zombie, not a reused pid)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z" and name.encode() in cmdline


def _read_pids(run_dir: Path) -> list[tuple[str, int]]:
    path = run_dir / "pids"
    if not path.is_file():
        return []
    return [(name, int(pid)) for name, pid in (line.split() for line in path.read_text().splitlines() if line)]


def _terminate(pids: list[tuple[str, int]], timeout: float) -> None:
    """SIGTERM them all at once, SIGKILL whatever outlives the timeout."""
    for name, pid in pids:
        if _pid_alive(pid, name):
            os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and any(_pid_alive(pid, name) for name, pid in pids):
        time.sleep(0.05)
    for name, pid in pids:
        if _pid_alive(pid, name):
            os.kill(pid, signal.SIGKILL)


def _stop_real_node(run_dir: Path, pids: list[tuple[str, int]], timeout: float) -> None:
    """The kubelet first (it would restart what is removed), then every pod through CRI (CNI
    releases its veth and address), then kube-proxy and containerd, then what is left on the host."""
    paths = realnode.Paths(run_dir, cache_root())
    _terminate([p for p in pids if p[0] == "kubelet"], timeout)
    realnode.remove_pods(crictl_path(), paths)
    _terminate([p for p in pids if p[0] in ("kube-proxy", "containerd")], timeout)
    realnode.clean_host(paths, bin_dir() / "kube-proxy")


def stop(run_dir: Path | str, timeout: float = 15.0) -> list[str]:
    """Stop what `start` wrote to run_dir/pids: a real node first (see _stop_real_node), the API
    server's clients and the API server next, etcd last (an API server whose etcd is gone hangs in
    shutdown until it is killed). Returns what a real node left behind on the host (nothing, when
    all went well)."""
    run_dir = Path(run_dir)
    pids = _read_pids(run_dir)
    left = []
    if (run_dir / "real-node").is_dir():
        _stop_real_node(run_dir, pids, timeout)
        left = realnode.leftovers(realnode.Paths(run_dir, cache_root()))
    _terminate([p for p in pids if p[0] != "etcd"], timeout)
    _terminate([p for p in pids if p[0] == "etcd"], timeout)
    (run_dir / "pids").unlink(missing_ok=True)
    return left


@dataclass
class ControlPlane:
    """A running control plane: its kubeconfig, its processes' logs, and a tiny REST client."""

    run_dir: Path
    server: str
    kubeconfig: Path
    _processes: list[subprocess.Popen] = field(default_factory=list, repr=False)

    @property
    def bin_dir(self) -> Path:
        """Where kubectl (and the rest) is, for tests that drive the cluster the way a user would."""
        return bin_dir()

    def request(self, method: str, path: str, body: dict | None = None) -> tuple[int, dict]:
        """One API call as the admin user; returns (HTTP status, decoded JSON body)."""
        context = ssl.create_default_context(cafile=str(self.run_dir / "pki" / "ca.crt"))
        data = json.dumps(body).encode() if body is not None else None
        request = urllib.request.Request(self.server + path, data=data, method=method, headers={
            "Authorization": f"Bearer {TOKEN}", "Content-Type": "application/json"})
        try:
            with urllib.request.urlopen(request, context=context, timeout=10) as response:
                status, raw = response.status, response.read()
        except urllib.error.HTTPError as error:
            status, raw = error.code, error.read()
        try:
            return status, json.loads(raw or b"{}")
        except ValueError:
            return status, {"raw": raw.decode(errors="replace")}

    def logs_tail(self, lines: int = 30) -> str:
        """The last lines of every component's log, for assertion messages when something hangs."""
        parts = []
        for log_file in sorted((self.run_dir / "logs").glob("*.log")):  # none for a foreign cluster
            tail = log_file.read_text(errors="replace").splitlines()[-lines:]
            parts.append(f"----- {log_file.name} (last {len(tail)} lines)\n" + "\n".join(tail))
        return "\n".join(parts)

    @property
    def real_node(self):
        """The real node's paths (containerd's socket...), or None on a kwok-only cluster."""
        paths = realnode.Paths(self.run_dir, cache_root())
        return paths if paths.base.is_dir() else None

    def load_images(self, images: list[str]) -> list[str]:
        """Docker's images into the real node's containerd (only those it lacks); returns those imported."""
        if self.real_node is None:
            raise RuntimeError(f"no real node in {self.run_dir}: start with --real-node")
        return realnode.load_docker_images(crictl_path(), self.real_node, images)

    def stop(self, timeout: float = 15.0) -> list[str]:
        left = stop(self.run_dir, timeout)
        for process in self._processes:  # reap our children so they do not linger as zombies
            with contextlib.suppress(subprocess.TimeoutExpired):
                process.wait(timeout)
        return left

    def _spawn(self, name: str, args: list[str], detach: bool, executable: str | None = None) -> None:
        """Start one component with its log in logs/NAME.log and its pid appended to pids (at once,
        so `down` can clean up after a start that failed halfway)."""
        with open(self.run_dir / "logs" / f"{name}.log", "ab") as log_file:
            process = subprocess.Popen([executable or str(bin_dir() / name), *args], stdout=log_file,
                                       stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, cwd=self.run_dir,
                                       start_new_session=detach)
        self._processes.append(process)
        with open(self.run_dir / "pids", "a") as pids:
            pids.write(f"{name} {process.pid}\n")

    def _wait(self, what: str, ready, timeout: float) -> None:
        """Poll `ready()` until true; fail early, with the logs, when a component has exited."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for process in self._processes:
                if process.poll() is not None:
                    raise RuntimeError(f"{Path(process.args[0]).name} exited with {process.returncode} "
                                       f"while waiting for {what}\n{self.logs_tail()}")
            with contextlib.suppress(OSError):
                if ready():
                    return
            time.sleep(0.2)
        raise RuntimeError(f"timed out after {timeout:.0f}s waiting for {what}\n{self.logs_tail()}")

    def _nodes_ready(self) -> bool:
        status, nodes = self.request("GET", "/api/v1/nodes?labelSelector=type%3Dkwok")
        ready = {item["metadata"]["name"] for item in nodes.get("items", []) if any(
            c["type"] == "Ready" and c["status"] == "True" for c in item.get("status", {}).get("conditions", []))}
        return status == 200 and ready >= set(NODES)


def _start_real_node(plane: ControlPlane, timeout: float, detach: bool) -> None:
    """containerd (CRI) with the pause image, then the kubelet and kube-proxy; returns once the
    node is Ready."""
    paths = realnode.Paths(plane.run_dir, cache_root())
    for directory in (paths.cni_conf, paths.ipam, paths.kubelet_root, paths.pod_logs, paths.containerd_root):
        directory.mkdir(parents=True, exist_ok=True)
    (paths.cni_conf / "10-ovllm.conflist").write_text(json.dumps(realnode.cni_config(paths), indent=2))
    containerd_config = paths.base / "containerd.toml"
    containerd_config.write_text(realnode.containerd_config(paths))
    plane._spawn("containerd", ["--config", str(containerd_config)], detach,
                 executable=str(realnode.HOST_PACKAGES["containerd"]))
    plane._wait("containerd's CRI socket", lambda: realnode.crictl(
        crictl_path(), paths, "version", check=False).returncode == 0, timeout)
    realnode.remove_pods(crictl_path(), paths)  # left by a run that was killed before `down`
    realnode.ctr(paths, "images", "import", "-", input=realnode.pause_archive(bin_dir() / "pause"))

    pki = plane.run_dir / "pki"
    node_kubeconfig = paths.base / "kubelet.kubeconfig"
    node_user = f"system:node:{realnode.NODE_NAME}"
    node_kubeconfig.write_text(_kubeconfig(plane.server, pki / "ca.crt", NODE_TOKEN, node_user))
    kubelet_config = paths.base / "kubelet.yaml"  # JSON is YAML
    kubelet_config.write_text(json.dumps(realnode.kubelet_config(paths, pki / "ca.crt", free_port(), free_port())))
    labels = ",".join(f"{key}={value}" for key, value in realnode.node_labels().items())
    plane._spawn("kubelet", [
        f"--config={kubelet_config}", f"--kubeconfig={node_kubeconfig}", f"--root-dir={paths.kubelet_root}",
        f"--hostname-override={realnode.NODE_NAME}", f"--node-ip={realnode.GATEWAY}", f"--node-labels={labels}"],
        detach)
    proxy_config = paths.base / "kube-proxy.yaml"
    proxy_config.write_text(json.dumps(realnode.kube_proxy_config(plane.kubeconfig, free_port(), free_port())))
    plane._spawn("kube-proxy", [f"--config={proxy_config}"], detach)

    def node_ready() -> bool:
        status, node = plane.request("GET", f"/api/v1/nodes/{realnode.NODE_NAME}")
        return status == 200 and any(c["type"] == "Ready" and c["status"] == "True"
                                     for c in node.get("status", {}).get("conditions", []))

    plane._wait(f"the real node {realnode.NODE_NAME} to be Ready (kubelet)", node_ready, timeout)


def start(run_dir: Path | str, timeout: float = 120.0, detach: bool = False, real_node: bool = False) -> ControlPlane:
    """Start a fresh control plane on free ports (several can run at once) and return once it is
    usable: API server ready, controller-manager running (the default ServiceAccount exists), the
    fake nodes registered and Ready, and with real_node the real node Ready too. With detach, the
    processes outlive this Python process.

    Without a real node everything listens on 127.0.0.1. With one, the API server listens on the
    pods' bridge (realnode.GATEWAY) instead, where pods reach it through the `kubernetes` Service
    and the host reaches it as well; only one real node can run on a machine at a time."""
    run_dir = Path(run_dir).resolve()
    if lacking := missing(real_node):
        raise FileNotFoundError(f"control plane binaries missing in {install_dir()}: {', '.join(lacking)}; "
                                "build them with `make controlplane` (python hack/controlplane.py install)")
    if real_node and (reason := realnode.why_not_here()):
        raise RuntimeError(f"cannot start a real node: {reason}")
    if any(_pid_alive(pid, name) for name, pid in _read_pids(run_dir)):
        raise RuntimeError(f"a control plane is already running in {run_dir}; stop it first (down --dir)")
    for stale in ("etcd", "logs", "pki", "pids", "real-node"):
        path = run_dir / stale
        shutil.rmtree(path) if path.is_dir() else path.unlink(missing_ok=True)
    (run_dir / "logs").mkdir(parents=True)
    pki = run_dir / "pki"
    _make_pki(pki)
    tokens = f"{TOKEN},admin,admin,system:masters\n"
    address = "127.0.0.1"
    if real_node:
        if realnode.node_running_elsewhere(run_dir):
            raise RuntimeError(f"a real node already runs on this machine: {realnode.node_running_elsewhere(run_dir)}")
        realnode.Paths(run_dir, cache_root()).base.mkdir(parents=True)
        realnode.clean_host(realnode.Paths(run_dir, cache_root()), bin_dir() / "kube-proxy")  # a killed run's
        realnode.create_network()
        tokens += f"{NODE_TOKEN},system:node:{realnode.NODE_NAME},node-{realnode.NODE_NAME},system:nodes\n"
        address = realnode.GATEWAY
    (pki / "tokens.csv").write_text(tokens)
    etcd_port, peer_port, api_port = free_port(), free_port(), free_port()
    etcd, peer = f"http://127.0.0.1:{etcd_port}", f"http://127.0.0.1:{peer_port}"
    plane = ControlPlane(run_dir, f"https://{address}:{api_port}", run_dir / "kubeconfig")
    plane.kubeconfig.write_text(_kubeconfig(plane.server, pki / "ca.crt"))
    kubeconfig = str(plane.kubeconfig)
    try:
        plane._spawn("etcd", [
            f"--data-dir={run_dir / 'etcd'}", "--name=default", "--unsafe-no-fsync",
            f"--listen-client-urls={etcd}", f"--advertise-client-urls={etcd}",
            f"--listen-peer-urls={peer}", f"--initial-advertise-peer-urls={peer}",
            f"--initial-cluster=default={peer}"], detach)
        plane._spawn("kube-apiserver", [
            f"--etcd-servers={etcd}", f"--bind-address={address}", f"--advertise-address={address}",
            f"--secure-port={api_port}", f"--tls-cert-file={pki / 'apiserver.crt'}",
            f"--tls-private-key-file={pki / 'apiserver.key'}", f"--token-auth-file={pki / 'tokens.csv'}",
            "--authorization-mode=RBAC,Node", "--service-account-issuer=https://kubernetes.default.svc.cluster.local",
            f"--service-account-key-file={pki / 'sa.pub'}", f"--service-account-signing-key-file={pki / 'sa.key'}",
            f"--service-cluster-ip-range={SERVICE_CIDR}", f"--kubelet-client-certificate={pki / 'kubelet-client.crt'}",
            f"--kubelet-client-key={pki / 'kubelet-client.key'}", "--kubelet-preferred-address-types=InternalIP"],
            detach)
        plane._wait("the API server's /readyz", lambda: plane.request("GET", "/readyz")[0] == 200, timeout)
        plane._spawn("kube-controller-manager", [
            f"--kubeconfig={kubeconfig}", "--bind-address=127.0.0.1", "--secure-port=0", "--leader-elect=false",
            "--use-service-account-credentials=true", f"--service-account-private-key-file={pki / 'sa.key'}",
            f"--root-ca-file={pki / 'ca.crt'}", f"--cluster-signing-cert-file={pki / 'ca.crt'}",
            f"--cluster-signing-key-file={pki / 'ca.key'}",
            "--pvclaimbinder-sync-period=2s",  # default 15s: a claim made with its PV waits that long
            *CLIENT_RATE], detach)
        plane._spawn("kube-scheduler", [
            f"--kubeconfig={kubeconfig}", "--bind-address=127.0.0.1", "--secure-port=0", "--leader-elect=false",
            *CLIENT_RATE], detach)
        plane._spawn("kwok", [
            f"--kubeconfig={kubeconfig}", "--manage-all-nodes=false",
            f"--manage-nodes-with-annotation-selector={'='.join(KWOK_NODE_ANNOTATION)}",
            f"--cidr={POD_CIDR}", "--node-ip=10.240.0.1", "--node-lease-duration-seconds=40",
            f"--config={stages_path()}"], detach)
        plane._wait("the default ServiceAccount (controller-manager)", lambda: plane.request(
            "GET", "/api/v1/namespaces/default/serviceaccounts/default")[0] == 200, timeout)
        for name in NODES:
            status, body = plane.request("POST", "/api/v1/nodes", node_manifest(name))
            if status not in (201, 409):
                raise RuntimeError(f"cannot create node {name}: {status} {body}")
        plane._wait("the fake nodes to be Ready (kwok)", plane._nodes_ready, timeout)
        if real_node:
            _start_real_node(plane, timeout, detach)
    except BaseException:
        plane.stop()
        raise
    return plane


def attach(kubeconfig: Path | str) -> ControlPlane:
    """The control plane that `up` started in kubeconfig's directory, to read its logs or stop it.
    (Any other kubeconfig works too, with no server URL parsed and no logs to tail.)"""
    kubeconfig = Path(kubeconfig).resolve()
    try:
        server = json.loads(kubeconfig.read_text())["clusters"][0]["cluster"]["server"]
    except (ValueError, KeyError, IndexError):
        server = ""
    return ControlPlane(kubeconfig.parent, server, kubeconfig)


# ---------------------------------------------------------------------------------------------- CLI

def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    commands = parser.add_subparsers(dest="command", required=True)
    install_parser = commands.add_parser("install", help="build the binaries into the cache (idempotent)")
    install_parser.add_argument("--helm", action="store_true", help=f"also build helm {HELM_VERSION}")
    install_parser.add_argument("--real-node", action="store_true",
                                help="also install the Debian packages a real node runs (as root)")
    up = commands.add_parser("up", help="start a control plane and leave it running")
    up.add_argument("--dir", type=Path, required=True, help="run directory: kubeconfig, logs/, pids")
    up.add_argument("--timeout", type=float, default=120.0)
    up.add_argument("--real-node", action="store_true",
                    help=f"add the real node {realnode.NODE_NAME}: containerd, kubelet, kube-proxy (as root)")
    load = commands.add_parser("load-images", help="import Docker's images into the real node of --dir")
    load.add_argument("--dir", type=Path, required=True)
    load.add_argument("images", nargs="+")
    down = commands.add_parser("down", help="stop the control plane started in --dir")
    down.add_argument("--dir", type=Path, required=True)
    args = parser.parse_args(argv)
    if args.command == "install":
        install(helm=args.helm, real_node=args.real_node)
    elif args.command == "up":
        plane = start(args.dir, timeout=args.timeout, detach=True, real_node=args.real_node)
        nodes = [*NODES, *([realnode.NODE_NAME] if args.real_node else [])]
        log(f"ready: {plane.server} with nodes {', '.join(nodes)}")
        print(f"export KUBECONFIG={plane.kubeconfig} PATH={bin_dir()}:$PATH")
    elif args.command == "load-images":
        imported = attach(args.dir.resolve() / "kubeconfig").load_images(args.images)
        log(f"imported: {', '.join(imported) or 'none (the node has these builds)'}")
    else:
        if left := stop(args.dir):
            log("left on the host:\n  " + "\n  ".join(left))
            return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
