"""The host checks of ``crisp doctor`` against a made-up /proc and /sys."""

from __future__ import annotations

from pathlib import Path

from crisp.config import Config, parse
from crisp.doctor.checks import (
    Host,
    Status,
    cgroup_checks,
    kernel_checks,
    swap_check,
    sysctl_checks,
)


def fake_host(tmp_path: Path, sysctls: dict[str, str], swaps: str = "") -> Host:
    proc, sys = tmp_path / "proc", tmp_path / "sys"
    for key, value in sysctls.items():
        path = proc / "sys" / key.replace(".", "/")
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(value + "\n")
    proc.mkdir(parents=True, exist_ok=True)
    (proc / "swaps").write_text("Filename Type Size Used Priority\n" + swaps)
    (sys / "fs/cgroup").mkdir(parents=True)
    (sys / "fs/cgroup/cgroup.controllers").write_text("cpu memory\n")
    return Host(proc=proc, sys=sys, kubelet_config=tmp_path / "kubelet.yaml")


def test_a_sysctl_off_fails_with_its_fix(tmp_path: Path) -> None:
    host = fake_host(tmp_path, {"net.ipv4.ip_forward": "0",
                                "net.bridge.bridge-nf-call-iptables": "1"})
    checks = {c.name: c for c in sysctl_checks(host)}
    forward = checks["sysctl: net.ipv4.ip_forward"]
    assert forward.status is Status.FAIL and "sysctl -w net.ipv4.ip_forward=1" in forward.fix
    assert checks["sysctl: net.bridge.bridge-nf-call-iptables"].status is Status.OK


def test_an_absent_br_netfilter_sysctl_fails(tmp_path: Path) -> None:
    host = fake_host(tmp_path, {"net.ipv4.ip_forward": "1"})
    bridge = {c.name: c for c in sysctl_checks(host)}["sysctl: net.bridge.bridge-nf-call-iptables"]
    assert bridge.status is Status.FAIL and "absent" in bridge.detail


def test_swap_on_warns(tmp_path: Path) -> None:
    host = fake_host(tmp_path, {}, swaps="/swapfile file 1024 0 -2\n")
    check = swap_check(host)
    assert check.status is Status.WARN and "/swapfile" in check.detail
    assert swap_check(fake_host(tmp_path / "none", {})).status is Status.OK


def test_a_kubelet_on_another_cgroup_driver_fails(tmp_path: Path) -> None:
    host = fake_host(tmp_path, {})
    host.kubelet_config.write_text("kind: KubeletConfiguration\ncgroupDriver: systemd\n")
    config = parse('cgroup_manager = "cgroupfs"\n', "test")
    [kubelet] = [c for c in cgroup_checks(host, config) if c.name == "cgroups: kubelet driver"]
    assert kubelet.status is Status.FAIL and "systemd" in kubelet.detail


def test_a_kubelet_without_a_driver_means_cgroupfs(tmp_path: Path) -> None:
    host = fake_host(tmp_path, {})
    host.kubelet_config.write_text("kind: KubeletConfiguration\n")
    [kubelet] = [c for c in cgroup_checks(host, Config()) if c.name == "cgroups: kubelet driver"]
    assert kubelet.status is Status.OK


def test_user_namespace_pods_need_overlay_metacopy(tmp_path: Path) -> None:
    host = fake_host(tmp_path, {"user.max_user_namespaces": "100"})
    check = {c.name: c for c in kernel_checks(host)}["kernel: overlay metacopy"]
    assert check.status is Status.WARN and "CONFIG_OVERLAY_FS_METACOPY" in check.fix
    (host.sys / "module/overlay/parameters").mkdir(parents=True)
    (host.sys / "module/overlay/parameters/metacopy").write_text("N\n")
    check = {c.name: c for c in kernel_checks(host)}["kernel: overlay metacopy"]
    assert check.status is Status.OK
