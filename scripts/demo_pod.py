#!/usr/bin/env python3
"""Run crisp's demo pod: a busybox web server, made from this machine's busybox-static.

Needs no registry: the image is imported from a directory with `crispctl images import
--rootfs`. It talks CRI to the daemon like the kubelet would, fetches the page from the
pod's IP, and leaves the pod running (`--remove` removes it). Run again, it replaces the
pod: the old one and its log directory go first, the image is imported again under its name.
"""

from __future__ import annotations

import argparse
import os
import shutil
import struct
import subprocess
import sys
import tempfile
import time
import urllib.request
import uuid
from pathlib import Path
from typing import Any

import grpc

from crisp.api import cri_pb2, cri_pb2_grpc
from crisp.cli.endpoint import resolve_endpoint

IMAGE = "localhost/crisp-demo/busybox:1"
POD_NAME = "crisp-demo"
POD_NAMESPACE = "default"
PAGE = "<h1>Hello from a crisp pod</h1>\n"
LOG_ROOT = Path("/var/log/pods")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("-r", "--runtime-endpoint", help="CRI socket (as crispctl finds it)")
    parser.add_argument("--remove", action="store_true", help="remove the demo pod and stop")
    args = parser.parse_args()
    endpoint = resolve_endpoint(args.runtime_endpoint)
    with grpc.insecure_channel(endpoint) as channel:
        runtime = cri_pb2_grpc.RuntimeServiceStub(channel)
        remove_demo_pods(runtime, endpoint)
        if args.remove:
            remove_demo_image(channel)
            print("demo pod and image removed")
            return 0
        remove_demo_image(channel)
        import_image(endpoint)
        pod_id, container_id, log_path = run_demo_pod(runtime, endpoint)
        ip = runtime.PodSandboxStatus(
            cri_pb2.PodSandboxStatusRequest(pod_sandbox_id=pod_id)
        ).status.network.ip
        print(f"pod {POD_NAME} ({pod_id[:13]}) is ready with IP {ip}")
        print(f"container web ({container_id[:13]}) serves http://{ip}/ ; it answered:")
        print("  " + fetch(f"http://{ip}/").strip())
        print(f"its log, as the kubelet reads it ({log_path}):")
        print("  " + Path(log_path).read_text().strip().replace("\n", "\n  "))
        print(f"remove it with: {sys.argv[0]} --remove")
    return 0


def import_image(endpoint: str) -> None:
    """Import busybox-static as a one-layer image (again under the same name on a rerun)."""
    with tempfile.TemporaryDirectory(prefix="crisp-demo-") as directory:
        rootfs = Path(directory)
        busybox = static_busybox()
        (rootfs / "bin").mkdir()
        shutil.copy(busybox, rootfs / "bin" / "busybox")
        applets = subprocess.run(
            [busybox, "--list"], capture_output=True, text=True, check=True
        ).stdout.split()
        for applet in applets:
            if applet != "busybox":
                os.link(rootfs / "bin" / "busybox", rootfs / "bin" / applet)
        (rootfs / "etc").mkdir()
        (rootfs / "etc" / "passwd").write_text("root:x:0:0:root:/root:/bin/sh\n")
        (rootfs / "etc" / "group").write_text("root:x:0:\n")
        (rootfs / "www").mkdir()
        (rootfs / "www" / "index.html").write_text(PAGE)
        subprocess.run(
            ["crispctl", "-r", endpoint, "images", "import", "--rootfs", str(rootfs), IMAGE],
            check=True,
        )


def static_busybox() -> str:
    """The machine's busybox, which must be statically linked: the image has no libraries."""
    busybox = shutil.which("busybox") or "/bin/busybox"
    if not Path(busybox).is_file():
        raise SystemExit("demo_pod: no busybox found; install busybox-static "
                         "(./scripts/install-deps does)")
    if has_interpreter(Path(busybox)):
        raise SystemExit(f"demo_pod: {busybox} is dynamically linked; install busybox-static "
                         "(./scripts/install-deps does)")
    return busybox


def has_interpreter(path: Path) -> bool:
    """Whether an ELF file names a dynamic loader (a PT_INTERP program header)."""
    with path.open("rb") as file:
        header = file.read(64)
        if header[:4] != b"\x7fELF":
            return True  # not an executable the image could run on its own
        order = "<" if header[5] == 1 else ">"
        if header[4] == 2:  # 64-bit
            phoff, = struct.unpack_from(order + "Q", header, 32)
            phentsize, phnum = struct.unpack_from(order + "HH", header, 54)
        else:
            phoff, = struct.unpack_from(order + "I", header, 28)
            phentsize, phnum = struct.unpack_from(order + "HH", header, 42)
        file.seek(phoff)
        table = file.read(phentsize * phnum)
    return any(struct.unpack_from(order + "I", table, i * phentsize)[0] == 3  # PT_INTERP
               for i in range(phnum))


def pod_uid(endpoint: str) -> str:
    """One uid per daemon, as the kubelet keeps a pod's: a rerun reuses its log directory."""
    return str(uuid.uuid5(uuid.NAMESPACE_URL, f"crisp-demo:{endpoint}"))


def log_directory(endpoint: str) -> Path:
    return LOG_ROOT / f"{POD_NAMESPACE}_{POD_NAME}_{pod_uid(endpoint)}"


def run_demo_pod(runtime: Any, endpoint: str) -> tuple[str, str, str]:
    uid = pod_uid(endpoint)
    logs = str(log_directory(endpoint))
    pod_config = cri_pb2.PodSandboxConfig(
        metadata=cri_pb2.PodSandboxMetadata(name=POD_NAME, namespace=POD_NAMESPACE, uid=uid),
        hostname=POD_NAME,
        log_directory=logs,
        labels={"app": "crisp-demo"},
        # As the kubelet sends it for a pod without shareProcessNamespace: no pause needed.
        linux=cri_pb2.LinuxPodSandboxConfig(
            security_context=cri_pb2.LinuxSandboxSecurityContext(
                namespace_options=cri_pb2.NamespaceOption(pid=cri_pb2.CONTAINER)
            )
        ),
    )
    pod_id = runtime.RunPodSandbox(cri_pb2.RunPodSandboxRequest(config=pod_config)).pod_sandbox_id
    container_config = cri_pb2.ContainerConfig(
        metadata=cri_pb2.ContainerMetadata(name="web"),
        image=cri_pb2.ImageSpec(image=IMAGE),
        command=["sh", "-c", "echo serving /www on port 80; exec httpd -f -v -p 80 -h /www"],
        log_path="web/0.log",
    )
    container_id = runtime.CreateContainer(
        cri_pb2.CreateContainerRequest(
            pod_sandbox_id=pod_id, config=container_config, sandbox_config=pod_config
        )
    ).container_id
    runtime.StartContainer(cri_pb2.StartContainerRequest(container_id=container_id))
    return pod_id, container_id, f"{logs}/web/0.log"


def remove_demo_image(channel: grpc.Channel) -> None:
    """Remove the previous run's image: a new import is a new image (its config is dated),
    and the old one would stay behind without a name."""
    images = cri_pb2_grpc.ImageServiceStub(channel)
    try:
        images.RemoveImage(cri_pb2.RemoveImageRequest(image=cri_pb2.ImageSpec(image=IMAGE)))
    except grpc.RpcError as error:
        if error.code() != grpc.StatusCode.NOT_FOUND:
            raise


def remove_demo_pods(runtime: Any, endpoint: str) -> None:
    """Remove every demo pod of this daemon and its logs, as the kubelet would."""
    selector = cri_pb2.PodSandboxFilter(label_selector={"app": "crisp-demo"})
    for pod in runtime.ListPodSandbox(cri_pb2.ListPodSandboxRequest(filter=selector)).items:
        runtime.StopPodSandbox(cri_pb2.StopPodSandboxRequest(pod_sandbox_id=pod.id))
        runtime.RemovePodSandbox(cri_pb2.RemovePodSandboxRequest(pod_sandbox_id=pod.id))
    shutil.rmtree(log_directory(endpoint), ignore_errors=True)


def fetch(url: str, attempts: int = 50) -> str:
    """The page at ``url``, retried while the server in the fresh container starts."""
    direct = urllib.request.build_opener(urllib.request.ProxyHandler({}))  # pods are local
    for attempt in range(attempts):
        try:
            with direct.open(url, timeout=2) as response:
                return str(response.read().decode())
        except OSError:
            if attempt == attempts - 1:
                raise
            time.sleep(0.1)
    raise AssertionError("unreachable")


if __name__ == "__main__":
    raise SystemExit(main())
