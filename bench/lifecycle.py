"""Pod lifecycle latency and per-pod memory: crisp against containerd, same machine, same run.

Both runtimes get the same images from one local docker-registry, the same CNI plugins (a
bridge each, on its own subnet) and the very same CRI calls from this script:

* latency of RunPodSandbox + CreateContainer + StartContainer ("start") and of
  StopContainer + RemoveContainer + StopPodSandbox + RemovePodSandbox ("stop"), for a
  sequence of pods and for N concurrent clients (median and p90);
* memory with 10 and with 50 pods running, each with one ``sleep`` container: the daemon's RSS
  plus every per-pod process the runtime adds (crisp: one conmon per container, no pause
  process for infra-less pods; containerd: one shim per pod and its pause process).

Results are printed as a table and as crisp/containerd ratios. Run as root from the
repository root::

    python bench/lifecycle.py [--sequence 30] [--clients 10] [--per-client 3]
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import statistics
import subprocess
import sys
import tarfile
import tempfile
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "src"))

from crisp.api import cri_pb2, cri_pb2_grpc
from tests.support.daemon import CrispDaemon
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
from tests.support.pods import clean_leftovers
from tests.support.registry import running_registry

CNI_BIN = "/usr/lib/cni"


@dataclass
class Runtime:
    """One CRI runtime under test: its stub and how to find its processes."""

    name: str
    socket: Path
    daemon_pid: Callable[[], int]
    per_pod_pids: Callable[[list[str]], list[int]]

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

    def container_config(self, name: str) -> Any:
        return cri_pb2.ContainerConfig(
            metadata=cri_pb2.ContainerMetadata(name=name),
            image=cri_pb2.ImageSpec(image=self.busybox), command=["sleep", "3600"],
            log_path=f"{name}.log",
            linux=cri_pb2.LinuxContainerConfig(security_context=cri_pb2.LinuxContainerSecurityContext(
                namespace_options=cri_pb2.NamespaceOption(pid=cri_pb2.CONTAINER))),
        )

    def start(self, name: str) -> tuple[str, str, float]:
        """Run a pod with one sleeping container; return its ids and the seconds it took."""
        config = self.pod_config(name)
        container = self.container_config("sleep")
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

    def stop(self, pod_id: str, container_id: str) -> float:
        began = time.perf_counter()
        self.stub.StopContainer(cri_pb2.StopContainerRequest(container_id=container_id, timeout=0))
        self.stub.RemoveContainer(cri_pb2.RemoveContainerRequest(container_id=container_id))
        self.stub.StopPodSandbox(cri_pb2.StopPodSandboxRequest(pod_sandbox_id=pod_id))
        self.stub.RemovePodSandbox(cri_pb2.RemovePodSandboxRequest(pod_sandbox_id=pod_id))
        return time.perf_counter() - began

    def status_info(self) -> dict[str, str]:
        return dict(self.stub.Status(cri_pb2.StatusRequest(verbose=True)).info)

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


def sequence(driver: PodDriver, count: int, prefix: str) -> tuple[list[float], list[float]]:
    starts, stops = [], []
    for index in range(count):
        pod_id, container_id, took = driver.start(f"{prefix}-{index}")
        starts.append(took)
        stops.append(driver.stop(pod_id, container_id))
    return starts, stops


def concurrent(driver: PodDriver, clients: int, per_client: int,
               prefix: str) -> tuple[list[float], list[float]]:
    def client(number: int) -> tuple[list[float], list[float]]:
        own = PodDriver(driver.runtime, driver.busybox, driver.logs)
        return sequence(own, per_client, f"{prefix}-{number}")

    with ThreadPoolExecutor(clients) as pool:
        results = list(pool.map(client, range(clients)))
    return [s for r in results for s in r[0]], [s for r in results for s in r[1]]


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


def memory_with(driver: PodDriver, pods: int, prefix: str,
                breakdown: dict[str, dict[str, int]]) -> tuple[int, int, int]:
    """(daemon RSS, per-pod processes' RSS, number of per-pod processes) with ``pods`` running."""
    running = [driver.start(f"{prefix}-{i}")[:2] for i in range(pods)]
    time.sleep(1.0)  # let lazily started helpers settle
    try:
        daemon = rss_bytes(driver.runtime.daemon_pid())
        breakdown[f"{pods} pods"] = smaps_rollup(driver.runtime.daemon_pid())
        pids = driver.runtime.per_pod_pids([pod for pod, _ in running])
        pids += [pid for pid in (driver.sandbox_pid(pod) for pod, _ in running) if pid]
        return daemon, sum(rss_bytes(pid) for pid in set(pids)), len(set(pids))
    finally:
        for pod_id, container_id in running:
            driver.stop(pod_id, container_id)


def pids_whose_cmdline(first_contains: str, contains: str) -> list[int]:
    found = []
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        try:
            args = Path(f"/proc/{name}/cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if args and first_contains.encode() in args[0] and contains.encode() in b" ".join(args):
            found.append(int(name))
    return found


# The two runtimes ----------------------------------------------------------------------------

@contextlib.contextmanager
def crisp_runtime(base: Path, registry_host: str) -> Iterator[Runtime]:
    (base / "net.d").mkdir(parents=True)
    bridge_existed = subprocess.run(["ip", "link", "show", "crisp0"],
                                    capture_output=True).returncode == 0
    daemon = CrispDaemon(base)
    # The test helper logs at debug level; a benchmark runs crisp as production would.
    daemon.config_path.write_text(
        f'root_dir = "{daemon.root}"\nrun_dir = "{daemon.run_dir}"\n'
        f'socket = "{daemon.socket}"\nlog_level = "warning"\n'
        f'[pod]\npause_image = "{registry_host}/bench/pause:latest"\n'
        f'[cni]\nconf_dir = "{base / "net.d"}"\nwrite_default_config = true\n'
        f'bin_dirs = ["{CNI_BIN}"]\n'
    )
    daemon.start()
    os.environ.pop("PYTHONTRACEMALLOC", None)
    try:
        assert daemon.process is not None
        process = daemon.process
        yield Runtime(
            name="crisp", socket=daemon.socket, daemon_pid=lambda: process.pid,
            per_pod_pids=lambda pods: pids_whose_cmdline("conmon", str(base)),
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
    (conf / "10-bench.conflist").write_text(json.dumps(CONTAINERD_CNI))
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


# Main ----------------------------------------------------------------------------------------

@dataclass
class Results:
    seq_start: list[float]
    seq_stop: list[float]
    con_start: list[float]
    con_stop: list[float]
    memory: dict[int, tuple[int, int, int]]
    # smaps_rollup of the daemon: fresh, with the images pulled, with N pods
    breakdown: dict[str, dict[str, int]]
    # crisp only: mean ms per start step over the sequence, from Status verbose "steps"
    steps: dict[str, float]
    heap: list[list[Any]]


def measure(runtime: Runtime, busybox: str, pause: str, logs: Path,
            options: argparse.Namespace) -> Results:
    driver = PodDriver(runtime, busybox, logs)
    breakdown = {"idle (fresh)": smaps_rollup(runtime.daemon_pid())}
    driver.pull(busybox, pause)
    breakdown["idle (pulled)"] = smaps_rollup(runtime.daemon_pid())
    sequence(driver, 3, "warmup")
    before = driver.status_info().get("steps")
    seq_start, seq_stop = sequence(driver, options.sequence, "seq")
    steps = step_means(before, driver.status_info().get("steps"), options.sequence)
    con_start, con_stop = concurrent(driver, options.clients, options.per_client, "con")
    memory = {count: memory_with(driver, count, f"mem{count}", breakdown)
              for count in (10, 50)}
    heap = json.loads(driver.status_info().get("tracemalloc", "[]"))
    return Results(seq_start, seq_stop, con_start, con_stop, memory, breakdown, steps, heap)


def step_means(before: str | None, after: str | None, pods: int) -> dict[str, float]:
    """Mean milliseconds per pod start of each step between two Status "steps" readings."""
    if not before or not after:
        return {}
    old, new = json.loads(before), json.loads(after)
    return {name: (value["seconds"] - old.get(name, {}).get("seconds", 0.0)) * 1000 / pods
            for name, value in new.items()}


def report(results: dict[str, Results]) -> None:
    crisp, ctrd = results["crisp"], results["containerd"]

    def row(label: str, a: float, b: float, unit: str) -> None:
        print(f"{label:<44} {a:>10.1f} {b:>12.1f} {unit:<4} {a / b:>7.2f}")

    print(f"\n{'':<44} {'crisp':>10} {'containerd':>12} {'':<4} {'ratio':>7}")
    for label, attr in (("sequence", "seq"), ("concurrent", "con")):
        for phase in ("start", "stop"):
            a = getattr(crisp, f"{attr}_{phase}")
            b = getattr(ctrd, f"{attr}_{phase}")
            row(f"{label} {phase} median", statistics.median(a) * 1000,
                statistics.median(b) * 1000, "ms")
            row(f"{label} {phase} p90", percentile(a, 0.9) * 1000, percentile(b, 0.9) * 1000,
                "ms")
    mib = 1024 * 1024
    for count in (10, 50):
        (cd, cp, cn), (kd, kp, kn) = crisp.memory[count], ctrd.memory[count]
        row(f"{count} pods: daemon RSS", cd / mib, kd / mib, "MiB")
        row(f"{count} pods: per-pod processes RSS ({cn} vs {kn})", cp / mib, kp / mib, "MiB")
        row(f"{count} pods: total RSS", (cd + cp) / mib, (kd + kp) / mib, "MiB")
        row(f"{count} pods: total RSS per pod", (cd + cp) / count / mib,
            (kd + kp) / count / mib, "MiB")
    marginal_crisp = (sum(crisp.memory[50][:2]) - sum(crisp.memory[10][:2])) / 40
    marginal_ctrd = (sum(ctrd.memory[50][:2]) - sum(ctrd.memory[10][:2])) / 40
    row("memory per additional pod (50 vs 10 pods)", marginal_crisp / mib, marginal_ctrd / mib,
        "MiB")
    print(f"\ndaemon memory (smaps_rollup, MiB)  {'':>10}", end="")
    kinds = ("Rss", "Pss", "Anonymous", "Private_Dirty")
    print("".join(f"{kind:>14}" for kind in kinds))
    for name, result in (("crisp", crisp), ("containerd", ctrd)):
        for stage, values in result.breakdown.items():
            print(f"{name + ' ' + stage:<45}", end="")
            print("".join(f"{values.get(kind, 0) / mib:>14.1f}" for kind in kinds))
    if crisp.heap:
        print("\ncrisp Python heap by file (tracemalloc, 50 pods just stopped)")
        for filename, kib, blocks in crisp.heap:
            print(f"  {kib:>8} KiB {blocks:>8} blocks  {filename}")
    if crisp.steps:
        seq_median = statistics.median(crisp.seq_start) * 1000
        print(f"\ncrisp pod start by step (mean ms over the sequence; median start "
              f"{seq_median:.1f} ms, containerd {statistics.median(ctrd.seq_start) * 1000:.1f})")
        for name, ms in sorted(crisp.steps.items(), key=lambda item: -item[1]):
            print(f"  {name:<40} {ms:>8.2f}")
        print(f"  {'(sum of steps)':<40} {sum(crisp.steps.values()):>8.2f}")
    start_ok = statistics.median(crisp.seq_start) <= statistics.median(ctrd.seq_start) / 2
    memory_ok = marginal_crisp < marginal_ctrd / 2
    print(f"\ntarget: crisp pod start median at or below 0.5x containerd's: "
          f"{'met' if start_ok else 'NOT met'}")
    print(f"target: crisp memory per pod under half of containerd's: "
          f"{'met' if memory_ok else 'NOT met'}")
    daemon_ok = all(crisp.memory[n][0] <= ctrd.memory[n][0] for n in (10, 50))
    print(f"target: crisp daemon RSS at or below containerd's (10 and 50 pods): "
          f"{'met' if daemon_ok else 'NOT met'}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sequence", type=int, default=30, help="pods run one after another")
    parser.add_argument("--clients", type=int, default=10, help="concurrent clients")
    parser.add_argument("--per-client", type=int, default=3, help="pods per concurrent client")
    parser.add_argument("--only", choices=("crisp", "containerd"), help="measure one runtime")
    parser.add_argument("--tracemalloc", action="store_true",
                        help="trace crisp's Python heap and print its largest holders "
                        "(slows crisp down: not for latency figures)")
    options = parser.parse_args()
    if os.geteuid() != 0:
        sys.exit("run as root: the runtimes mount overlays and create namespaces")
    for binary in ("containerd", "runc", "conmon", "docker-registry"):
        if shutil.which(binary) is None:
            sys.exit(f"{binary} is not installed")
    base = Path(tempfile.mkdtemp(prefix="crisp-bench-"))
    results: dict[str, Results] = {}
    try:
        with running_registry() as registry:
            push_image(registry.url, "bench/busybox", "latest", bench_image())
            push_image(registry.url, "bench/pause", "latest",
                       bench_image(ImageConfig(entrypoint=["/bin/sleep", "2147483647"],
                                               cmd=None)))
            busybox = f"{registry.host}/bench/busybox:latest"
            pause = f"{registry.host}/bench/pause:latest"
            for name, factory in (("crisp", crisp_runtime), ("containerd", containerd_runtime)):
                if options.only and options.only != name:
                    continue
                print(f"measuring {name}...", flush=True)
                if name == "crisp" and options.tracemalloc:
                    os.environ["PYTHONTRACEMALLOC"] = "1"  # read by the daemon at start
                with factory(base / name, registry.host) as runtime:
                    results[name] = measure(runtime, busybox, pause, base / name / "logs",
                                            options)
        if len(results) == 2:
            report(results)
        else:
            for name, result in results.items():
                print(name, "start median ms", statistics.median(result.seq_start) * 1000,
                      "memory", result.memory)
                print("daemon smaps_rollup (MiB):", {
                    stage: {kind: round(value / 2**20, 1) for kind, value in values.items()}
                    for stage, values in result.breakdown.items()})
                if result.steps:
                    print("start steps (mean ms):", {name: round(ms, 2) for name, ms in
                                                     sorted(result.steps.items())})
    finally:
        shutil.rmtree(base, ignore_errors=True)


if __name__ == "__main__":
    main()
