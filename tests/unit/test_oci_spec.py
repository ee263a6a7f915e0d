"""OCI spec generation from container configs: the pure parts, one concern at a time."""

from __future__ import annotations

from dataclasses import replace

import pytest

from crisp.cgroups import LinuxResources
from crisp.errors import InvalidArgument
from crisp.oci.model import (
    BindMount,
    ContainerRequest,
    DeviceRequest,
    IDMapping,
    ImageDefaults,
    NamespaceMode,
    ProcessUser,
    Propagation,
    SecurityRequest,
)
from crisp.oci.spec import (
    DEFAULT_CAPABILITIES,
    DEFAULT_PATH,
    PodPaths,
    SpecInputs,
    build_spec,
    merge_env,
    process_args,
)

IMAGE = ImageDefaults(reference="busybox", entrypoint=["/entry"], cmd=["default", "args"],
                      env=["PATH=/image/bin", "A=image"], working_dir="/work")
POD = PodPaths(network_ns="/run/ns/net", ipc_ns="/run/ns/ipc", uts_ns="/run/ns/uts",
               hostname_file="/pod/hostname", hosts_file="/pod/hosts",
               resolv_conf="/pod/resolv.conf", shm="/pod/shm", hostname="web")


def config(**fields: object) -> ContainerRequest:
    return ContainerRequest(name="c", **fields)  # type: ignore[arg-type]


def spec_of(cfg: ContainerRequest, pod: PodPaths = POD, floor: int = -1000) -> dict:  # type: ignore[type-arg]
    return build_spec(SpecInputs(config=cfg, image=IMAGE, rootfs="/rootfs",
                                 user=ProcessUser(1, 2, [3]), pod=pod,
                                 cgroups_path="/crisp/crisp-c", min_oom_score_adj=floor))


@pytest.mark.parametrize(("command", "args", "expected"), [
    ([], [], ["/entry", "default", "args"]),
    ([], ["x"], ["/entry", "x"]),
    (["/bin/sh"], [], ["/bin/sh"]),
    (["/bin/sh"], ["-c", "true"], ["/bin/sh", "-c", "true"]),
])
def test_command_and_args_follow_the_kubelet_rules(command: list[str], args: list[str],
                                                   expected: list[str]) -> None:
    assert process_args(config(command=command, args=args), IMAGE) == expected


def test_no_command_anywhere_is_invalid() -> None:
    empty = ImageDefaults(reference="scratch")
    with pytest.raises(InvalidArgument, match="scratch"):
        process_args(config(), empty)


def test_env_config_overrides_image_and_keeps_order() -> None:
    assert merge_env(["PATH=/p", "A=1", "B=2"], [("A", "x"), ("C", "3")]) == [
        "PATH=/p", "A=x", "B=2", "C=3"]
    assert merge_env([], []) == [f"PATH={DEFAULT_PATH}"]
    with pytest.raises(InvalidArgument):
        merge_env([], [("A=B", "x")])


def test_process_user_cwd_terminal_and_oom_score_clamp() -> None:
    spec = spec_of(config(tty=True, resources=LinuxResources(oom_score_adj=-998)), floor=-500)
    process = spec["process"]
    assert process["user"] == {"uid": 1, "gid": 2, "additionalGids": [3]}
    assert process["cwd"] == "/work"
    assert process["terminal"] is True
    assert process["oomScoreAdj"] == -500
    assert "HOSTNAME=web" in process["env"]
    raised = spec_of(config(resources=LinuxResources(oom_score_adj=500)))
    assert raised["process"]["oomScoreAdj"] == 500
    with pytest.raises(InvalidArgument, match="absolute"):
        spec_of(config(working_dir="relative"))


def test_namespaces_join_the_pod_by_path() -> None:
    namespaces = spec_of(config())["linux"]["namespaces"]
    assert {"type": "network", "path": "/run/ns/net"} in namespaces
    assert {"type": "ipc", "path": "/run/ns/ipc"} in namespaces
    assert {"type": "uts", "path": "/run/ns/uts"} in namespaces
    assert {"type": "pid"} in namespaces
    assert {"type": "mount"} in namespaces
    shared = spec_of(config(), PodPaths(pid_ns="/proc/7/ns/pid", pid_mode=NamespaceMode.POD))
    kinds = {n["type"]: n.get("path") for n in shared["linux"]["namespaces"]}
    assert kinds == {"mount": None, "pid": "/proc/7/ns/pid"}
    host = spec_of(config(), PodPaths(pid_mode=NamespaceMode.NODE))
    assert [n["type"] for n in host["linux"]["namespaces"]] == ["mount"]


def test_a_pod_user_namespace_is_joined_by_path_with_its_mappings() -> None:
    mapping = [IDMapping(host_id=200000, container_id=0, length=65536)]
    pod = replace(POD, user_ns="/run/ns/user", uid_mappings=mapping, gid_mappings=mapping)
    linux = spec_of(config(), pod)["linux"]
    assert {"type": "user", "path": "/run/ns/user"} in linux["namespaces"]
    expected = [{"containerID": 0, "hostID": 200000, "size": 65536}]
    assert linux["uidMappings"] == expected and linux["gidMappings"] == expected
    host = spec_of(config())["linux"]
    assert "uidMappings" not in host
    assert all(n["type"] != "user" for n in host["namespaces"])


def test_host_network_containers_bind_sysfs() -> None:
    sys_mount = next(m for m in spec_of(config(), PodPaths())["mounts"]
                     if m["destination"] == "/sys")
    assert sys_mount["type"] == "bind"


def test_pod_files_and_mounts_with_propagation() -> None:
    mounts = [BindMount("/data/sub", "/host/sub"), BindMount("/data", "/host", readonly=True),
              BindMount("/shared", "/s", propagation=Propagation.BIDIRECTIONAL),
              BindMount("/etc/hosts", "/custom/hosts")]
    spec = spec_of(config(mounts=mounts))
    by_destination = {m["destination"]: m for m in spec["mounts"]}
    assert by_destination["/etc/hostname"]["source"] == "/pod/hostname"
    assert by_destination["/etc/resolv.conf"]["source"] == "/pod/resolv.conf"
    assert by_destination["/etc/hosts"]["source"] == "/custom/hosts"
    assert by_destination["/dev/shm"]["source"] == "/pod/shm"
    assert "ro" in by_destination["/data"]["options"]
    assert "rprivate" in by_destination["/data"]["options"]
    assert "rshared" in by_destination["/shared"]["options"]
    assert spec["linux"]["rootfsPropagation"] == "rshared"
    order = [m["destination"] for m in spec["mounts"]]
    assert order.index("/data") < order.index("/data/sub")
    with pytest.raises(InvalidArgument):
        spec_of(config(mounts=[BindMount("relative", "/x")]))


def test_devices_are_added_and_allowed() -> None:
    spec = spec_of(config(devices=[DeviceRequest("/dev/mine", "/dev/null", "rw")]))
    (device,) = spec["linux"]["devices"]
    assert (device["path"], device["type"], device["major"], device["minor"]) == (
        "/dev/mine", "c", 1, 3)
    assert spec["linux"]["resources"]["devices"][-1] == {
        "allow": True, "type": "c", "major": 1, "minor": 3, "access": "rw"}
    with pytest.raises(InvalidArgument):
        spec_of(config(devices=[DeviceRequest("/dev/x", "/etc/passwd")]))
    with pytest.raises(InvalidArgument):
        spec_of(config(devices=[DeviceRequest("/dev/x", "/dev/null", "rwx")]))


def test_capabilities_and_privileged() -> None:
    caps = spec_of(config(security=SecurityRequest(add_capabilities=["NET_ADMIN"],
                                                   drop_capabilities=["KILL"])))
    bounding = caps["process"]["capabilities"]["bounding"]
    assert "CAP_NET_ADMIN" in bounding and "CAP_KILL" not in bounding
    assert set(DEFAULT_CAPABILITIES) - {"CAP_KILL"} <= set(bounding)
    privileged = spec_of(config(security=SecurityRequest(privileged=True)))
    assert "CAP_SYS_ADMIN" in privileged["process"]["capabilities"]["bounding"]
    assert privileged["linux"]["maskedPaths"] == []


def test_resources_and_cgroups_path() -> None:
    spec = spec_of(config(resources=LinuxResources(cpu_shares=512, cpu_quota=50000,
                                              cpu_period=100000,
                                              memory_limit_in_bytes=1 << 26)))
    resources = spec["linux"]["resources"]
    assert resources["cpu"] == {"shares": 512, "quota": 50000, "period": 100000}
    assert resources["memory"] == {"limit": 1 << 26}
    assert spec["linux"]["cgroupsPath"] == "/crisp/crisp-c"
    assert spec["root"] == {"path": "/rootfs", "readonly": False}


def test_pod_sysctls_reach_the_spec() -> None:
    pod = PodPaths(network_ns="/n", sysctls={"net.ipv4.ip_unprivileged_port_start": "0"})
    assert spec_of(config(), pod)["linux"]["sysctl"] == {
        "net.ipv4.ip_unprivileged_port_start": "0"}
    assert "sysctl" not in spec_of(config())["linux"]
