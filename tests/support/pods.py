"""A crisp daemon with busybox images pulled and pod networking configured, for pod tests.

The environment starts a real docker-registry with the test images, a real crisp daemon with
the built-in bridge network in a private CNI conf dir, and pulls the images through CRI. On
exit it removes every pod through CRI, stops the daemon, and then makes sure nothing is left
even if a test failed halfway: conmon processes, runc containers, mounts and the bridge.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from crisp.api import cri_pb2
from tests.support.daemon import CrispDaemon
from tests.support.image_builder import ImageConfig, busybox_image, push_image
from tests.support.registry import running_registry

PAUSE_COMMAND = ["/bin/sleep", "2147483647"]
BRIDGE = "crisp0"


@dataclass
class PodsEnv:
    daemon: CrispDaemon
    busybox: str  # image with cmd ["sh"]
    pause: str
    sleeper: str  # image whose entrypoint sleeps and whose StopSignal is SIGUSR1
    logs: Path
    registry: str  # the test registry's URL, for tests that push images of their own

    @property
    def runtime(self) -> Any:
        return self.daemon.runtime

    def pod_config(self, name: str = "", *, pid: int = cri_pb2.CONTAINER,
                   network: int = cri_pb2.POD, ipc: int = cri_pb2.POD,
                   labels: dict[str, str] | None = None,
                   hostname: str = "", dns: cri_pb2.DNSConfig | None = None,
                   attempt: int = 0) -> cri_pb2.PodSandboxConfig:
        name = name or f"pod-{uuid.uuid4().hex[:8]}"
        config = cri_pb2.PodSandboxConfig(
            metadata=cri_pb2.PodSandboxMetadata(name=name, uid=f"uid-{name}",
                                                namespace="test", attempt=attempt),
            hostname=hostname or name,
            log_directory=str(self.logs / name),
            labels=labels or {},
            annotations={"note": f"annotation of {name}"},
            linux=cri_pb2.LinuxPodSandboxConfig(
                security_context=cri_pb2.LinuxSandboxSecurityContext(
                    namespace_options=cri_pb2.NamespaceOption(network=network, pid=pid,
                                                              ipc=ipc))),
        )
        if dns is not None:
            config.dns_config.CopyFrom(dns)
        return config

    def container_config(self, name: str, command: list[str] | None = None, *,
                         image: str = "", args: list[str] | None = None,
                         pid: int = cri_pb2.CONTAINER, network: int = cri_pb2.POD,
                         ipc: int = cri_pb2.POD, **fields: Any) -> cri_pb2.ContainerConfig:
        config = cri_pb2.ContainerConfig(
            metadata=cri_pb2.ContainerMetadata(name=name),
            image=cri_pb2.ImageSpec(image=image or self.busybox),
            command=command or [],
            args=args or [],
            log_path=f"{name}.log",
            **fields,
        )
        config.linux.security_context.namespace_options.CopyFrom(
            cri_pb2.NamespaceOption(network=network, pid=pid, ipc=ipc))
        return config

    def run_pod(self, config: cri_pb2.PodSandboxConfig | None = None) -> str:
        config = config or self.pod_config()
        return str(self.runtime.RunPodSandbox(
            cri_pb2.RunPodSandboxRequest(config=config)).pod_sandbox_id)

    def run_container(self, pod_id: str, config: cri_pb2.ContainerConfig,
                      sandbox_config: cri_pb2.PodSandboxConfig | None = None) -> str:
        container_id = str(self.runtime.CreateContainer(cri_pb2.CreateContainerRequest(
            pod_sandbox_id=pod_id, config=config,
            sandbox_config=sandbox_config or cri_pb2.PodSandboxConfig(),
        )).container_id)
        self.runtime.StartContainer(cri_pb2.StartContainerRequest(container_id=container_id))
        return container_id

    def status(self, container_id: str, verbose: bool = False) -> Any:
        return self.runtime.ContainerStatus(cri_pb2.ContainerStatusRequest(
            container_id=container_id, verbose=verbose))

    def wait_exited(self, container_id: str, timeout: float = 20.0) -> Any:
        return wait_for(lambda: _exited(self.status(container_id).status), timeout,
                        f"container {container_id} to exit")

    def remove_pod(self, pod_id: str) -> None:
        self.runtime.StopPodSandbox(cri_pb2.StopPodSandboxRequest(pod_sandbox_id=pod_id))
        self.runtime.RemovePodSandbox(cri_pb2.RemovePodSandboxRequest(pod_sandbox_id=pod_id))

    def remove_all_pods(self) -> None:
        for pod in self.runtime.ListPodSandbox(cri_pb2.ListPodSandboxRequest()).items:
            self.remove_pod(pod.id)


def _exited(status: Any) -> Any:
    return status if status.state == cri_pb2.CONTAINER_EXITED else None


def wait_for(probe: Callable[[], Any], timeout: float, what: str) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = probe()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(0.05)


def daemon_config(base: Path, registry_host: str, extra: str = "",
                  infra_container: bool = False) -> str:
    return (
        f'[pod]\npause_image = "{registry_host}/test/pause:latest"\nstop_timeout = 2.0\n'
        f"infra_container = {str(infra_container).lower()}\n"
        f'[cni]\nconf_dir = "{base / "net.d"}"\nwrite_default_config = true\n'
        f"{extra}"
    )


@contextlib.contextmanager
def pods_environment(base: Path, extra_config: str = "",
                     infra_container: bool = False, root: Path | None = None,
                     ) -> Iterator[PodsEnv]:
    """A registry with the test images and a crisp daemon that has pulled them.

    ``root`` puts the daemon's root_dir somewhere else than under ``base`` (a small
    filesystem, say); the caller then checks for mounts left under it.
    """
    bridge_existed = _link_exists(BRIDGE)
    with running_registry() as registry:
        push_image(registry.url, "test/busybox", "latest", busybox_image())
        push_image(registry.url, "test/pause", "latest",
                   busybox_image(ImageConfig(entrypoint=PAUSE_COMMAND, cmd=None)))
        push_image(registry.url, "test/sleeper", "latest",
                   busybox_image(ImageConfig(entrypoint=["sleep"], cmd=["3600"],
                                             stop_signal="SIGUSR1")))
        (base / "net.d").mkdir(parents=True, exist_ok=True)
        daemon = CrispDaemon(base, daemon_config(base, registry.host, extra_config,
                                                 infra_container), root=root)
        env = PodsEnv(daemon=daemon, busybox=f"{registry.host}/test/busybox:latest",
                      pause=f"{registry.host}/test/pause:latest",
                      sleeper=f"{registry.host}/test/sleeper:latest", logs=base / "logs",
                      registry=registry.url)
        try:
            daemon.start()
            for image in (env.busybox, env.pause, env.sleeper):
                daemon.images.PullImage(cri_pb2.PullImageRequest(
                    image=cri_pb2.ImageSpec(image=image)))
            yield env
        finally:
            try:
                if daemon.process is not None and daemon.process.poll() is None:
                    env.remove_all_pods()
            finally:
                daemon.stop()
                leftovers = clean_leftovers(base)
                if not bridge_existed:
                    subprocess.run(["ip", "link", "del", BRIDGE], capture_output=True)
            assert not leftovers, f"the tests left these behind: {leftovers}"


def clean_leftovers(base: Path) -> list[str]:
    """Kill and unmount whatever under ``base`` is still alive; return what there was."""
    found: list[str] = []
    marker = str(base)
    for pid in _pids():
        try:
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
        except OSError:
            continue
        if marker in cmdline and "conmon" in cmdline.split(" ", 1)[0]:
            found.append(f"conmon {pid}")
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
    runtime_root = base / "run" / "runtimes" / "runc"
    if runtime_root.exists():
        listed = subprocess.run(["runc", "--root", str(runtime_root), "list", "-q"],
                                capture_output=True, text=True).stdout.split()
        for container_id in listed:
            found.append(f"runc container {container_id}")
            subprocess.run(["runc", "--root", str(runtime_root), "delete", "--force",
                            container_id], capture_output=True)
    for point in sorted(_mounts_under(marker), reverse=True):
        found.append(f"mount {point}")
        subprocess.run(["umount", "-l", point], capture_output=True)
    return found


def mounts_under(path: Path) -> list[str]:
    return _mounts_under(str(path))


def _mounts_under(marker: str) -> list[str]:
    points = []
    with open("/proc/self/mountinfo") as mountinfo:
        for line in mountinfo:
            point = line.split(" ")[4]
            if point.startswith(marker + "/"):
                points.append(point)
    return points


def _pids() -> list[int]:
    return [int(name) for name in os.listdir("/proc") if name.isdigit()]


def _link_exists(name: str) -> bool:
    return subprocess.run(["ip", "link", "show", name], capture_output=True).returncode == 0


def conmon_pids(base: Path) -> list[int]:
    pids = []
    for pid in _pids():
        try:
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if cmdline and cmdline[0].endswith(b"conmon") and str(base).encode() in b" ".join(cmdline):
            pids.append(pid)
    return pids


def known_ids(env: PodsEnv) -> tuple[set[str], set[str], set[str]]:
    """(pod ids, container ids, ids of containers that should have a live conmon)."""
    pods = {p.id for p in env.runtime.ListPodSandbox(cri_pb2.ListPodSandboxRequest()).items}
    containers = env.runtime.ListContainers(cri_pb2.ListContainersRequest()).containers
    live = {c.id for c in containers
            if c.state in (cri_pb2.CONTAINER_CREATED, cri_pb2.CONTAINER_RUNNING)}
    for pod_id in pods:
        info = json.loads(env.runtime.PodSandboxStatus(cri_pb2.PodSandboxStatusRequest(
            pod_sandbox_id=pod_id, verbose=True)).info["info"])
        if info["infraContainerID"] and info["pid"]:
            live.add(info["infraContainerID"])
    return pods, {c.id for c in containers}, live


def assert_no_leaks(env: PodsEnv) -> None:
    """Everything of crisp's in the world belongs to an object CRI lists: conmon processes,
    runc containers, mounts (rootfs, shm, namespace pins), state dirs and pod IPs."""
    base = env.daemon.base
    pods, containers, live = known_ids(env)
    everything = pods | containers | live
    monitored = set()
    for pid in conmon_pids(base):
        args = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
        monitored.add(args[args.index(b"--cid") + 1].decode())
    assert monitored == live
    runtime_root = base / "run" / "runtimes" / "runc"
    runc_ids = {p.name for p in runtime_root.iterdir()} if runtime_root.exists() else set()
    assert runc_ids <= everything
    for point in mounts_under(base):
        assert any(i in point for i in everything), f"stray mount {point}"
    for directory in (base / "run" / "containers", base / "root" / "containers",
                      base / "root" / "userns"):
        if directory.exists():
            # (an image volume's snapshot is "<container id>.vol<n>")
            assert {p.name.split(".vol")[0] for p in directory.iterdir()} <= everything, \
                directory
    for directory in (base / "run" / "pods", base / "root" / "pods"):
        if directory.exists():
            assert {p.name for p in directory.iterdir()} <= pods, directory
    ipam = base / "root" / "network" / "ipam"
    for lease in ipam.glob("*/*") if ipam.exists() else []:
        if lease.name[0].isdigit() or ":" in lease.name:  # an address, not lock or last_reserved
            owner = lease.read_text().split()[0]
            assert owner in pods, f"address {lease.name} is held by {owner}, not a listed pod"


def processes(matches: Callable[[list[bytes]], bool]) -> list[int]:
    """Pids of the processes whose command line (split at NULs) ``matches``."""
    found = []
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        try:
            cmdline = Path(f"/proc/{name}/cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if matches(cmdline):
            found.append(int(name))
    return found


def children(parent: int, matches: Callable[[list[bytes]], bool]) -> list[int]:
    """Pids of ``parent``'s child processes whose command line ``matches``."""
    found = []
    for pid in processes(matches):
        try:
            stat = Path(f"/proc/{pid}/stat").read_text()
        except OSError:
            continue
        if int(stat.rsplit(")", 1)[1].split()[1]) == parent:
            found.append(pid)
    return found


def sleepers(marker: str) -> list[int]:
    """Pids of ``sleep MARKER`` processes (a test's exec'd command)."""
    return processes(lambda cmdline: cmdline[:2] == [b"sleep", marker.encode()])
