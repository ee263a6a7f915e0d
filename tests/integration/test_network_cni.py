"""The CNI runtime side against the real plugins of Debian's containernetworking-plugins.

Each test gets a network lab: its own bridge, subnet, conf dir and namespaces.

Everything it makes (network namespaces, processes started in them, the bridge) carries a
random name and is removed by :meth:`Lab.cleanup`, which the fixtures call even when a test
fails. Traffic stays on loopback and the lab's own bridge.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import json
import os
import secrets
import signal
import socket
import subprocess
import sys
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

import crisp
from crisp.config import CNIConfig, Config, LiveConfig
from crisp.errors import FailedPrecondition
from crisp.network import (
    POD_CIDR_SETTING,
    NetworkManager,
    PluginError,
    PodRef,
    PortMapping,
    bandwidth_from_annotations,
)
from crisp.network.default import DEFAULT_BRIDGE, DEFAULT_CONFIG_NAME
from crisp.state import Database, Settings

PLUGIN_DIR = "/usr/lib/cni"
SOURCE_DIR = str(Path(crisp.__file__).resolve().parents[1])
NETNS_DIR = Path("/run/netns")


def plugins_available() -> bool:
    return os.geteuid() == 0 and all(
        (Path(PLUGIN_DIR) / name).exists() for name in ("bridge", "host-local", "portmap",
                                                         "loopback"))


async def run(*args: str, check: bool = True, limit: float = 30.0) -> tuple[int, str]:
    """Run a command off the event loop; return (exit status, stdout+stderr)."""
    process = await asyncio.create_subprocess_exec(
        *args, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT,
        stdin=asyncio.subprocess.DEVNULL,
    )
    try:
        out, _ = await asyncio.wait_for(process.communicate(), limit)
    except TimeoutError:
        process.kill()
        await process.wait()
        raise
    text = out.decode(errors="replace")
    if check and process.returncode != 0:
        raise AssertionError(f"{' '.join(args)} exited {process.returncode}: {text}")
    assert process.returncode is not None
    return process.returncode, text


@dataclass
class Lab:
    """One test's network world."""

    root: Path
    tag: str = field(default_factory=lambda: secrets.token_hex(3))
    third_octet: int = field(default_factory=lambda: secrets.randbelow(200) + 20)
    namespaces: list[str] = field(default_factory=list)
    processes: list[asyncio.subprocess.Process] = field(default_factory=list)
    pids: list[int] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.conf_dir = self.root / "net.d"
        self.conf_dir.mkdir(parents=True, exist_ok=True)
        self.bin_dir = self.root / "bin"
        self.bin_dir.mkdir(exist_ok=True)
        self.state_dir = self.root / "state"
        self.ipam_dir = self.root / "ipam"
        self.bridge = f"crt{self.tag}"
        self.subnet = ipaddress.ip_network(f"10.213.{self.third_octet}.0/24")
        self.subnet6 = ipaddress.ip_network(f"fd00:213:{self.third_octet:x}::/64")
        self.gateway = str(self.subnet.network_address + 1)

    # -- configs ---------------------------------------------------------------------------

    def bridge_plugin(self, *, ipv6: bool = False, **ipam: Any) -> dict[str, Any]:
        ranges = [[{"subnet": str(self.subnet)}]]
        if ipv6:
            ranges.append([{"subnet": str(self.subnet6)}])
        return {
            "type": "bridge", "bridge": self.bridge, "isGateway": True, "ipMasq": False,
            "hairpinMode": True,
            "ipam": {"type": "host-local", "ranges": ranges, "dataDir": str(self.ipam_dir),
                     "routes": [{"dst": "0.0.0.0/0"}], **ipam},
        }

    def write_conflist(
        self,
        plugins: list[dict[str, Any]] | None = None,
        *,
        name: str = "crisptest",
        file: str = "10-test.conflist",
        cni_version: str = "1.0.0",
        **extra: Any,
    ) -> Path:
        if plugins is None:
            plugins = [{"type": "loopback"}, self.bridge_plugin(),
                       {"type": "portmap", "capabilities": {"portMappings": True}}]
        document = {"cniVersion": cni_version, "name": name, "plugins": plugins, **extra}
        path = self.conf_dir / file
        path.write_text(json.dumps(document, indent=1))
        return path

    def write_plugin(self, name: str, script: str) -> Path:
        """A plugin of the test's own: a shell script speaking the CNI protocol."""
        path = self.bin_dir / name
        path.write_text("#!/bin/sh\n" + script)
        path.chmod(0o755)
        return path

    def live(self, **cni: Any) -> LiveConfig:
        options: dict[str, Any] = {"conf_dir": str(self.conf_dir),
                                   "bin_dirs": [str(self.bin_dir), PLUGIN_DIR]}
        options.update(cni)
        return LiveConfig(Config(root_dir=str(self.root), cni=CNIConfig(**options)), None)

    def manager(self, settings: Settings | None = None, **cni: Any) -> NetworkManager:
        return NetworkManager(self.live(**cni), self.state_dir, settings)

    # -- the world -------------------------------------------------------------------------

    async def netns(self) -> str:
        name = f"crt{self.tag}-{len(self.namespaces)}"
        self.namespaces.append(name)
        await run("ip", "netns", "add", name)
        return str(NETNS_DIR / name)

    async def spawn_in(self, netns_path: str, *args: str) -> asyncio.subprocess.Process:
        process = await asyncio.create_subprocess_exec(
            "ip", "netns", "exec", Path(netns_path).name, *args,
            stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.DEVNULL,
            stderr=asyncio.subprocess.DEVNULL,
        )
        self.processes.append(process)
        return process

    def leases(self, network: str = "crisptest", ipam_dir: Path | None = None) -> list[str]:
        """Addresses host-local holds for ``network``."""
        directory = (ipam_dir or self.ipam_dir) / network
        if not directory.exists():
            return []
        found = []
        for entry in directory.iterdir():
            with contextlib.suppress(ValueError):
                found.append(str(ipaddress.ip_address(entry.name)))
        return sorted(found)

    async def bridge_ports(self, bridge: str | None = None) -> list[str]:
        status, out = await run("ip", "-o", "link", "show", "master", bridge or self.bridge,
                                check=False)
        return [line.split(":")[1].strip().split("@")[0] for line in out.splitlines()
                if status == 0 and line.strip()]

    async def link_exists(self, name: str) -> bool:
        status, _ = await run("ip", "link", "show", "dev", name, check=False)
        return status == 0

    async def cleanup(self) -> None:
        for process in self.processes:
            with contextlib.suppress(ProcessLookupError):
                process.kill()
            with contextlib.suppress(Exception):
                await asyncio.wait_for(process.wait(), 5)
        for pid in self.pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        for name in self.namespaces:
            if (NETNS_DIR / name).exists():
                await run("ip", "netns", "del", name, check=False)
        if await self.link_exists(self.bridge):
            await run("ip", "link", "del", self.bridge, check=False)


def leftover_namespaces(prefix: str) -> list[str]:
    names = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
    return [line.split()[0] for line in names.splitlines() if line.startswith(prefix)]


pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(not plugins_available(),
                       reason="needs root and containernetworking-plugins in /usr/lib/cni"),
]

POD = PodRef(name="web", namespace="default", uid="uid-1")
HTTP_BODY = "hello from the pod\n"


@pytest.fixture
async def lab(tmp_path: Path) -> AsyncIterator[Lab]:
    world = Lab(tmp_path)
    try:
        yield world
    finally:
        await world.cleanup()


async def start_httpd(lab: Lab, netns: str, port: int = 80) -> None:
    """A busybox httpd inside the namespace, serving HTTP_BODY; waits until it listens."""
    www = lab.root / f"www-{port}"
    www.mkdir(exist_ok=True)
    (www / "index.html").write_text(HTTP_BODY)
    await lab.spawn_in(netns, "busybox", "httpd", "-f", "-p", str(port), "-h", str(www))
    for _ in range(100):
        status, _ = await run("ip", "netns", "exec", Path(netns).name, "busybox", "wget",
                              "-q", "-O", "/dev/null", f"http://127.0.0.1:{port}/", check=False)
        if status == 0:
            return
        await asyncio.sleep(0.05)
    raise AssertionError("busybox httpd did not start in the pod")


async def http_get(host: str, port: int) -> str:
    reader, writer = await asyncio.wait_for(asyncio.open_connection(host, port), 5)
    try:
        writer.write(b"GET /index.html HTTP/1.0\r\n\r\n")
        await writer.drain()
        response = await asyncio.wait_for(reader.read(), 5)
    finally:
        writer.close()
    return response.decode(errors="replace")


async def test_setup_attaches_the_pod_and_teardown_releases_everything(lab: Lab) -> None:
    lab.write_conflist()
    manager = lab.manager()
    netns = await lab.netns()

    network = await manager.setup("sb-basic", netns, POD)

    assert network.network_name == "crisptest" and network.interface == "eth0"
    assert len(network.ips) == 1
    assert ipaddress.ip_address(network.primary_ip) in lab.subnet
    _, addresses = await run("ip", "netns", "exec", Path(netns).name, "ip", "-o", "addr",
                             "show", "dev", "eth0")
    assert f"{network.primary_ip}/24" in addresses
    assert lab.leases() == [network.primary_ip]
    ports = await lab.bridge_ports()
    assert len(ports) == 1
    assert await manager.cached("sb-basic") == network
    assert await manager.attached_sandboxes() == ["sb-basic"]
    await manager.check("sb-basic")  # no port mappings: every plugin's CHECK passes

    await manager.teardown("sb-basic", netns)

    assert lab.leases() == []
    assert await lab.bridge_ports() == []
    assert not await lab.link_exists(ports[0])
    assert await manager.attached_sandboxes() == []
    await manager.teardown("sb-basic", netns)  # idempotent
    await manager.teardown("sb-never-set-up")


async def test_two_pods_reach_each_other_by_pod_ip(lab: Lab) -> None:
    lab.write_conflist()
    manager = lab.manager()
    client_ns, server_ns = await lab.netns(), await lab.netns()
    await manager.setup("sb-client", client_ns, POD)
    server = await manager.setup("sb-server", server_ns, PodRef("db", "default", "uid-2"))
    try:
        await start_httpd(lab, server_ns)
        _, body = await run("ip", "netns", "exec", Path(client_ns).name, "busybox", "wget",
                            "-q", "-O", "-", f"http://{server.primary_ip}/index.html")
        assert body == HTTP_BODY
    finally:
        await manager.teardown("sb-client", client_ns)
        await manager.teardown("sb-server", server_ns)
    assert lab.leases() == []


async def test_pod_reaches_a_server_on_the_host_through_the_bridge(lab: Lab) -> None:
    lab.write_conflist()
    manager = lab.manager()
    netns = await lab.netns()
    await manager.setup("sb-out", netns, POD)

    async def answer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readline()
        writer.write(b"HTTP/1.0 200 OK\r\nContent-Length: 8\r\n\r\nfromhost")
        await writer.drain()
        writer.close()

    server = await asyncio.start_server(answer, lab.gateway, 0)
    port = server.sockets[0].getsockname()[1]
    try:
        _, body = await run("ip", "netns", "exec", Path(netns).name, "busybox", "wget",
                            "-q", "-O", "-", f"http://{lab.gateway}:{port}/")
        assert body == "fromhost"
    finally:
        server.close()
        await server.wait_closed()
        await manager.teardown("sb-out", netns)


def free_port(kind: int = socket.SOCK_STREAM) -> int:
    with socket.socket(socket.AF_INET, kind) as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


UDP_ECHO = """
import socket
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.bind(("0.0.0.0", 5300))
while True:
    data, peer = s.recvfrom(100)
    s.sendto(b"echo:" + data, peer)
"""


async def test_host_ports_on_localhost_reach_tcp_and_udp_servers_in_the_pod(lab: Lab) -> None:
    lab.write_conflist()
    manager = lab.manager()
    netns = await lab.netns()
    tcp_port, udp_port = free_port(), free_port(socket.SOCK_DGRAM)
    await manager.setup("sb-ports", netns, POD, [
        PortMapping(tcp_port, 80, "tcp", "127.0.0.1"),
        PortMapping(udp_port, 5300, "udp", "127.0.0.1"),
    ])
    try:
        await start_httpd(lab, netns)
        assert (await http_get("127.0.0.1", tcp_port)).endswith(HTTP_BODY)

        await lab.spawn_in(netns, sys.executable, "-c", UDP_ECHO)
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as client:
            client.settimeout(0.2)
            reply = b""
            for _ in range(50):  # the echo server needs a moment to bind
                client.sendto(b"ping", ("127.0.0.1", udp_port))
                try:
                    reply = client.recv(100)
                    break
                except TimeoutError:
                    continue
        assert reply == b"echo:ping"
    finally:
        await manager.teardown("sb-ports", netns)
    with pytest.raises(OSError):
        await http_get("127.0.0.1", tcp_port)  # the DNAT rule went with the pod


async def test_portmap_runs_only_when_there_are_ports_to_map(lab: Lab) -> None:
    calls = lab.root / "portmap-calls"
    lab.write_plugin("portmap", f'[ "$CNI_COMMAND" = VERSION ] || echo "$CNI_COMMAND" >> {calls}\n'
                     f'exec {PLUGIN_DIR}/portmap\n')
    lab.write_conflist()
    manager = lab.manager()
    bare, mapped = await lab.netns(), await lab.netns()
    port = free_port()

    await manager.setup("sb-bare", bare, POD)
    attachment = await manager._cache.load("sb-bare")
    assert attachment is not None and attachment.result is not None
    assert not calls.exists(), "portmap ran with nothing to map"
    # What portmap itself prints for no mappings: its prevResult, unchanged.
    conf = {"cniVersion": "1.0.0", "name": "crisptest", "type": "portmap",
            "capabilities": {"portMappings": True}, "runtimeConfig": {"portMappings": []},
            "prevResult": attachment.result}
    printed = (await asyncio.to_thread(
        subprocess.run, [f"{PLUGIN_DIR}/portmap"], input=json.dumps(conf).encode(),
        capture_output=True,
        check=True, env={"CNI_COMMAND": "ADD", "CNI_CONTAINERID": "sb-bare", "CNI_NETNS": bare,
                         "CNI_IFNAME": "eth0", "CNI_PATH": PLUGIN_DIR})).stdout
    assert json.loads(printed) == attachment.result

    await manager.setup("sb-mapped", mapped, POD, [PortMapping(port, 80, "tcp", "127.0.0.1")])
    assert calls.read_text().split() == ["ADD"]
    await manager.teardown("sb-mapped", mapped)
    await manager.teardown("sb-bare", bare)
    assert calls.read_text().split() == ["ADD", "DEL", "DEL"]  # DEL runs the whole chain


async def test_dual_stack_network_gives_ipv4_then_ipv6(lab: Lab) -> None:
    lab.write_conflist([lab.bridge_plugin(ipv6=True)])
    manager = lab.manager()
    netns = await lab.netns()
    network = await manager.setup("sb-dual", netns, POD)
    try:
        assert len(network.ips) == 2
        assert ipaddress.ip_address(network.ips[0]) in lab.subnet
        assert ipaddress.ip_address(network.ips[1]) in lab.subnet6
    finally:
        await manager.teardown("sb-dual", netns)
    assert lab.leases() == []


async def test_teardown_after_restart_and_config_change_uses_the_recorded_config(
    lab: Lab,
) -> None:
    old = lab.write_conflist()
    netns = await lab.netns()
    network = await lab.manager().setup("sb-restart", netns, POD)
    ports = await lab.bridge_ports()
    # crisp restarts and meanwhile the administrator replaced the network config.
    old.unlink()
    lab.write_conflist([{"type": "loopback"}], name="othernet", file="20-other.conflist")

    restarted = lab.manager()
    assert await restarted.cached("sb-restart") == network
    await restarted.teardown("sb-restart", netns)

    assert lab.leases() == []
    assert not await lab.link_exists(ports[0])
    _, links = await run("ip", "netns", "exec", Path(netns).name, "ip", "-o", "link")
    assert "eth0" not in links


async def test_teardown_works_when_the_namespace_pin_is_left_unmounted(lab: Lab) -> None:
    lab.write_conflist()
    manager = lab.manager()
    pin = lab.root / "netns-pin"
    pin.touch()
    await run("unshare", f"--net={pin}", "true")
    await manager.setup("sb-unpinned", str(pin), POD)
    await run("umount", str(pin))  # crash between unmount and unlink: a plain file remains

    await manager.teardown("sb-unpinned", str(pin))

    assert lab.leases() == []
    assert await lab.bridge_ports() == []


async def test_teardown_works_when_the_namespace_is_already_gone(lab: Lab) -> None:
    lab.write_conflist()
    manager = lab.manager()
    netns = await lab.netns()
    await manager.setup("sb-gone", netns, POD)
    await run("ip", "netns", "del", Path(netns).name)

    await lab.manager().teardown("sb-gone", netns)

    assert lab.leases() == []
    assert await lab.bridge_ports() == []


BROKEN_PLUGIN = """
cat >/dev/null
case "$CNI_COMMAND" in
VERSION) echo '{"cniVersion":"1.0.0","supportedVersions":["0.4.0","1.0.0"]}' ;;
ADD) echo "tc: qdisc is busy" >&2
     echo '{"cniVersion":"1.0.0","code":100,"msg":"shaping failed","details":"qdisc busy"}'
     exit 1 ;;
esac
"""


async def test_a_failing_plugin_fails_setup_and_leaves_nothing_behind(lab: Lab) -> None:
    lab.write_plugin("crisp-test-broken", BROKEN_PLUGIN)
    lab.write_conflist([{"type": "loopback"}, lab.bridge_plugin(), {"type": "crisp-test-broken"}])
    manager = lab.manager()
    netns = await lab.netns()

    with pytest.raises(PluginError) as failure:
        await manager.setup("sb-broken", netns, POD)

    message = str(failure.value)
    assert "crisp-test-broken" in message
    assert "shaping failed: qdisc busy" in message
    assert "CNI error code 100" in message
    assert "stderr: tc: qdisc is busy" in message
    assert lab.leases() == []
    assert await lab.bridge_ports() == []
    _, links = await run("ip", "netns", "exec", Path(netns).name, "ip", "-o", "link")
    assert "eth0" not in links
    assert await manager.attached_sandboxes() == []


async def test_a_bad_ipam_config_fails_with_the_plugins_message(lab: Lab) -> None:
    bridge = lab.bridge_plugin()
    bridge["ipam"]["ranges"] = [[{"subnet": "10.213.0.0/33"}]]
    lab.write_conflist([bridge])
    manager = lab.manager()
    netns = await lab.netns()
    with pytest.raises(PluginError, match=r"invalid CIDR address: 10\.213\.0\.0/33"):
        await manager.setup("sb-badipam", netns, POD)
    assert await manager.attached_sandboxes() == []
    assert await lab.bridge_ports() == []


async def test_status_follows_the_conf_dir(lab: Lab) -> None:
    manager = lab.manager()
    status = await manager.status()
    assert not status.ready
    assert status.reason == "NetworkPluginNotReady"
    assert f"no CNI network config in {lab.conf_dir}" in status.message
    with pytest.raises(FailedPrecondition, match="pod network is not ready"):
        await manager.setup("sb-early", await lab.netns(), POD)

    (lab.conf_dir / "05-broken.conflist").write_text('{"cniVersion": "1.0.0", "name": ')
    lab.write_conflist([{"type": "crisp-missing-plugin"}], file="07-missing.conflist")
    status = await manager.status()
    assert not status.ready
    assert "05-broken.conflist is not valid JSON" in status.message
    assert "07-missing.conflist needs CNI plugin 'crisp-missing-plugin'" in status.message

    lab.write_conflist()
    assert await manager.status() == (True, "", "")


async def test_status_keeps_discovery_until_the_conf_dir_changes(
    lab: Lab, monkeypatch: pytest.MonkeyPatch
) -> None:
    import crisp.network.discovery as discovery_module
    import crisp.network.manager as manager_module

    # Changes younger than the settle window are never trusted; here they are, and each
    # change comes a few clock ticks after the look before it.
    monkeypatch.setattr(discovery_module, "_SETTLE_NS", 0)
    looks: list[Path] = []
    real = manager_module.discover

    async def counting(conf_dir: Path, *args: Any) -> Any:
        looks.append(conf_dir)
        return await real(conf_dir, *args)

    monkeypatch.setattr(manager_module, "discover", counting)
    config = lab.write_conflist()
    manager = lab.manager()
    assert (await manager.status()).ready
    assert (await manager.status()).ready
    assert len(looks) == 1  # the second Status answered from memory

    # Broken in place with the same size and the old mtime: its ctime shows the change.
    await asyncio.sleep(0.05)
    before = config.stat()
    text = config.read_text()
    config.write_text(text.replace('"plugins"', '"plugins_"', 1)[: len(text)])
    os.utime(config, ns=(before.st_atime_ns, before.st_mtime_ns))
    status = await manager.status()
    assert not status.ready and "10-test.conflist" in status.message
    await asyncio.sleep(0.05)
    config.unlink()
    status = await manager.status()
    assert not status.ready and f"no CNI network config in {lab.conf_dir}" in status.message
    await asyncio.sleep(0.05)
    lab.write_conflist(file="20-new.conflist")
    assert (await manager.status()).ready
    assert len(looks) == 4


async def test_version_negotiation_against_the_plugins(lab: Lab) -> None:
    lab.write_conflist(cni_version="1.1.0")
    status = await lab.manager().status()
    assert not status.ready
    assert "allows CNI version 1.1.0, which not every plugin" in status.message

    lab.write_conflist(cni_version="1.0.0", cniVersions=["0.4.0", "1.0.0", "1.1.0"])
    manager = lab.manager()
    assert (await manager.status()).ready
    netns = await lab.netns()
    network = await manager.setup("sb-version", netns, POD)
    assert network.result["cniVersion"] == "1.0.0"
    await manager.teardown("sb-version", netns)


async def test_cni_0_4_0_chains_work(lab: Lab) -> None:
    lab.write_conflist(cni_version="0.4.0")
    manager = lab.manager()
    netns = await lab.netns()
    network = await manager.setup("sb-old", netns, POD)
    assert network.result["cniVersion"] == "0.4.0"
    assert ipaddress.ip_address(network.primary_ip) in lab.subnet
    await manager.check("sb-old")
    await manager.teardown("sb-old", netns)
    assert lab.leases() == []


STATUS_PLUGIN = """
cat >/dev/null
case "$CNI_COMMAND" in
VERSION) echo '{"cniVersion":"1.1.0","supportedVersions":["1.0.0","1.1.0"]}' ;;
STATUS) if [ -e "$(dirname "$0")/not-ready" ]; then
          echo '{"cniVersion":"1.1.0","code":50,"msg":"plugin not available",'\
               '"details":"agent starting"}'
          exit 1
        fi ;;
esac
"""


async def test_status_asks_cni_1_1_plugins(lab: Lab) -> None:
    lab.write_plugin("crisp-test-status", STATUS_PLUGIN)
    lab.write_conflist([{"type": "crisp-test-status"}], cni_version="1.1.0")
    manager = lab.manager()
    assert (await manager.status()).ready
    (lab.bin_dir / "not-ready").touch()
    status = await manager.status()
    assert not status.ready
    assert status.reason == "NetworkPluginNotReady"
    assert "STATUS" in status.message and "plugin not available: agent starting" in status.message


HANGING_PLUGIN = """
cat >/dev/null
case "$CNI_COMMAND" in
VERSION) echo '{"cniVersion":"1.0.0","supportedVersions":["1.0.0"]}' ;;
ADD) echo $$ > "$(dirname "$0")/hanging.pid"; exec sleep 60 ;;
esac
"""

CRASHING_SETUP = """
import asyncio, sys
from pathlib import Path
from crisp.config import CNIConfig, Config, LiveConfig
from crisp.network import NetworkManager, PodRef
conf_dir, bin_dir, state_dir, netns = sys.argv[1:5]
live = LiveConfig(Config(cni=CNIConfig(conf_dir=conf_dir,
                                       bin_dirs=[bin_dir, "/usr/lib/cni"])), None)
asyncio.run(NetworkManager(live, Path(state_dir)).setup(
    "sb-crash", netns, PodRef("web", "default", "uid-1")))
"""


async def test_teardown_cleans_up_a_setup_that_crashed_half_way(lab: Lab) -> None:
    lab.write_plugin("crisp-test-hang", HANGING_PLUGIN)
    lab.write_conflist([{"type": "loopback"}, lab.bridge_plugin(), {"type": "crisp-test-hang"}])
    netns = await lab.netns()
    child = await asyncio.create_subprocess_exec(
        sys.executable, "-c", CRASHING_SETUP, str(lab.conf_dir), str(lab.bin_dir),
        str(lab.state_dir), netns, env={**os.environ, "PYTHONPATH": SOURCE_DIR},
    )
    lab.processes.append(child)
    pid_file = lab.bin_dir / "hanging.pid"
    for _ in range(200):
        if pid_file.exists() and pid_file.read_text().strip():
            break
        await asyncio.sleep(0.05)
    else:
        raise AssertionError("the setup never reached the hanging plugin")
    lab.pids.append(int(pid_file.read_text()))
    child.kill()  # crisp dies in the middle of ADD: bridge and host-local already ran
    await child.wait()
    assert len(lab.leases()) == 1 and len(await lab.bridge_ports()) == 1

    restarted = lab.manager()
    assert await restarted.attached_sandboxes() == ["sb-crash"]
    assert await restarted.cached("sb-crash") is None
    assert await restarted.release_strays({"sb-crash"}) == []  # a known pod is left alone
    # Start-up reconciliation: the pod record was never saved, so the attachment is a stray.
    assert await restarted.release_strays({"sb-other"}) == ["sb-crash"]

    assert lab.leases() == []
    assert await lab.bridge_ports() == []
    assert await restarted.attached_sandboxes() == []


async def test_cancelled_setup_is_rolled_back(lab: Lab) -> None:
    lab.write_plugin("crisp-test-hang", HANGING_PLUGIN)
    lab.write_conflist([lab.bridge_plugin(), {"type": "crisp-test-hang"}])
    manager = lab.manager()
    netns = await lab.netns()
    task = asyncio.create_task(manager.setup("sb-cancel", netns, POD))
    pid_file = lab.bin_dir / "hanging.pid"
    for _ in range(200):
        if pid_file.exists() and pid_file.read_text().strip():
            break
        await asyncio.sleep(0.05)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert lab.leases() == []
    assert await lab.bridge_ports() == []
    assert await manager.attached_sandboxes() == []
    with pytest.raises(ProcessLookupError):
        os.kill(int(pid_file.read_text()), 0)  # the hanging plugin was killed


async def test_fifty_pods_concurrently_leak_nothing(lab: Lab) -> None:
    lab.write_conflist()
    manager = lab.manager()
    namespaces = await asyncio.gather(*(lab.netns() for _ in range(50)))
    ids = [f"sb-many-{index}" for index in range(50)]

    networks = await asyncio.gather(*(
        manager.setup(sandbox_id, netns, PodRef(f"pod{index}", "load", f"uid-{index}"))
        for index, (sandbox_id, netns) in enumerate(zip(ids, namespaces, strict=True))))

    assert len({network.primary_ip for network in networks}) == 50
    assert len(lab.leases()) == 50
    assert len(await lab.bridge_ports()) == 50

    await asyncio.gather(*(manager.teardown(sandbox_id, netns)
                           for sandbox_id, netns in zip(ids, namespaces, strict=True)))
    await asyncio.gather(*(run("ip", "netns", "del", Path(netns).name) for netns in namespaces))

    assert lab.leases() == []
    assert await lab.bridge_ports() == []
    assert await manager.attached_sandboxes() == []
    assert leftover_namespaces(f"crt{lab.tag}-") == []


async def test_pod_cidr_feeds_templates_and_ip_ranges(lab: Lab, tmp_path: Path) -> None:
    db = await Database.open(tmp_path / "crisp.db")
    try:
        settings = Settings(db)
        bridge = lab.bridge_plugin()
        bridge["ipam"] = {"type": "host-local", "dataDir": str(lab.ipam_dir),
                          "ranges": [[{"subnet": "{{.PodCIDR}}"}]]}
        lab.write_conflist([bridge])
        manager = lab.manager(settings)
        await manager.start()
        status = await manager.status()
        assert not status.ready and "UpdateRuntimeConfig" in status.message

        await manager.update_pod_cidr(str(lab.subnet))
        assert await settings.get(POD_CIDR_SETTING) == str(lab.subnet)
        assert (await manager.status()).ready

        # The ipRanges capability: host-local takes the pod CIDR from crisp at run time.
        ranged = lab.bridge_plugin()
        ranged["capabilities"] = {"ipRanges": True}
        del ranged["ipam"]["ranges"]  # host-local would add configured ranges to crisp's
        lab.write_conflist([ranged], file="01-ranged.conflist")
        restarted = lab.manager(settings)
        await restarted.start()
        assert restarted.pod_cidrs == (str(lab.subnet),)
        netns = await lab.netns()
        network = await restarted.setup("sb-cidr", netns, POD)
        assert ipaddress.ip_address(network.primary_ip) in lab.subnet
        await restarted.teardown("sb-cidr", netns)
    finally:
        await db.close()


async def test_default_config_gives_a_fresh_machine_pod_networking(lab: Lab) -> None:
    if await lab.link_exists(DEFAULT_BRIDGE):
        pytest.skip(f"bridge {DEFAULT_BRIDGE} belongs to a crisp running on this machine")
    manager = lab.manager(write_default_config=True, default_subnet=str(lab.subnet))
    netns = await lab.netns()
    try:
        assert await manager.status() == (True, "", "")
        written = json.loads((lab.conf_dir / DEFAULT_CONFIG_NAME).read_text())
        assert [p["type"] for p in written["plugins"]] == ["loopback", "bridge", "portmap"]
        network = await manager.setup("sb-default", netns, POD)
        assert ipaddress.ip_address(network.primary_ip) in lab.subnet
        await manager.teardown("sb-default", netns)
        assert lab.leases("crisp", lab.state_dir / "ipam") == []
    finally:
        _, addresses = await run("ip", "-o", "addr", "show", "dev", DEFAULT_BRIDGE, check=False)
        if f"inet {lab.gateway}/" in addresses:  # ours: other tests may use crisp0 meanwhile
            await run("ip", "link", "del", DEFAULT_BRIDGE, check=False)


async def test_bandwidth_capability_shapes_the_pods_traffic(lab: Lab) -> None:
    lab.write_conflist([lab.bridge_plugin(),
                        {"type": "bandwidth", "capabilities": {"bandwidth": True}}])
    manager = lab.manager()
    netns = await lab.netns()
    limits = bandwidth_from_annotations({"kubernetes.io/ingress-bandwidth": "10M",
                                         "kubernetes.io/egress-bandwidth": "5M"})
    await manager.setup("sb-shaped", netns, POD, bandwidth=limits)
    try:
        (veth,) = await lab.bridge_ports()
        _, qdiscs = await run("tc", "qdisc", "show", "dev", veth)
        assert "tbf" in qdiscs
    finally:
        await manager.teardown("sb-shaped", netns)
    assert lab.leases() == []
