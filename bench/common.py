"""What the benchmarks share: the two runtimes (crisp, and Debian's containerd on its own root
and socket), the busybox image both get, and small statistics.

Each runtime is a context manager that starts its daemon in a directory of its own and cleans
up after it (mounts, shims, bridges), so a benchmark can run both in one process.
"""

from __future__ import annotations

import compileall
import contextlib
import json
import os
import subprocess
import sys
import tarfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "src"))

from crisp.api import cri_pb2, cri_pb2_grpc
from tests.support.daemon import SOURCE_DIR, CrispDaemon
from tests.support.image_builder import (
    BUSYBOX,
    GROUP,
    PASSWD,
    ImageConfig,
    LayerBuilder,
    build_image,
    busybox_applets,
    make_layer,
    push_image,
)
from tests.support.pods import children, clean_leftovers, processes
from tests.support.registry import running_registry

CNI_BIN = "/usr/lib/cni"
REGISTRY_HELPER_IDLE = 2.0  # seconds crisp's registry helper stays after the last pull


@dataclass
class Runtime:
    """One CRI runtime under test: its stub and how to find its processes."""

    name: str
    socket: Path
    daemon_pid: Callable[[], int]
    per_pod_pids: Callable[[list[str]], list[int]]
    # where its CNI host-local IPAM keeps one file per allocated IP (one directory per network)
    ipam_dir: Path | None = None
    # the directory everything of this runtime lives under (mounts there are its own)
    base: Path | None = None
    # processes the daemon starts for itself and ends (crisp's registry helper): their
    # memory is the daemon's while they run
    helper_pids: Callable[[], list[int]] = lambda: []

    def stub(self) -> Any:
        channel = grpc.insecure_channel(f"unix://{self.socket}")
        return cri_pb2_grpc.RuntimeServiceStub(channel), cri_pb2_grpc.ImageServiceStub(channel)


# Pods --------------------------------------------------------------------------------------

class PodDriver:
    def __init__(self, runtime: Runtime, busybox: str, logs: Path):
        self.runtime = runtime
        self.stub, self.images = runtime.stub()
        self.busybox = busybox
        self.logs = logs

    def pull(self, *images: str) -> None:
        for image in images:
            self.images.PullImage(cri_pb2.PullImageRequest(image=cri_pb2.ImageSpec(image=image)))

    def pod_config(self, name: str) -> Any:
        return cri_pb2.PodSandboxConfig(
            metadata=cri_pb2.PodSandboxMetadata(name=name, uid=f"uid-{name}",
                                                namespace="bench"),
            hostname=name, log_directory=str(self.logs / name),
            linux=cri_pb2.LinuxPodSandboxConfig(security_context=cri_pb2.LinuxSandboxSecurityContext(
                namespace_options=cri_pb2.NamespaceOption(pid=cri_pb2.CONTAINER))),
        )

    def container_config(self, name: str, command: list[str] | None = None) -> Any:
        return cri_pb2.ContainerConfig(
            metadata=cri_pb2.ContainerMetadata(name=name),
            image=cri_pb2.ImageSpec(image=self.busybox), command=command or ["sleep", "3600"],
            log_path=f"{name}.log",
            linux=cri_pb2.LinuxContainerConfig(security_context=cri_pb2.LinuxContainerSecurityContext(
                namespace_options=cri_pb2.NamespaceOption(pid=cri_pb2.CONTAINER))),
        )

    def start(self, name: str, command: list[str] | None = None) -> tuple[str, str, float]:
        """Run a pod with one container (``sleep`` unless told); its ids and the seconds it took."""
        config = self.pod_config(name)
        container = self.container_config("sleep", command)
        began = time.perf_counter()
        pod_id = self.stub.RunPodSandbox(cri_pb2.RunPodSandboxRequest(config=config)).pod_sandbox_id
        container_id = self.stub.CreateContainer(cri_pb2.CreateContainerRequest(
            pod_sandbox_id=pod_id, config=container, sandbox_config=config)).container_id
        self.stub.StartContainer(cri_pb2.StartContainerRequest(container_id=container_id))
        return pod_id, container_id, time.perf_counter() - began

    def add_container(self, pod_id: str, pod_name: str, name: str) -> str:
        """Create and start one more sleeping container in the pod; its id."""
        container_id = self.stub.CreateContainer(cri_pb2.CreateContainerRequest(
            pod_sandbox_id=pod_id, config=self.container_config(name),
            sandbox_config=self.pod_config(pod_name))).container_id
        self.stub.StartContainer(cri_pb2.StartContainerRequest(container_id=container_id))
        return str(container_id)

    def stop_pod(self, pod_id: str, container_ids: list[str]) -> None:
        for container_id in container_ids:
            self.stub.StopContainer(cri_pb2.StopContainerRequest(container_id=container_id,
                                                                 timeout=0))
        self.stub.StopPodSandbox(cri_pb2.StopPodSandboxRequest(pod_sandbox_id=pod_id))
        self.stub.RemovePodSandbox(cri_pb2.RemovePodSandboxRequest(pod_sandbox_id=pod_id))

    def status_info(self) -> dict[str, str]:
        return dict(self.stub.Status(cri_pb2.StatusRequest(verbose=True)).info)

    def stop(self, pod_id: str, container_id: str) -> float:
        began = time.perf_counter()
        self.stub.StopContainer(cri_pb2.StopContainerRequest(container_id=container_id, timeout=0))
        self.stub.RemoveContainer(cri_pb2.RemoveContainerRequest(container_id=container_id))
        self.stub.StopPodSandbox(cri_pb2.StopPodSandboxRequest(pod_sandbox_id=pod_id))
        self.stub.RemovePodSandbox(cri_pb2.RemovePodSandboxRequest(pod_sandbox_id=pod_id))
        return time.perf_counter() - began

    def sandbox_pid(self, pod_id: str) -> int:
        response = self.stub.PodSandboxStatus(cri_pb2.PodSandboxStatusRequest(
            pod_sandbox_id=pod_id, verbose=True))
        info = json.loads(response.info.get("info", "{}") or "{}")
        return int(info.get("pid") or 0)


# Measurements ------------------------------------------------------------------------------

def percentile(values: list[float], fraction: float) -> float:
    ordered = sorted(values)
    index = min(len(ordered) - 1, max(0, round(fraction * (len(ordered) - 1))))
    return ordered[index]


def rss_bytes(pid: int) -> int:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


def smaps_rollup(pid: int) -> dict[str, int]:
    """The daemon's memory by kind (kernel's /proc/PID/smaps_rollup), in bytes."""
    found: dict[str, int] = {}
    try:
        for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines()[1:]:
            key, _, rest = line.partition(":")
            if key in ("Rss", "Pss", "Anonymous", "Shared_Clean", "Private_Clean",
                       "Private_Dirty"):
                found[key] = int(rest.split()[0]) * 1024
    except OSError:
        pass
    return found


def daemon_rss_bytes(runtime: Runtime) -> int:
    """The daemon's RSS with that of its own helper processes that run at the moment."""
    return rss_bytes(runtime.daemon_pid()) + sum(rss_bytes(p) for p in runtime.helper_pids())


def wait_for_helpers_to_end(runtime: Runtime, seconds: float = 30.0) -> int:
    """Wait until the daemon's helper processes ended; their largest RSS seen meanwhile."""
    peak = 0
    deadline = time.monotonic() + seconds
    while (helpers := runtime.helper_pids()) and time.monotonic() < deadline:
        peak = max(peak, sum(rss_bytes(pid) for pid in helpers))
        time.sleep(0.2)
    return peak


def pids_whose_cmdline(first_contains: str, contains: str) -> list[int]:
    return processes(lambda args: first_contains.encode() in args[0]
                     and contains.encode() in b" ".join(args))


# The two runtimes ----------------------------------------------------------------------------

@contextlib.contextmanager
def crisp_runtime(base: Path, registry_host: str) -> Iterator[Runtime]:
    (base / "net.d").mkdir(parents=True)
    bridge_existed = subprocess.run(["ip", "link", "show", "crisp0"],
                                    capture_output=True).returncode == 0
    # An installed crisp has its bytecode compiled (pip does it), containerd is a binary: a
    # checkout run with PYTHONDONTWRITEBYTECODE would compile every module at each start,
    # and the compiler's memory stays in the daemon's RSS (1.3 MiB idle, measured).
    compileall.compile_dir(str(SOURCE_DIR / "crisp"), quiet=1)
    daemon = CrispDaemon(base)
    # The test helper logs at debug level; a benchmark runs crisp as production would.
    daemon.config_path.write_text(
        f'root_dir = "{daemon.root}"\nrun_dir = "{daemon.run_dir}"\n'
        f'socket = "{daemon.socket}"\nlog_level = "warning"\n'
        f'[pod]\npause_image = "{registry_host}/bench/pause:latest"\n'
        f'[cni]\nconf_dir = "{base / "net.d"}"\nwrite_default_config = true\n'
        f'bin_dirs = ["{CNI_BIN}"]\n'
        # the registry helper ends soon after the pulls, so that idle figures are idle
        f'[images]\nregistry_helper_idle = {REGISTRY_HELPER_IDLE}\n'
    )
    daemon.start()
    os.environ.pop("PYTHONTRACEMALLOC", None)
    try:
        assert daemon.process is not None
        process = daemon.process
        yield Runtime(
            name="crisp", socket=daemon.socket, daemon_pid=lambda: process.pid,
            per_pod_pids=lambda pods: pids_whose_cmdline("conmon", str(base)),
            ipam_dir=daemon.root / "network" / "ipam", base=base,
            helper_pids=lambda: children(process.pid, lambda args: b"registry-helper" in args),
        )
    finally:
        daemon.stop()
        clean_leftovers(base)
        if not bridge_existed:
            subprocess.run(["ip", "link", "del", "crisp0"], capture_output=True)


CONTAINERD_CONFIG = """version = 2
root = "{root}"
state = "{state}"
[grpc]
  address = "{socket}"
[ttrpc]
  address = "{socket}.ttrpc"
[debug]
  level = "warn"
[plugins."io.containerd.grpc.v1.cri"]
  sandbox_image = "{pause}"
  # This host gives no CAP_SYS_RESOURCE: like crisp, never ask for a lower oom_score_adj.
  restrict_oom_score_adj = true
  stream_server_port = "0"
  [plugins."io.containerd.grpc.v1.cri".cni]
    bin_dir = "{cni_bin}"
    conf_dir = "{cni_conf}"
  [plugins."io.containerd.grpc.v1.cri".containerd]
    snapshotter = "overlayfs"
    default_runtime_name = "runc"
    [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc]
      runtime_type = "io.containerd.runc.v2"
  [plugins."io.containerd.grpc.v1.cri".registry.mirrors."{registry}"]
    endpoint = ["http://{registry}"]
"""

CONTAINERD_CNI = {
    "cniVersion": "0.4.0", "name": "bench-containerd",
    "plugins": [
        {"type": "bridge", "bridge": "ctrdbench0", "isGateway": True, "ipMasq": True,
         "ipam": {"type": "host-local", "ranges": [[{"subnet": "10.86.0.0/16"}]],
                  "routes": [{"dst": "0.0.0.0/0"}]}},
        {"type": "portmap", "capabilities": {"portMappings": True}},
        {"type": "loopback"},
    ],
}


@contextlib.contextmanager
def containerd_runtime(base: Path, registry_host: str) -> Iterator[Runtime]:
    conf = base / "net.d"
    conf.mkdir(parents=True)
    network = json.loads(json.dumps(CONTAINERD_CNI))
    network["plugins"][0]["ipam"]["dataDir"] = str(base / "ipam")  # its own, not the host's
    (conf / "10-bench.conflist").write_text(json.dumps(network))
    socket = base / "containerd.sock"
    config = base / "config.toml"
    config.write_text(CONTAINERD_CONFIG.format(
        root=base / "root", state=base / "state", socket=socket,
        pause=f"{registry_host}/bench/pause:latest", cni_bin=CNI_BIN, cni_conf=conf,
        registry=registry_host))
    with open(base / "containerd.log", "wb") as log:
        process = subprocess.Popen(["containerd", "--config", str(config)], stdout=log,
                                   stderr=subprocess.STDOUT, start_new_session=True)
    try:
        deadline = time.monotonic() + 30
        while not socket.exists():
            if process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError((base / "containerd.log").read_text()[-3000:])
            time.sleep(0.1)
        time.sleep(1.0)  # the CRI plugin finishes loading after the socket appears
        yield Runtime(
            name="containerd", socket=socket, daemon_pid=lambda: process.pid,
            per_pod_pids=lambda pods: pids_whose_cmdline("containerd-shim", str(socket)),
            ipam_dir=base / "ipam", base=base,
        )
    finally:
        process.terminate()
        try:
            process.wait(20)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
        for pid in pids_whose_cmdline("containerd-shim", str(socket)):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, 9)
        mounts = [line.split()[4] for line in Path("/proc/self/mountinfo").read_text().splitlines()
                  if line.split()[4].startswith(str(base))]
        for point in sorted(mounts, reverse=True):
            subprocess.run(["umount", "-l", point], capture_output=True)
        subprocess.run(["ip", "link", "del", "ctrdbench0"], capture_output=True)


def bench_image(config: ImageConfig | None = None) -> Any:
    """busybox with its applets as hard links that carry the binary's own mode.

    containerd applies a hard link entry's mode to the linked file (crisp keeps the file's),
    so links marked 0644 would make busybox unexecutable under containerd.
    """
    layer = LayerBuilder()
    for directory in ("bin", "dev", "etc", "proc", "sys", "tmp", "root"):
        layer.dir(directory, mode=0o1777 if directory == "tmp" else 0o755)
    with open(BUSYBOX, "rb") as binary:
        layer.file("bin/busybox", binary.read(), mode=0o755)
    for applet in busybox_applets():
        info = tarfile.TarInfo(f"bin/{applet}")
        info.type = tarfile.LNKTYPE
        info.linkname = "bin/busybox"
        info.mode = 0o755
        layer.raw(info)
    layer.file("etc/passwd", PASSWD)
    layer.file("etc/group", GROUP)
    return build_image([make_layer(layer)], config)


@dataclass
class BenchImages:
    """The local registry both runtimes pull from, and the two images it serves."""

    host: str
    busybox: str
    pause: str


@contextlib.contextmanager
def bench_registry() -> Iterator[BenchImages]:
    """A docker-registry with the busybox and pause images every pod benchmark runs."""
    with running_registry() as registry:
        push_image(registry.url, "bench/busybox", "latest", bench_image())
        push_image(registry.url, "bench/pause", "latest",
                   bench_image(ImageConfig(entrypoint=["/bin/sleep", "2147483647"], cmd=None)))
        yield BenchImages(registry.host, f"{registry.host}/bench/busybox:latest",
                          f"{registry.host}/bench/pause:latest")


def write_json(path: str | None, metrics: dict[str, Any]) -> None:
    """Write ``{"metric": {"crisp": x, "containerd": y}, ...}`` for bench/report.py."""
    if path:
        Path(path).write_text(json.dumps(metrics, indent=1, sort_keys=True) + "\n")
