"""Pod networking end to end: a real crisp daemon, real pods and containers, real CNI plugins.

Each test's daemon gets its own conf dir with a bridge network of its own (random bridge
name and subnet, leases in the test's directory), so nothing touches /etc/cni or the host's
networks; traffic stays on loopback and that bridge.
"""

from __future__ import annotations

import http.server
import ipaddress
import json
import os
import secrets
import socket
import subprocess
import threading
import time
import urllib.request
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import pytest

from crisp.api import cri_pb2
from crisp.network import masquerade
from tests.integration.conftest import DaemonFactory
from tests.support.daemon import CrispDaemon
from tests.support.registry import BusyboxRegistry, busybox_registry, free_port

PLUGIN_DIR = "/usr/lib/cni"

pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(
        os.geteuid() != 0 or not Path(PLUGIN_DIR, "bridge").exists(),
        reason="needs root and containernetworking-plugins in /usr/lib/cni",
    ),
]

HTTPD = ("mkdir -p /www && echo hello from $(hostname) > /www/index.html && "
         "exec httpd -f -p 80 -h /www")


@pytest.fixture(scope="module")
def busybox() -> Iterator[BusyboxRegistry]:
    with busybox_registry() as served:
        yield served


@dataclass
class Net:
    """The network a test daemon uses: conf dir, bridge, subnet and host-local's leases."""

    base: Path
    tag: str
    subnet: ipaddress.IPv4Network

    @property
    def conf_dir(self) -> Path:
        return self.base / "net.d"

    @property
    def bin_dir(self) -> Path:
        return self.base / "cni-bin"

    @property
    def bridge(self) -> str:
        return f"crp{self.tag}"

    @property
    def gateway(self) -> str:
        return str(self.subnet.network_address + 1)

    def write(self, plugins: list[dict[str, Any]] | None = None,
              file: str = "10-pods.conflist") -> None:
        if plugins is None:
            plugins = [{"type": "loopback"}, self.bridge_plugin(),
                       {"type": "portmap", "capabilities": {"portMappings": True}}]
        self.conf_dir.mkdir(parents=True, exist_ok=True)
        (self.conf_dir / file).write_text(json.dumps(
            {"cniVersion": "1.0.0", "name": "pods", "plugins": plugins}))

    def bridge_plugin(self) -> dict[str, Any]:
        return {"type": "bridge", "bridge": self.bridge, "isGateway": True, "hairpinMode": True,
                "ipam": {"type": "host-local", "ranges": [[{"subnet": str(self.subnet)}]],
                         "routes": [{"dst": "0.0.0.0/0"}],
                         "dataDir": str(self.base / "leases")}}

    def toml(self) -> str:
        return (f'[cni]\nconf_dir = "{self.conf_dir}"\n'
                f'bin_dirs = ["{self.bin_dir}", "{PLUGIN_DIR}"]\n')

    def leases(self) -> list[str]:
        directory = self.base / "leases" / "pods"
        if not directory.exists():
            return []
        return sorted(p.name for p in directory.iterdir() if p.name[0].isdigit())

    def bridge_ports(self) -> list[str]:
        out = _ip("-o", "link", "show", "master", self.bridge)
        return [line.split(":")[1].strip().split("@")[0] for line in out.splitlines() if line]


def _ip(*args: str) -> str:
    done = subprocess.run(["ip", *args], capture_output=True, text=True)
    return done.stdout if done.returncode == 0 else ""


@pytest.fixture
def net(tmp_path: Path) -> Iterator[Net]:
    world = Net(tmp_path / "net", secrets.token_hex(3),
                ipaddress.ip_network(f"10.214.{secrets.randbelow(200) + 20}.0/24"))
    world.bin_dir.mkdir(parents=True)
    try:
        yield world
    finally:
        if _ip("link", "show", "dev", world.bridge):
            _ip("link", "del", world.bridge)


@pytest.fixture
def daemon(make_daemon: DaemonFactory, net: Net) -> CrispDaemon:
    net.write()
    return make_daemon(net.toml())


def pod_config(name: str, *, host_port: int = 0, host_network: bool = False,
               ) -> cri_pb2.PodSandboxConfig:
    config = cri_pb2.PodSandboxConfig(
        metadata=cri_pb2.PodSandboxMetadata(name=name, namespace="net-test", uid=f"uid-{name}"),
        linux=cri_pb2.LinuxPodSandboxConfig(security_context=cri_pb2.LinuxSandboxSecurityContext(
            namespace_options=cri_pb2.NamespaceOption(
                pid=cri_pb2.CONTAINER,
                network=cri_pb2.NODE if host_network else cri_pb2.POD,
            ))),
    )
    if host_port:
        config.port_mappings.append(cri_pb2.PortMapping(
            protocol=cri_pb2.TCP, container_port=80, host_port=host_port, host_ip="127.0.0.1"))
    return config


def run_pod(daemon: CrispDaemon, config: cri_pb2.PodSandboxConfig) -> str:
    response = daemon.runtime.RunPodSandbox(cri_pb2.RunPodSandboxRequest(config=config),
                                            timeout=60)
    pod_id: str = response.pod_sandbox_id
    return pod_id


def pod_ips(daemon: CrispDaemon, pod_id: str) -> list[str]:
    status = daemon.runtime.PodSandboxStatus(
        cri_pb2.PodSandboxStatusRequest(pod_sandbox_id=pod_id), timeout=10).status
    return [ip for ip in [status.network.ip, *(p.ip for p in status.network.additional_ips)]
            if ip]


def remove_pod(daemon: CrispDaemon, pod_id: str) -> None:
    """Kill the pod's containers at once (busybox as PID 1 ignores SIGTERM), then remove it."""
    containers = daemon.runtime.ListContainers(cri_pb2.ListContainersRequest(
        filter=cri_pb2.ContainerFilter(pod_sandbox_id=pod_id)), timeout=10).containers
    for container in containers:
        daemon.runtime.StopContainer(cri_pb2.StopContainerRequest(
            container_id=container.id, timeout=0), timeout=30)
    daemon.runtime.StopPodSandbox(cri_pb2.StopPodSandboxRequest(pod_sandbox_id=pod_id),
                                  timeout=60)
    daemon.runtime.RemovePodSandbox(cri_pb2.RemovePodSandboxRequest(pod_sandbox_id=pod_id),
                                    timeout=60)


def start_container(daemon: CrispDaemon, busybox: BusyboxRegistry, pod_id: str,
                    config: cri_pb2.PodSandboxConfig, script: str) -> str:
    created = daemon.runtime.CreateContainer(cri_pb2.CreateContainerRequest(
        pod_sandbox_id=pod_id, sandbox_config=config,
        config=cri_pb2.ContainerConfig(
            metadata=cri_pb2.ContainerMetadata(name="web"),
            image=cri_pb2.ImageSpec(image=busybox.reference),
            command=["sh", "-c", script],
        )), timeout=60)
    container_id: str = created.container_id
    daemon.runtime.StartContainer(cri_pb2.StartContainerRequest(container_id=container_id),
                                  timeout=60)
    return container_id


def exec_in(daemon: CrispDaemon, container_id: str, *argv: str) -> tuple[int, str]:
    response = daemon.runtime.ExecSync(cri_pb2.ExecSyncRequest(
        container_id=container_id, cmd=list(argv), timeout=20), timeout=30)
    return response.exit_code, (response.stdout + response.stderr).decode(errors="replace")


def eventually(check: Callable[[], bool], what: str, attempts: int = 100) -> None:
    for _ in range(attempts):
        if check():
            return
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")


def pinned_namespaces(daemon: CrispDaemon) -> list[str]:
    with open("/proc/self/mountinfo") as mounts:
        return [line.split()[4] for line in mounts
                if f"{daemon.run_dir}/" in line.split()[4] and " nsfs " in line]


def pull(daemon: CrispDaemon, busybox: BusyboxRegistry) -> None:
    daemon.images.PullImage(cri_pb2.PullImageRequest(
        image=cri_pb2.ImageSpec(image=busybox.reference)), timeout=120)


class _Hello(http.server.BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        body = b"hello from the host\n"
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: Any) -> None:
        pass


def test_pods_reach_each_other_the_host_and_a_host_port(
    daemon: CrispDaemon, net: Net, busybox: BusyboxRegistry
) -> None:
    pull(daemon, busybox)
    host_port = free_port()
    server_config = pod_config("server", host_port=host_port)
    client_config = pod_config("client")
    server_pod = run_pod(daemon, server_config)
    client_pod = run_pod(daemon, client_config)
    try:
        (server_ip,) = pod_ips(daemon, server_pod)
        (client_ip,) = pod_ips(daemon, client_pod)
        assert server_ip != client_ip
        assert {ipaddress.ip_address(server_ip), ipaddress.ip_address(client_ip)} <= set(
            net.subnet.hosts())
        assert sorted(net.leases()) == sorted([server_ip, client_ip])

        start_container(daemon, busybox, server_pod, server_config, HTTPD)
        client = start_container(daemon, busybox, client_pod, client_config, "exec sleep 300")

        def served() -> bool:
            return exec_in(daemon, client, "wget", "-q", "-O", "-",
                           f"http://{server_ip}/index.html")[0] == 0

        eventually(served, "the server pod's httpd")  # pod to pod, by pod IP
        assert exec_in(daemon, client, "wget", "-q", "-O", "-",
                       f"http://{server_ip}/index.html")[1] == "hello from server\n"

        # A hostPort on 127.0.0.1 reaches the httpd in the server pod.
        with urllib.request.urlopen(f"http://127.0.0.1:{host_port}/index.html",
                                    timeout=5) as answer:
            assert answer.read() == b"hello from server\n"

        # The client pod reaches a server on the host through the bridge.
        host_server = http.server.ThreadingHTTPServer((net.gateway, 0), _Hello)
        threading.Thread(target=host_server.serve_forever, daemon=True).start()
        try:
            code, body = exec_in(daemon, client, "wget", "-q", "-O", "-",
                                 f"http://{net.gateway}:{host_server.server_port}/")
            assert (code, body) == (0, "hello from the host\n")
        finally:
            host_server.shutdown()
            host_server.server_close()
    finally:
        remove_pod(daemon, server_pod)
        remove_pod(daemon, client_pod)
    assert net.leases() == []
    assert net.bridge_ports() == []
    assert pinned_namespaces(daemon) == []
    with pytest.raises(OSError), socket.create_connection(("127.0.0.1", host_port), timeout=1):
        pass


def test_stop_after_a_crisp_restart_removes_the_veth_and_frees_the_ip(
    daemon: CrispDaemon, net: Net
) -> None:
    pod = run_pod(daemon, pod_config("survivor"))
    (ip,) = pod_ips(daemon, pod)
    (veth,) = net.bridge_ports()
    daemon.kill()  # a crash: nothing is cleaned up on the way out
    # The administrator changes the network config while crisp is down.
    (net.conf_dir / "10-pods.conflist").unlink()
    net.write([{"type": "loopback"}], file="20-other.conflist")
    daemon.start()

    assert pod_ips(daemon, pod) == [ip]
    daemon.runtime.StopPodSandbox(cri_pb2.StopPodSandboxRequest(pod_sandbox_id=pod), timeout=60)

    assert net.leases() == []
    assert not _ip("link", "show", "dev", veth)
    daemon.runtime.RemovePodSandbox(cri_pb2.RemovePodSandboxRequest(pod_sandbox_id=pod),
                                    timeout=60)
    assert pinned_namespaces(daemon) == []


BROKEN_PLUGIN = """#!/bin/sh
cat >/dev/null
case "$CNI_COMMAND" in
VERSION) echo '{"cniVersion":"1.0.0","supportedVersions":["1.0.0"]}' ;;
ADD) echo "firewall backend exploded" >&2
     echo '{"cniVersion":"1.0.0","code":101,"msg":"cannot add rules","details":"table full"}'
     exit 1 ;;
esac
"""


def test_a_broken_plugin_fails_run_pod_sandbox_and_leaves_nothing(
    make_daemon: DaemonFactory, net: Net
) -> None:
    (net.bin_dir / "crisp-test-broken").write_text(BROKEN_PLUGIN)
    (net.bin_dir / "crisp-test-broken").chmod(0o755)
    net.write([{"type": "loopback"}, net.bridge_plugin(), {"type": "crisp-test-broken"}])
    daemon = make_daemon(net.toml())

    with pytest.raises(grpc.RpcError) as failure:
        run_pod(daemon, pod_config("doomed"))

    assert failure.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    details = failure.value.details()
    assert "crisp-test-broken" in details
    assert "cannot add rules: table full" in details
    assert "firewall backend exploded" in details
    assert net.leases() == []
    assert net.bridge_ports() == []
    assert pinned_namespaces(daemon) == []
    listed = daemon.runtime.ListPodSandbox(cri_pb2.ListPodSandboxRequest(), timeout=10)
    assert list(listed.items) == []


def network_condition(daemon: CrispDaemon) -> Any:
    status = daemon.runtime.Status(cri_pb2.StatusRequest(), timeout=10).status
    (condition,) = [c for c in status.conditions if c.type == "NetworkReady"]
    return condition


def test_a_broken_conflist_is_reported_until_a_valid_one_appears(
    make_daemon: DaemonFactory, net: Net
) -> None:
    net.conf_dir.mkdir(parents=True)
    (net.conf_dir / "10-pods.conflist").write_text('{"cniVersion": "1.0.0", "name": "pods"')
    daemon = make_daemon(net.toml())

    condition = network_condition(daemon)
    assert not condition.status
    assert condition.reason == "NetworkPluginNotReady"
    assert "10-pods.conflist is not valid JSON" in condition.message
    with pytest.raises(grpc.RpcError) as failure:
        run_pod(daemon, pod_config("early"))
    assert failure.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert "10-pods.conflist is not valid JSON" in failure.value.details()
    assert pinned_namespaces(daemon) == []

    net.write()  # fixed: no restart needed
    assert network_condition(daemon).status
    pod = run_pod(daemon, pod_config("late"))
    assert len(pod_ips(daemon, pod)) == 1
    remove_pod(daemon, pod)
    assert net.leases() == []


def test_host_network_pods_skip_cni(daemon: CrispDaemon, net: Net) -> None:
    pod = run_pod(daemon, pod_config("hostnet", host_network=True))
    try:
        assert pod_ips(daemon, pod) == []
        assert net.leases() == []
    finally:
        remove_pod(daemon, pod)


@pytest.fixture
def default_network(net: Net) -> Iterator[str]:
    """The toml that has a daemon write crisp's default network (bridge crisp0) for net's
    subnet; afterwards crisp0 and the subnet's masquerade are removed again."""
    if _ip("link", "show", "dev", "crisp0"):
        pytest.skip("bridge crisp0 belongs to a crisp running on this machine")
    try:
        yield net.toml() + f'write_default_config = true\ndefault_subnet = "{net.subnet}"\n'
    finally:
        if f"inet {net.gateway}/" in _ip("-o", "addr", "show", "dev", "crisp0"):  # ours
            _ip("link", "del", "crisp0")
        _, jump = masquerade.rules(str(net.subnet))
        subprocess.run(["iptables", "-w", "-t", "nat", "-D", *jump], capture_output=True)
        for flag in ("-F", "-X"):
            subprocess.run(["iptables", "-w", "-t", "nat", flag,
                            masquerade.chain_name(str(net.subnet))], capture_output=True)


def test_default_network_is_written_for_a_fresh_machine(
    make_daemon: DaemonFactory, net: Net, default_network: str
) -> None:
    daemon = make_daemon(default_network)
    assert network_condition(daemon).status
    assert (net.conf_dir / "99-crisp-default.conflist").exists()
    pod = run_pod(daemon, pod_config("fresh"))
    (ip,) = pod_ips(daemon, pod)
    assert ipaddress.ip_address(ip) in net.subnet
    # loopback ran (beside the bridge): lo is up in the pod.
    netns = daemon.run_dir / "pods" / pod / "ns" / "net"
    lo = subprocess.run(["nsenter", f"--net={netns}", "ip", "-o", "link", "show", "lo"],
                        capture_output=True, text=True, check=True).stdout
    assert "LOOPBACK,UP" in lo
    # One masquerade for the subnet, put in place by crisp; no chain of the pod's own.
    chain = masquerade.chain_name(str(net.subnet))
    assert f"-A POSTROUTING -s {net.subnet} " in _nat("-S", "POSTROUTING")
    assert _nat("-S", chain).splitlines()[1:] == [
        f"-A {chain} -d {net.subnet} -j ACCEPT", f"-A {chain} -d 224.0.0.0/4 -j ACCEPT",
        f"-A {chain} -j MASQUERADE"]
    assert pod not in _nat("-S")
    remove_pod(daemon, pod)


def test_a_failing_loopback_beside_the_bridge_leaves_nothing(
    make_daemon: DaemonFactory, net: Net, default_network: str
) -> None:
    """In the default network loopback runs beside the bridge: when it fails after the
    bridge succeeded, the bridge's veth and address are given back all the same."""
    (net.bin_dir / "loopback").write_text(BROKEN_PLUGIN.replace("ADD)", "ADD) sleep 0.5\n"))
    (net.bin_dir / "loopback").chmod(0o755)
    daemon = make_daemon(default_network)
    with pytest.raises(grpc.RpcError) as failure:
        run_pod(daemon, pod_config("doomed"))
    assert failure.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert "loopback" in failure.value.details()
    assert "cannot add rules: table full" in failure.value.details()
    leases = daemon.root / "network" / "ipam" / "crisp"
    assert [p.name for p in leases.iterdir() if p.name[0].isdigit()] == []
    assert _ip("-o", "link", "show", "master", "crisp0") == ""
    assert pinned_namespaces(daemon) == []


def _nat(*args: str) -> str:
    return subprocess.run(["iptables", "-w", "-t", "nat", *args], capture_output=True,
                          text=True).stdout


def test_fifty_pods_concurrently_leak_no_ips_veths_or_namespaces(
    daemon: CrispDaemon, net: Net
) -> None:
    configs = [pod_config(f"many-{index}") for index in range(50)]
    with ThreadPoolExecutor(max_workers=50) as pool:
        pods = list(pool.map(lambda config: run_pod(daemon, config), configs))
        ips = [ip for pod in pods for ip in pod_ips(daemon, pod)]
        assert len(set(ips)) == 50
        assert len(net.leases()) == 50
        assert len(net.bridge_ports()) == 50
        list(pool.map(lambda pod: remove_pod(daemon, pod), pods))
    assert net.leases() == []
    assert net.bridge_ports() == []
    assert pinned_namespaces(daemon) == []
    assert list(daemon.runtime.ListPodSandbox(cri_pb2.ListPodSandboxRequest(),
                                              timeout=10).items) == []


def test_dual_stack_pods_report_ipv4_then_ipv6(make_daemon: DaemonFactory, net: Net) -> None:
    bridge = net.bridge_plugin()
    subnet6 = f"fd00:214:{net.subnet.network_address.packed[2]:x}::/64"
    bridge["ipam"]["ranges"].append([{"subnet": subnet6}])
    net.write([{"type": "loopback"}, bridge])
    daemon = make_daemon(net.toml())
    pod = run_pod(daemon, pod_config("dual"))
    try:
        ipv4, ipv6 = pod_ips(daemon, pod)
        assert ipaddress.ip_address(ipv4) in net.subnet
        assert ipaddress.ip_address(ipv6) in ipaddress.ip_network(subnet6)
    finally:
        remove_pod(daemon, pod)
    assert net.leases() == []


def test_pod_cidr_from_the_kubelet_fills_a_templated_config(
    make_daemon: DaemonFactory, net: Net
) -> None:
    bridge = net.bridge_plugin()
    bridge["ipam"]["ranges"] = [[{"subnet": "{{.PodCIDR}}"}]]
    net.write([bridge])
    daemon = make_daemon(net.toml())
    condition = network_condition(daemon)
    assert not condition.status and "UpdateRuntimeConfig" in condition.message

    daemon.runtime.UpdateRuntimeConfig(cri_pb2.UpdateRuntimeConfigRequest(
        runtime_config=cri_pb2.RuntimeConfig(
            network_config=cri_pb2.NetworkConfig(pod_cidr=str(net.subnet)))), timeout=10)
    assert network_condition(daemon).status

    daemon.restart()  # the pod CIDR is recorded, not just remembered
    assert network_condition(daemon).status
    pod = run_pod(daemon, pod_config("templated"))
    try:
        (ip,) = pod_ips(daemon, pod)
        assert ipaddress.ip_address(ip) in net.subnet
    finally:
        remove_pod(daemon, pod)


HANGING_PLUGIN = """#!/bin/sh
cat >/dev/null
case "$CNI_COMMAND" in
VERSION) echo '{"cniVersion":"1.0.0","supportedVersions":["1.0.0"]}' ;;
ADD) echo $$ > "$(dirname "$0")/hanging.pid"; exec sleep 120 ;;
esac
"""


def test_a_pod_half_set_up_when_crisp_died_is_cleaned_up_on_restart(
    make_daemon: DaemonFactory, net: Net
) -> None:
    plugin = net.bin_dir / "crisp-test-hang"
    plugin.write_text(HANGING_PLUGIN)
    plugin.chmod(0o755)
    net.write([{"type": "loopback"}, net.bridge_plugin(), {"type": "crisp-test-hang"}])
    daemon = make_daemon(net.toml())
    pid_file = net.bin_dir / "hanging.pid"
    with ThreadPoolExecutor(max_workers=1) as pool:
        attempt = pool.submit(run_pod, daemon, pod_config("half"))
        eventually(lambda: pid_file.exists() and bool(pid_file.read_text().strip()),
                   "the hanging plugin", attempts=400)
        try:
            # bridge and host-local have run: the pod has an IP and a veth, but no record.
            assert len(net.leases()) == 1 and len(net.bridge_ports()) == 1
            daemon.kill()
        finally:
            os.kill(int(pid_file.read_text()), 9)
        with pytest.raises(grpc.RpcError):
            attempt.result(timeout=30)

    daemon.start()  # start-up recovery finishes the interrupted RunPodSandbox by undoing it

    assert net.leases() == []
    assert net.bridge_ports() == []
    assert pinned_namespaces(daemon) == []
    assert list(daemon.runtime.ListPodSandbox(cri_pb2.ListPodSandboxRequest(),
                                              timeout=10).items) == []
