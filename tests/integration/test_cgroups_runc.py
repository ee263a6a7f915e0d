"""crisp.cgroups and crisp.oci.seccomp against real runc containers on this host.

Each container is a busybox rootfs built here, run by runc with the cgroupsPath, resources
and seccomp profile crisp computes; the tests then look at the real cgroup files. Every
container is force-deleted and every cgroup removed even when a test fails.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import shutil
import subprocess
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from crisp.cgroups import (
    CgroupfsDriver,
    CgroupHost,
    CgroupService,
    CpuRateTracker,
    LinuxResources,
    cgroup_dirs,
    cgroups_path,
    detect_host,
    interfaces_of_netns,
    interfaces_of_pid,
    oci_resources,
    read_resources,
    read_stats,
    remove_cgroup,
)
from crisp.errors import FailedPrecondition
from crisp.oci.seccomp import load_localhost_profile, runtime_default_profile

pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(os.geteuid() != 0, reason="runc containers need root"),
    pytest.mark.skipif(
        shutil.which("runc") is None or not Path("/bin/busybox").exists(),
        reason="needs runc and busybox-static (/bin/busybox)",
    ),
]

RUNC_TIMEOUT = 30


@dataclass
class Runc:
    """runc with a state root of its own, so nothing here touches other runc users."""

    root: Path

    def __call__(self, *args: str, input: str | None = None, check: bool = True,
                 output: Path | None = None) -> subprocess.CompletedProcess[str]:
        """Run runc; ``output`` takes stdout and stderr where a container inherits them."""
        with contextlib.ExitStack() as stack:
            sink: Any = subprocess.PIPE
            if output is not None:
                sink = stack.enter_context(open(output, "a"))
            result = subprocess.run(
                ["runc", "--root", str(self.root), *args],
                input=input, stdout=sink, stderr=sink, text=True,
                timeout=RUNC_TIMEOUT, check=False,
            )
        if check and result.returncode != 0:
            details = result.stderr if output is None else output.read_text()
            raise AssertionError(f"runc {' '.join(args)} failed: {details}")
        return result

    def state(self, container_id: str) -> dict[str, Any]:
        state: dict[str, Any] = json.loads(self("state", container_id).stdout)
        return state


@pytest.fixture(scope="module")
def host() -> CgroupHost:
    return detect_host()


@pytest.fixture(scope="module")
def rootfs(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A read-only busybox root every container here shares."""
    root = tmp_path_factory.mktemp("rootfs")
    for directory in ("bin", "proc", "sys", "dev", "tmp", "etc"):
        (root / directory).mkdir()
    shutil.copy2("/bin/busybox", root / "bin/busybox")
    applets = subprocess.run(
        ["/bin/busybox", "--list"], capture_output=True, text=True, check=True
    ).stdout.split()
    for applet in applets:
        if applet != "busybox":
            (root / "bin" / applet).symlink_to("busybox")
    return root


@pytest.fixture(scope="module")
def runc(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Runc]:
    runc = Runc(tmp_path_factory.mktemp("runc-root"))
    yield runc
    # Anything a failed test left running.
    listed = runc("list", "--format", "json", check=False).stdout.strip()
    for container in json.loads(listed or "null") or []:
        runc("delete", "--force", container["id"], check=False)


@pytest.fixture(scope="module")
def pod_parent(host: CgroupHost) -> Iterator[str]:
    """A cgroupfs pod parent of this module's own, removed at the end."""
    parent = f"/crisp-it-{uuid.uuid4().hex[:8]}/pod{uuid.uuid4().hex[:8]}"
    yield parent
    remove_cgroup(host, "/" + parent.split("/")[1])
    for directory in cgroup_dirs(host, parent):
        assert not directory.exists(), f"{directory} was left behind"


@dataclass
class Container:
    id: str
    cgroup: str
    bundle: Path

    @property
    def output(self) -> str:
        return (self.bundle / "output").read_text()


def _spec(bundle: Path, rootfs: Path, args: list[str]) -> dict[str, Any]:
    subprocess.run(["runc", "spec", "--bundle", str(bundle)], check=True, timeout=RUNC_TIMEOUT)
    spec: dict[str, Any] = json.loads((bundle / "config.json").read_text())
    spec["process"]["terminal"] = False
    spec["process"]["args"] = args
    spec["root"] = {"path": str(rootfs), "readonly": True}
    spec["hostname"] = "crisp-test"
    return spec


@contextlib.contextmanager
def running(
    runc: Runc,
    rootfs: Path,
    tmp_path: Path,
    args: list[str],
    *,
    parent: str,
    resources: dict[str, Any] | None = None,
    seccomp: bool | dict[str, Any] = False,
    detach: bool = True,
) -> Iterator[Container]:
    """A container started with crisp's cgroupsPath, resources and (optionally) seccomp:
    True for RuntimeDefault, or a ready ``linux.seccomp`` dict."""
    container_id = f"crisp-it-{uuid.uuid4().hex[:12]}"
    bundle = tmp_path / container_id
    bundle.mkdir()
    spec = _spec(bundle, rootfs, args)
    driver = CgroupfsDriver()
    path = cgroups_path(driver, parent, container_id)
    spec["linux"]["cgroupsPath"] = path
    spec["linux"]["resources"].update(resources or {})
    if isinstance(seccomp, dict):
        spec["linux"]["seccomp"] = seccomp
    elif seccomp:
        caps = spec["process"]["capabilities"]["bounding"]
        spec["linux"]["seccomp"] = runtime_default_profile(caps)
    (bundle / "config.json").write_text(json.dumps(spec))
    container = Container(container_id, driver.container_cgroup(path), bundle)
    try:
        command = ["run", "--bundle", str(bundle), container_id]
        if detach:
            command.insert(1, "-d")
        runc(*command, output=bundle / "output")
        yield container
    finally:
        runc("delete", "--force", container_id, check=False)


def _wait_stopped(runc: Runc, container_id: str, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while runc.state(container_id)["status"] != "stopped":
        assert time.monotonic() < deadline, f"{container_id} did not stop in {timeout}s"
        time.sleep(0.1)


def _v1_file(host: CgroupHost, controller: str, cgroup: str, name: str) -> str:
    directory = host.controller_dir(controller, cgroup)
    assert directory is not None, f"no {controller} controller on this host"
    return (directory / name).read_text().strip()


BURN = ["sh", "-c", "while :; do :; done"]
SLEEP = ["sleep", "600"]


def test_cpu_quota_and_shares_land_in_the_container_cgroup(
    host: CgroupHost, runc: Runc, rootfs: Path, tmp_path: Path, pod_parent: str
) -> None:
    resources = oci_resources(
        LinuxResources(cpu_period=100_000, cpu_quota=20_000, cpu_shares=512), host
    )
    with running(runc, rootfs, tmp_path, BURN, parent=pod_parent, resources=resources) as c:
        assert c.cgroup == f"{pod_parent}/crisp-{c.id}"
        read = read_resources(host, c.cgroup)
        assert (read.cpu_quota, read.cpu_period, read.cpu_shares) == (20_000, 100_000, 512)
        if not host.is_unified:
            assert _v1_file(host, "cpu", c.cgroup, "cpu.cfs_quota_us") == "20000"

        # The quota holds the busy loop to a fifth of a core, which the rate shows.
        tracker = CpuRateTracker(min_interval_ns=0)
        first = read_stats(host, c.cgroup)
        tracker.update(c.id, first)
        time.sleep(2.0)
        second = read_stats(host, c.cgroup)
        rate = tracker.update(c.id, second)
        assert first.cpu_usage_core_ns is not None and second.cpu_usage_core_ns is not None
        assert second.cpu_usage_core_ns > first.cpu_usage_core_ns
        assert rate is not None and 50_000_000 < rate < 260_000_000, rate
        assert second.process_count == 1


def test_update_through_runc_is_read_back(
    host: CgroupHost, runc: Runc, rootfs: Path, tmp_path: Path, pod_parent: str
) -> None:
    with running(runc, rootfs, tmp_path, SLEEP, parent=pod_parent) as c:
        update = LinuxResources(
            cpu_quota=50_000, cpu_period=100_000, memory_limit_in_bytes=96 << 20
        )
        runc("update", "--resources", "-", c.id, input=json.dumps(oci_resources(update, host)))
        read = read_resources(host, c.cgroup, pid=runc.state(c.id)["pid"])
        assert (read.cpu_quota, read.memory_limit_in_bytes) == (50_000, 96 << 20)
        if host.swap_accounting:
            assert read.memory_swap_limit_in_bytes == 96 << 20
        assert read.oom_score_adj == int(Path("/proc/self/oom_score_adj").read_text())

        lift = LinuxResources(cpu_quota=-1, memory_limit_in_bytes=-1)
        runc("update", "--resources", "-", c.id, input=json.dumps(oci_resources(lift, host)))
        read = read_resources(host, c.cgroup)
        assert read.cpu_quota == read.memory_limit_in_bytes == 0
        assert read.memory_swap_limit_in_bytes == 0


def test_memory_limit_is_applied_and_usage_is_read(
    host: CgroupHost, runc: Runc, rootfs: Path, tmp_path: Path, pod_parent: str
) -> None:
    resources = oci_resources(LinuxResources(memory_limit_in_bytes=64 << 20), host)
    # dd faults in an 8 MiB buffer, so the counters move; then the container idles.
    args = ["sh", "-c", "dd if=/dev/zero of=/dev/null bs=8M count=4 && exec sleep 600"]
    with running(runc, rootfs, tmp_path, args, parent=pod_parent, resources=resources) as c:
        if not host.is_unified:
            assert _v1_file(host, "memory", c.cgroup, "memory.limit_in_bytes") == str(64 << 20)
        assert read_resources(host, c.cgroup).memory_limit_in_bytes == 64 << 20
        deadline = time.monotonic() + 10
        while (stats := read_stats(host, c.cgroup)).page_faults in (None, 0):
            assert time.monotonic() < deadline
            time.sleep(0.1)
        assert stats.memory_usage_bytes and stats.memory_usage_bytes > 0
        assert stats.memory_working_set_bytes is not None
        assert stats.memory_available_bytes is not None
        assert stats.memory_available_bytes <= 64 << 20
        assert stats.memory_rss_bytes is not None
        assert stats.oom_kills == 0


def test_memory_hog_is_oom_killed(
    host: CgroupHost, runc: Runc, rootfs: Path, tmp_path: Path, pod_parent: str
) -> None:
    resources = oci_resources(LinuxResources(memory_limit_in_bytes=16 << 20), host)
    hog = ["dd", "if=/dev/zero", "of=/dev/null", "bs=64M", "count=1"]
    with running(runc, rootfs, tmp_path, hog, parent=pod_parent, resources=resources) as c:
        _wait_stopped(runc, c.id)
        stats = read_stats(host, c.cgroup)
        assert stats.oom_kills is not None and stats.oom_kills >= 1
        if not host.is_unified:
            oom_control = _v1_file(host, "memory", c.cgroup, "memory.oom_control")
            assert "oom_kill 1" in oom_control.splitlines()


def test_pod_cgroup_counts_every_container(
    host: CgroupHost, runc: Runc, rootfs: Path, tmp_path: Path, pod_parent: str
) -> None:
    with (
        running(runc, rootfs, tmp_path, SLEEP, parent=pod_parent) as first,
        running(runc, rootfs, tmp_path, BURN, parent=pod_parent) as second,
    ):
        pod = read_stats(host, CgroupfsDriver().parent_cgroup(pod_parent))
        assert pod.process_count == 2
        time.sleep(0.3)
        pod = read_stats(host, pod_parent)
        busy = read_stats(host, second.cgroup)
        idle = read_stats(host, first.cgroup)
        assert pod.cpu_usage_core_ns is not None and busy.cpu_usage_core_ns is not None
        assert idle.cpu_usage_core_ns is not None
        assert pod.cpu_usage_core_ns >= busy.cpu_usage_core_ns + idle.cpu_usage_core_ns
        with pytest.raises(FailedPrecondition, match="still has processes"):
            remove_cgroup(host, pod_parent)


async def test_interface_counters_come_from_the_container_namespace(
    host: CgroupHost, runc: Runc, rootfs: Path, tmp_path: Path, pod_parent: str
) -> None:
    with running(runc, rootfs, tmp_path, SLEEP, parent=pod_parent) as c:
        pid = (await asyncio.to_thread(runc.state, c.id))["pid"]
        by_pid = await interfaces_of_pid(pid)
        assert [interface.name for interface in by_pid] == ["lo"]
        before = by_pid[0].tx_packets
        # runc leaves the new namespace's loopback down; a refused connection on it, once
        # up, still sends packets that only this namespace's counters see.
        await asyncio.to_thread(
            subprocess.run,
            ["nsenter", f"--net=/proc/{pid}/ns/net", "/bin/busybox", "ip", "link", "set", "lo",
             "up"],
            check=True, timeout=RUNC_TIMEOUT,
        )
        await asyncio.to_thread(
            runc, "exec", c.id, "sh", "-c", "echo hi | nc -w 1 127.0.0.1 9 || true"
        )
        by_path = await interfaces_of_netns(f"/proc/{pid}/ns/net")
        assert [interface.name for interface in by_path] == ["lo"]
        assert by_path[0].tx_packets > before


def test_runtime_default_seccomp_blocks_unshare_but_not_ordinary_work(
    host: CgroupHost, runc: Runc, rootfs: Path, tmp_path: Path, pod_parent: str
) -> None:
    script = ["sh", "-c", "unshare -U true; echo unshare=$?; "
              "ls /bin/sh && echo sum=$((6 * 7)) && echo ordinary=ok"]
    with running(
        runc, rootfs, tmp_path, script, parent=pod_parent, detach=False, seccomp=False
    ) as unconfined:
        assert "unshare=0" in unconfined.output, unconfined.output
    with running(
        runc, rootfs, tmp_path, script, parent=pod_parent, detach=False, seccomp=True
    ) as confined:
        output = confined.output
        assert "unshare=1" in output, output
        assert "ordinary=ok" in output, output


def test_localhost_profile_file_is_enforced(
    runc: Runc, rootfs: Path, tmp_path: Path, pod_parent: str
) -> None:
    # Docker form: everything allowed but chdir, which fails with EACCES (13).
    profile_path = tmp_path / "deny-chdir.json"
    profile_path.write_text(json.dumps({
        "defaultAction": "SCMP_ACT_ALLOW",
        "archMap": [{"architecture": "SCMP_ARCH_X86_64", "subArchitectures": ["SCMP_ARCH_X86"]},
                    {"architecture": "SCMP_ARCH_AARCH64", "subArchitectures": ["SCMP_ARCH_ARM"]}],
        "syscalls": [{"names": ["chdir"], "action": "SCMP_ACT_ERRNO", "errnoRet": 13}],
    }))
    profile = load_localhost_profile(str(profile_path), ["CAP_KILL"])
    script = ["sh", "-c", "cd /bin; echo cd=$?; echo still=running"]
    with running(
        runc, rootfs, tmp_path, script, parent=pod_parent, detach=False, seccomp=profile
    ) as c:
        assert "Permission denied" in c.output, c.output
        assert "cd=0" not in c.output, c.output
        assert "still=running" in c.output, c.output


async def test_service_end_to_end_for_a_pod_without_a_parent(
    runc: Runc, rootfs: Path, tmp_path: Path
) -> None:
    service = await CgroupService.detect("cgroupfs")
    sandbox_id = f"it{uuid.uuid4().hex[:10]}"
    parent = service.sandbox_parent("", sandbox_id)
    assert parent == f"/crisp/pod-{sandbox_id}"
    try:
        resources = service.oci_resources(LinuxResources(cpu_quota=30_000, cpu_period=100_000))
        with running(runc, rootfs, tmp_path, BURN, parent=parent, resources=resources) as c:
            path = service.cgroups_path(parent, c.id)
            pid = (await asyncio.to_thread(runc.state, c.id))["pid"]
            limits = await service.container_resources(path, pid)
            assert limits.cpu_quota == 30_000
            assert limits.oom_score_adj == service.oom_score_adj(-999)

            first = await service.container_usage(c.id, path)
            assert first.cpu_nano_cores is None
            await asyncio.sleep(1.5)
            batch = await service.containers_usage({c.id: path, "gone": path + "-gone"})
            assert set(batch) == {c.id}
            rate = batch[c.id].cpu_nano_cores
            assert rate is not None and 100_000_000 < rate < 400_000_000, rate

            assert batch[c.id].stats.process_count is None  # CRI's container stats lack it
            pods = await service.pods_usage({sandbox_id: parent, "gone": parent + "-gone"})
            assert set(pods) == {sandbox_id}
            assert pods[sandbox_id].stats.process_count == 1
            service.forget(c.id)
            assert (await service.container_usage(c.id, path)).cpu_nano_cores is None
        await service.release_sandbox_parent(parent)
        assert await service.pods_usage({sandbox_id: parent}) == {}
    finally:
        remove_cgroup(service.host, parent)


@pytest.mark.skipif(
    Path("/run/systemd/system").is_dir(),
    reason="systemd runs here; the refusal is for hosts without it",
)
async def test_service_refuses_systemd_where_systemd_is_not_init() -> None:
    with pytest.raises(FailedPrecondition, match="systemd is not running"):
        await CgroupService.detect("systemd")
