"""The files a pod's containers share: /etc/hostname, /etc/hosts, /etc/resolv.conf and /dev/shm."""

from __future__ import annotations

import asyncio
import os
import shutil
from dataclasses import dataclass
from pathlib import Path

from crisp.errors import InvalidArgument
from crisp.filemodes import PRIVATE_DIR, PUBLIC_FILE
from crisp.pods.host import mount_tmpfs, unmount
from crisp.pods.model import DNSConfig

SHM_OPTIONS = "mode=1777,size=65536k"
_LOCAL_HOSTS = (
    "127.0.0.1\tlocalhost\n"
    "::1\tlocalhost ip6-localhost ip6-loopback\n"
    "fe00::0\tip6-localnet\n"
    "fe00::0\tip6-mcastprefix\n"
    "fe00::1\tip6-allnodes\n"
    "fe00::2\tip6-allrouters\n"
)


@dataclass(frozen=True)
class PodFiles:
    hostname: str
    hosts: str
    resolv_conf: str
    shm: str  # empty: the pod uses the host's /dev/shm


def resolv_conf_text(dns: DNSConfig) -> str:
    """resolv.conf(5) for the pod's DNS settings."""
    lines = []
    if dns.searches:
        lines.append("search " + " ".join(dns.searches))
    lines.extend(f"nameserver {server}" for server in dns.servers)
    if dns.options:
        lines.append("options " + " ".join(dns.options))
    for item in (*dns.searches, *dns.servers, *dns.options):
        if any(c in item for c in "\n\r"):
            raise InvalidArgument(f"DNS setting {item!r} contains a line break")
    return "".join(f"{line}\n" for line in lines)


def hosts_text(hostname: str) -> str:
    return _LOCAL_HOSTS + (f"127.0.1.1\t{hostname}\n" if hostname else "")


def _write_new(path: Path, data: bytes, mode: int) -> None:
    """Write a pod file with no fsync and no rename: nothing reads it before RunPodSandbox
    returns, and after a crash of the machine the pod is gone with it (the fsyncs of
    durable.write_atomic cost a pod start several milliseconds on a busy disk)."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, mode)
    with os.fdopen(fd, "wb") as file:
        os.fchmod(fd, mode)  # exactly ``mode``, whatever the umask
        file.write(data)


def _write(directory: Path, hostname: str, dns: DNSConfig | None, host_network: bool,
           private_shm: bool, owner: tuple[int, int] | None = None) -> PodFiles:
    # Private: runc (as root) bind-mounts the files, no container walks this directory. The
    # files themselves are what every user in the containers reads: 0644.
    directory.mkdir(parents=True, exist_ok=True, mode=PRIVATE_DIR)
    hostname_file = directory / "hostname"
    hosts = directory / "hosts"
    resolv = directory / "resolv.conf"
    _write_new(hostname_file, f"{hostname}\n".encode(), PUBLIC_FILE)
    if host_network:
        _write_new(hosts, _host_file("/etc/hosts", hosts_text(hostname)), PUBLIC_FILE)
    else:
        _write_new(hosts, hosts_text(hostname).encode(), PUBLIC_FILE)
    if dns is not None and (dns.servers or dns.searches or dns.options):
        _write_new(resolv, resolv_conf_text(dns).encode(), PUBLIC_FILE)
    else:
        _write_new(resolv, _host_file("/etc/resolv.conf", ""), PUBLIC_FILE)
    if owner is not None:
        # A pod in its own user namespace: its root owns these, as root does elsewhere.
        for path in (hostname_file, hosts, resolv):
            os.chown(path, *owner)
    shm = ""
    if private_shm:
        shm_dir = directory / "shm"
        shm_dir.mkdir(exist_ok=True)
        unmount(shm_dir)
        options = SHM_OPTIONS
        if owner is not None:
            options += f",uid={owner[0]},gid={owner[1]}"
        mount_tmpfs(shm_dir, options)
        shm = str(shm_dir)
    return PodFiles(str(hostname_file), str(hosts), str(resolv), shm)


def _host_file(path: str, fallback: str) -> bytes:
    try:
        return Path(path).read_bytes()
    except OSError:
        return fallback.encode()


async def write_pod_files(directory: Path, hostname: str, dns: DNSConfig | None,
                          host_network: bool, private_shm: bool,
                          owner: tuple[int, int] | None = None) -> PodFiles:
    """Write the pod's shared files and mount its /dev/shm (unless it uses the host's);
    ``owner`` (host uid, gid) owns them for a pod in its own user namespace."""
    return await asyncio.to_thread(_write, directory, hostname, dns, host_network, private_shm,
                                   owner)


async def release_shm(directory: Path) -> None:
    """Unmount the pod's /dev/shm; idempotent."""
    await asyncio.to_thread(unmount, directory / "shm")


async def remove_pod_files(directory: Path) -> None:
    """Unmount and delete everything under the pod's directory; idempotent."""

    def remove() -> None:
        unmount(directory / "shm")
        shutil.rmtree(directory, ignore_errors=True)

    await asyncio.to_thread(remove)
