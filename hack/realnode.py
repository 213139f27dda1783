"""One real node, `real-0`, beside kwok's fake ones: containerd with its CRI plugin, CNI bridge
networking, a kubelet and kube-proxy (iptables) built from the control plane's own Kubernetes module,
and a pause image built locally from the same module's pause.c. Pods scheduled there really run.

hack/controlplane.py drives it (`up --real-node`, `down`); this module holds what is specific to the
node, and nothing here imports anything outside the standard library.

What it makes on the host, and `teardown` removes (`leftovers` lists what is still there):
- processes: containerd, kubelet, kube-proxy (in the run directory's pids), and the containerd shims;
- the bridge `ovllm0` (the pods' gateway, 10.245.0.1, where the API server listens for them) and
  the pods' veth devices and network namespaces;
- iptables chains: kube-proxy's and the kubelet's KUBE-*, and OVLLM-REAL-NODE, which lets the
  bridge's traffic through a FORWARD policy of DROP (Docker's);
- mounts (emptyDir, projected tokens, container root filesystems) under the run directory, and the
  kubepods cgroups.
Images stay in containerd's content store under ~/.cache/ovllm/controlplane/real-node, so a rebuilt
image is imported again and an unchanged one is not.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import os
import shutil
import signal
import subprocess
import tarfile
from pathlib import Path

NODE_NAME = "real-0"
BRIDGE = "ovllm0"
POD_SUBNET = "10.245.0.0/24"  # kwok's fake pod IPs are 10.244.0.0/16: no overlap
GATEWAY = "10.245.0.1"  # the bridge's address: the node's InternalIP and the API server's address
FORWARD_CHAIN = "OVLLM-REAL-NODE"
PAUSE_IMAGE = "ovllm.local/pause:3.10"
K8S_NAMESPACE = "k8s.io"  # containerd's namespace for CRI
CNI_BIN_DIR = Path("/usr/lib/cni")  # Debian's containernetworking-plugins
HOST_PACKAGES = {"containerd": Path("/usr/bin/containerd"), "runc": Path("/usr/sbin/runc"),
                 "containernetworking-plugins": CNI_BIN_DIR / "bridge", "iptables": Path("/usr/sbin/iptables"),
                 "iproute2": Path("/usr/sbin/ip")}
CRICTL_VERSION = "v1.37.0"
# Node Feature Discovery's cpu-cpuid names for the /proc/cpuinfo flags ovllm's ISA levels and
# OpenVINO's kernels care about.
CPUINFO_TO_NFD = {
    "avx": "AVX", "avx2": "AVX2", "fma": "FMA3", "f16c": "F16C", "avx_vnni": "AVXVNNI",
    "avx512f": "AVX512F", "avx512bw": "AVX512BW", "avx512vl": "AVX512VL", "avx512dq": "AVX512DQ",
    "avx512cd": "AVX512CD", "avx512_vnni": "AVX512VNNI", "avx512_bf16": "AVX512BF16",
    "avx512_fp16": "AVX512FP16", "avx512ifma": "AVX512IFMA", "avx512vbmi": "AVX512VBMI",
    "amx_tile": "AMXTILE", "amx_bf16": "AMXBF16", "amx_int8": "AMXINT8",
}
NFD_CPUID = "feature.node.kubernetes.io/cpu-cpuid."


# ------------------------------------------------------------------------------------ host checks

def missing_host_packages() -> list[str]:
    return [package for package, path in HOST_PACKAGES.items() if not path.exists()]


def cpu_labels(cpuinfo: str | None = None) -> dict[str, str]:
    """This machine's CPU as Node Feature Discovery labels it (from the first processor's flags)."""
    text = cpuinfo if cpuinfo is not None else Path("/proc/cpuinfo").read_text()
    flags = next((line.split(":", 1)[1].split() for line in text.splitlines() if line.startswith("flags")), [])
    return {NFD_CPUID + CPUINFO_TO_NFD[flag]: "true" for flag in sorted(set(flags)) if flag in CPUINFO_TO_NFD}


def why_not_here() -> str | None:
    """Why a real node cannot start on this machine, or None."""
    if os.geteuid() != 0:
        return "a real node needs root (containerd, the kubelet and kube-proxy manage mounts, cgroups and iptables)"
    if lacking := missing_host_packages():
        return (f"Debian packages missing: {', '.join(lacking)} "
                "(python hack/controlplane.py install --real-node installs them)")
    return None


# ---------------------------------------------------------------------------------------- install


def debian_packages():
    """hack/debian_packages.py, loaded by path: hack/ is no package, and this file is run as a script or
    loaded by path itself. One apt-get at a time (the images may be installing Docker meanwhile)."""
    import importlib.util

    path = Path(__file__).with_name("debian_packages.py")
    spec = importlib.util.spec_from_file_location("ovllm_debian_packages", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def install_host_packages() -> None:
    lacking = missing_host_packages()
    if not lacking:
        return
    if os.geteuid() != 0:
        raise SystemExit(f"install them as root: apt-get install {' '.join(lacking)}")
    debian_packages().install(*lacking)  # one apt-get at a time: the images may be installing Docker meanwhile


def build_pause(k8s_source: Path, out: Path, version: str) -> None:
    """Kubernetes' own pause container (build/pause/linux/pause.c), static, as its Makefile builds it."""
    source = k8s_source / "build" / "pause" / "linux" / "pause.c"
    result = subprocess.run(["gcc", "-Os", "-Wall", "-Werror", "-static", f"-DVERSION={version}", "-o", str(out),
                             str(source)], capture_output=True, text=True)
    if result.returncode != 0:
        raise SystemExit(f"cannot build {source}: {result.stderr[-2000:]}")
    subprocess.run(["strip", str(out)], capture_output=True)


def pause_archive(pause_binary: Path) -> bytes:
    """A one-layer image (docker-archive, as `docker save` writes it) holding /pause, tagged PAUSE_IMAGE."""
    layer = io.BytesIO()
    with tarfile.open(fileobj=layer, mode="w") as tar:
        info = tar.gettarinfo(str(pause_binary), arcname="pause")
        info.uid = info.gid = 0
        info.uname = info.gname = ""
        info.mtime = 0
        with open(pause_binary, "rb") as handle:
            tar.addfile(info, handle)
    layer_bytes = layer.getvalue()
    diff_id = "sha256:" + hashlib.sha256(layer_bytes).hexdigest()
    config = json.dumps({
        "architecture": "amd64", "os": "linux",
        "config": {"Entrypoint": ["/pause"], "User": "65535:65535"},
        "rootfs": {"type": "layers", "diff_ids": [diff_id]},
        "history": [{"created_by": "ovllm hack/realnode.py: pause.c from k8s.io/kubernetes"}],
    }, sort_keys=True).encode()
    config_name = hashlib.sha256(config).hexdigest() + ".json"
    layer_name = diff_id.split(":")[1] + "/layer.tar"
    manifest = json.dumps([{"Config": config_name, "RepoTags": [PAUSE_IMAGE], "Layers": [layer_name]}]).encode()
    archive = io.BytesIO()
    with tarfile.open(fileobj=archive, mode="w") as tar:
        for name, data in ((layer_name, layer_bytes), (config_name, config), ("manifest.json", manifest)):
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return archive.getvalue()


# ------------------------------------------------------------------------------------------ paths

class Paths:
    """Where one real node keeps its files: config and runtime state in the run directory, images
    in the cache (containerd's root: content store, snapshots and image metadata)."""

    def __init__(self, run_dir: Path, cache: Path):
        self.run_dir = Path(run_dir)
        self.base = self.run_dir / "real-node"
        self.containerd_root = cache / "real-node" / "containerd"
        self.containerd_state = self.base / "containerd-state"
        self.runc_root = self.base / "runc"
        self.socket = self.base / "containerd.sock"
        self.cni_conf = self.base / "cni" / "net.d"
        self.ipam = self.base / "cni" / "ipam"
        self.kubelet_root = self.base / "kubelet"
        self.pod_logs = self.base / "pod-logs"

    @property
    def endpoint(self) -> str:
        return f"unix://{self.socket}"


# ------------------------------------------------------------------------------------- networking

def _run(command: list, check: bool = True, timeout: float = 120,
         input: bytes | None = None) -> subprocess.CompletedProcess:
    result = subprocess.run([str(c) for c in command], capture_output=True, timeout=timeout, input=input)
    if check and result.returncode != 0:
        raise RuntimeError(f"failed ({result.returncode}): {' '.join(map(str, command))}\n"
                           f"{result.stdout.decode(errors='replace')[-2000:]}"
                           f"{result.stderr.decode(errors='replace')[-2000:]}")
    return result


def _link_exists(name: str) -> bool:
    return Path("/sys/class/net", name).exists()


def create_network() -> None:
    """The bridge with the gateway address (before the API server, which listens on it), and a
    FORWARD rule for pod-to-pod traffic through it (bridged frames meet iptables' FORWARD chain)."""
    if not _link_exists(BRIDGE):
        _run(["ip", "link", "add", BRIDGE, "type", "bridge"])
    prefix = POD_SUBNET.split("/")[1]
    addresses = _run(["ip", "-4", "-o", "addr", "show", "dev", BRIDGE]).stdout.decode()
    if f"{GATEWAY}/{prefix}" not in addresses:
        _run(["ip", "addr", "add", f"{GATEWAY}/{prefix}", "dev", BRIDGE])
    _run(["ip", "link", "set", BRIDGE, "up"])
    if _run(["iptables", "-n", "-L", FORWARD_CHAIN], check=False).returncode != 0:
        _run(["iptables", "-N", FORWARD_CHAIN])
        _run(["iptables", "-A", FORWARD_CHAIN, "-i", BRIDGE, "-j", "ACCEPT"])
        _run(["iptables", "-A", FORWARD_CHAIN, "-o", BRIDGE, "-j", "ACCEPT"])
    if _run(["iptables", "-C", "FORWARD", "-j", FORWARD_CHAIN], check=False).returncode != 0:
        _run(["iptables", "-I", "FORWARD", "1", "-j", FORWARD_CHAIN])


def _our_chains() -> dict[tuple[str, str], list[str]]:
    """KUBE-* and OVLLM-REAL-NODE chains per (iptables command, table)."""
    found = {}
    for command in ("iptables", "ip6tables"):
        for table in ("filter", "nat", "mangle"):
            result = _run([f"{command}-save", "-t", table], check=False)
            chains = [line[1:].split()[0] for line in result.stdout.decode().splitlines()
                      if line.startswith(":") and (line[1:].startswith("KUBE-") or line[1:].startswith(FORWARD_CHAIN))]
            if chains:
                found[(command, table)] = chains
    return found


def remove_network() -> None:
    """Every chain kube-proxy, the kubelet and `create_network` made, then the bridge (its veths go
    with the pods' network namespaces)."""
    for (command, table), chains in _our_chains().items():
        rules = _run([f"{command}-save", "-t", table]).stdout.decode().splitlines()
        # Jumps into our chains from built-in chains (FORWARD, PREROUTING, OUTPUT, POSTROUTING...).
        for rule in rules:
            if rule.startswith("-A ") and any(f"-j {chain}" in rule for chain in chains):
                parts = rule.split()
                if parts[1] not in chains:
                    _run([command, "-t", table, "-D", *parts[1:]], check=False)
        for chain in chains:
            _run([command, "-t", table, "-F", chain], check=False)
        for chain in chains:
            _run([command, "-t", table, "-X", chain], check=False)
    if _link_exists(BRIDGE):
        _run(["ip", "link", "delete", BRIDGE], check=False)


def cni_config(paths: Paths) -> dict:
    return {
        "cniVersion": "0.4.0", "name": "ovllm-real-node",
        "plugins": [{
            "type": "bridge", "bridge": BRIDGE, "isGateway": True, "ipMasq": False, "hairpinMode": True,
            "ipam": {"type": "host-local", "ranges": [[{"subnet": POD_SUBNET, "gateway": GATEWAY}]],
                     "routes": [{"dst": "0.0.0.0/0"}], "dataDir": str(paths.ipam)},
        }],
    }


# ------------------------------------------------------------------------------------- containerd

def can_lower_oom_score() -> bool:
    """Whether this process holds CAP_SYS_RESOURCE (bit 24), which lowering oom_score_adj needs."""
    status = Path("/proc/self/status").read_text()
    effective = next(line.split()[1] for line in status.splitlines() if line.startswith("CapEff:"))
    return bool(int(effective, 16) >> 24 & 1)


def containerd_config(paths: Paths) -> str:
    """Containerd 1.6's own config with CRI enabled (Debian's default and Docker's bundled one
    disable it), runc with cgroupfs (cgroup v1 here) and its state in the run directory, the local
    pause image, our CNI config.

    restrict_oom_score_adj: the kubelet asks for -998 for sandboxes and -997 for Guaranteed pods,
    and runc fails to start any container ("can't get final child's PID from pipe") where lowering
    oom_score_adj is not allowed, as in sandboxes without CAP_SYS_RESOURCE (these machines). With it,
    no container goes below containerd's own score; a real node keeps the kubelet's values."""
    cri = 'plugins."io.containerd.grpc.v1.cri"'
    restrict = "true" if not can_lower_oom_score() else "false"
    return f"""version = 2
root = "{paths.containerd_root}"
state = "{paths.containerd_state}"

[grpc]
  address = "{paths.socket}"

[{cri}]
  sandbox_image = "{PAUSE_IMAGE}"
  restrict_oom_score_adj = {restrict}
  [{cri}.containerd]
    snapshotter = "overlayfs"
    default_runtime_name = "runc"
    [{cri}.containerd.runtimes.runc]
      runtime_type = "io.containerd.runc.v2"
      [{cri}.containerd.runtimes.runc.options]
        SystemdCgroup = false
        Root = "{paths.runc_root}"
  [{cri}.cni]
    bin_dir = "{CNI_BIN_DIR}"
    conf_dir = "{paths.cni_conf}"
    max_conf_num = 1
"""


def ctr(paths: Paths, *args: str, input: bytes | None = None, timeout: float = 600) -> subprocess.CompletedProcess:
    return _run(["ctr", "--address", paths.socket, "--namespace", K8S_NAMESPACE, *args], input=input, timeout=timeout)


def crictl(crictl_path: Path, paths: Paths, *args: str, check: bool = True, timeout: float = 120):
    return _run([crictl_path, "--runtime-endpoint", paths.endpoint, "--image-endpoint", paths.endpoint,
                 "--timeout", "60s", *args], check=check, timeout=timeout)


def image_id(crictl_path: Path, paths: Paths, image: str) -> str | None:
    """The image's config digest in the node's containerd (what `docker image inspect` calls its Id)."""
    result = crictl(crictl_path, paths, "inspecti", "-o", "json", image, check=False)
    if result.returncode != 0:
        return None
    return json.loads(result.stdout)["status"]["id"]


def load_docker_images(crictl_path: Path, paths: Paths, images: list[str], docker: str = "docker") -> list[str]:
    """Import images from Docker into the node (`docker save | ctr import`), each only when the node
    lacks that exact build. Returns the ones imported."""
    imported = []
    for image in images:
        wanted, size = _run([docker, "image", "inspect", "--format", "{{.Id}} {{.Size}}", image]).stdout.split()
        wanted = wanted.decode()
        have = image_id(crictl_path, paths, image)
        if have == wanted:
            continue
        if have is not None:
            # an earlier build under this name: removed first, by its id, so that the CRI plugin drops
            # every reference it made to it (name, digest, id; `ctr images rm NAME` drops only the name
            # and left the rest: 14 GB became 26 GB in one run here). Without this its layers and
            # snapshots stay in the cache, one more copy per rebuild. Best effort: the import replaces
            # the name anyway.
            crictl(crictl_path, paths, "rmi", have, check=False, timeout=600)
        # containerd keeps the layers twice: as imported (content store) and unpacked (snapshots).
        needed, free = 2 * int(size), shutil.disk_usage(paths.containerd_root).free
        if needed > free:
            raise RuntimeError(f"importing {image} into the real node needs about {needed / 1e9:.1f} GB in "
                               f"{paths.containerd_root} (its layers, and unpacked), and {free / 1e9:.1f} GB are "
                               "free")
        saved = subprocess.Popen([docker, "save", image], stdout=subprocess.PIPE)
        try:
            result = subprocess.run(["ctr", "--address", str(paths.socket), "--namespace", K8S_NAMESPACE,
                                     "images", "import", "-"], stdin=saved.stdout, capture_output=True, timeout=1800)
        finally:
            saved.stdout.close()
            saved.wait()
        if result.returncode != 0 or saved.returncode != 0:
            raise RuntimeError(f"cannot import {image} into the real node: {result.stderr.decode()[-2000:]}")
        got = image_id(crictl_path, paths, image)
        if got != wanted:
            raise RuntimeError(f"{image} imported as {got}, but Docker has {wanted}")
        imported.append(image)
    return imported


# -------------------------------------------------------------------------------- kubelet, proxy

def kubelet_config(paths: Paths, ca: Path, port: int, healthz_port: int) -> dict:
    """cgroup v1 with the cgroupfs driver (kubelet refuses v1 unless failCgroupV1 is false); only
    clients with a certificate of the test CA (the API server) may call it; no image garbage
    collection (images are imported, not pulled)."""
    return {
        "apiVersion": "kubelet.config.k8s.io/v1beta1", "kind": "KubeletConfiguration",
        "failCgroupV1": False, "cgroupDriver": "cgroupfs", "containerRuntimeEndpoint": paths.endpoint,
        "address": GATEWAY, "port": port, "readOnlyPort": 0,
        "healthzBindAddress": "127.0.0.1", "healthzPort": healthz_port,
        "authentication": {"anonymous": {"enabled": False}, "webhook": {"enabled": False},
                           "x509": {"clientCAFile": str(ca)}},
        "authorization": {"mode": "AlwaysAllow"},
        "failSwapOn": False, "resolvConf": "/etc/resolv.conf", "podLogsDir": str(paths.pod_logs),
        "imageGCHighThresholdPercent": 100, "imageGCLowThresholdPercent": 99,
        # Memory only: the disk is the build machine's, shared with Docker's image builds, whose
        # passing peaks would otherwise taint the node with disk pressure for minutes.
        "evictionHard": {"memory.available": "100Mi"}, "evictionPressureTransitionPeriod": "10s",
        "serializeImagePulls": False, "maxPods": 20, "podCIDR": POD_SUBNET,
        "nodeStatusUpdateFrequency": "5s", "syncFrequency": "10s",
    }


def kube_proxy_config(kubeconfig: Path, healthz_port: int, metrics_port: int) -> dict:
    """iptables mode; conntrack left as the host has it (no sysctl writes)."""
    return {
        "apiVersion": "kubeproxy.config.k8s.io/v1alpha1", "kind": "KubeProxyConfiguration",
        "clientConnection": {"kubeconfig": str(kubeconfig)}, "mode": "iptables", "clusterCIDR": POD_SUBNET,
        "hostnameOverride": NODE_NAME, "healthzBindAddress": f"127.0.0.1:{healthz_port}",
        "metricsBindAddress": f"127.0.0.1:{metrics_port}",
        "conntrack": {"maxPerCore": 0, "min": 0, "tcpEstablishedTimeout": "0s", "tcpCloseWaitTimeout": "0s"},
        "iptables": {"syncPeriod": "30s", "minSyncPeriod": "0s"},
    }


def node_labels() -> dict[str, str]:
    return {"type": "real", **cpu_labels()}


# --------------------------------------------------------------------------------------- teardown

def _pids_with(fragment: str) -> list[int]:
    """Processes whose command line contains fragment (e.g. our containerd socket: the shims)."""
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            with contextlib.suppress(OSError):
                if fragment.encode() in (entry / "cmdline").read_bytes():
                    found.append(int(entry.name))
    return [pid for pid in found if pid != os.getpid()]


def _cmdline(pid: int) -> str:
    with contextlib.suppress(OSError):
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")[:200]
    return ""


def _mounts_under(*roots: Path) -> list[str]:
    mounts = []
    for line in Path("/proc/self/mountinfo").read_text().splitlines():
        point = line.split()[4].replace("\\040", " ")
        if any(point == str(root) or point.startswith(f"{root}/") for root in roots):
            mounts.append(point)
    return mounts


def _netns_of() -> list[str]:
    """Network namespaces of pods that are still mounted (containerd 1.6 puts them in /var/run/netns)."""
    return [point for point in _mounts_under(Path("/run/netns"), Path("/var/run/netns"))
            if Path(point).name.startswith("cni-")]


def _kubepods_cgroups() -> list[Path]:
    return [path for path in Path("/sys/fs/cgroup").glob("*/kubepods") if path.is_dir()]


def remove_pods(crictl_path: Path, paths: Paths) -> None:
    """Every pod sandbox stopped (CNI DEL: veth and IP released) and removed, with its containers."""
    if paths.socket.exists() and crictl_path.is_file():
        crictl(crictl_path, paths, "rmp", "--all", "--force", check=False, timeout=300)


def kill_strays(paths: Paths) -> None:
    """Whatever still runs from this node after the orderly stop: containerd's shims (they name its
    socket), or a containerd that the pids file lost."""
    for pid in _pids_with(str(paths.socket)) + _pids_with(str(paths.base)):
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)


def unmount_all(paths: Paths) -> None:
    """Deepest first; lazily, so that a mount still busy goes once its last user does."""
    for point in sorted(_mounts_under(paths.base, paths.containerd_root) + _netns_of(), key=len, reverse=True):
        _run(["umount", "-l", point], check=False)
    for point in _netns_of():
        with contextlib.suppress(OSError):
            Path(point).unlink()


def remove_cgroups() -> None:
    """The kubepods hierarchy the kubelet made in each cgroup v1 controller, leaves first."""
    for root in _kubepods_cgroups():
        for directory in sorted((p for p in root.rglob("*") if p.is_dir()), key=lambda p: len(p.parts), reverse=True):
            with contextlib.suppress(OSError):
                directory.rmdir()
        with contextlib.suppress(OSError):
            root.rmdir()


def leftovers(paths: Paths) -> list[str]:
    """What a stopped real node would have left on the host; empty after a clean teardown."""
    found = [f"process {pid}: {_cmdline(pid)}" for pid in _pids_with(str(paths.socket)) + _pids_with(str(paths.base))
             if Path(f"/proc/{pid}").exists()]
    found += [f"mount {point}" for point in _mounts_under(paths.base, paths.containerd_root)]
    found += [f"network namespace {point}" for point in _netns_of()]
    if _link_exists(BRIDGE):
        found.append(f"network device {BRIDGE}")
    found += [f"network device {link.name} (a pod's veth)" for link in Path("/sys/class/net").iterdir()
              if (link / "master").exists() and (link / "master").resolve().name == BRIDGE]
    found += [f"{command} -t {table} chain {chain}" for (command, table), chains in _our_chains().items()
              for chain in chains]
    found += [f"cgroup {path}" for path in _kubepods_cgroups()]
    return found


def clean_host(paths: Paths, kube_proxy: Path) -> None:
    """After the node's processes have stopped: kube-proxy's own cleanup, then whatever is left."""
    kill_strays(paths)
    if kube_proxy.is_file():
        _run([kube_proxy, "--cleanup"], check=False, timeout=60)
    unmount_all(paths)
    remove_network()
    remove_cgroups()
    with contextlib.suppress(OSError):
        shutil.rmtree(paths.containerd_state)


def node_running_elsewhere(run_dir: Path) -> str | None:
    """The command line of a real node's kubelet or containerd still running (from any run
    directory): the bridge, the iptables chains and the name real-0 exist once per machine."""
    for pid in _pids_with(f"--hostname-override={NODE_NAME}") + _pids_with("/real-node/containerd.toml"):
        return _cmdline(pid)
    return None
