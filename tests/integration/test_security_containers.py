"""Security contexts applied for real, checked from inside containers run by a real daemon.

Capabilities, no_new_privs, read-only rootfs, masked and read-only paths, privileged
containers and their devices, seccomp (RuntimeDefault and Localhost), AppArmor and SELinux
refusals, sysctls and RunAsNonRoot (user namespaces have test_user_namespaces.py).
"""

from __future__ import annotations

import json
import tempfile
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest

from crisp.api import cri_pb2
from tests.support.image_builder import ImageConfig, busybox_image, push_image
from tests.support.pods import PodsEnv, pods_environment

pytestmark = pytest.mark.integration

# Bit numbers of the capabilities the tests look at (linux/capability.h).
CAP_BITS = {
    "CHOWN": 0, "DAC_OVERRIDE": 1, "FOWNER": 3, "FSETID": 4, "KILL": 5, "SETGID": 6,
    "SETUID": 7, "SETPCAP": 8, "NET_BIND_SERVICE": 10, "NET_RAW": 13, "SYS_CHROOT": 18,
    "MKNOD": 27, "AUDIT_WRITE": 29, "SETFCAP": 31,
}
DEFAULT_MASK = sum(1 << bit for bit in CAP_BITS.values())
NO_HOST_DEVICES = "nodev"


@pytest.fixture(scope="module")
def env() -> Iterator[PodsEnv]:
    extra = (f"[runtimes.runc]\n[runtimes.{NO_HOST_DEVICES}]\n"
             "privileged_without_host_devices = true\n")
    with tempfile.TemporaryDirectory(prefix="crisp-sec-") as base, \
            pods_environment(Path(base), extra_config=extra) as environment:
        yield environment


@pytest.fixture(scope="module")
def pod(env: PodsEnv) -> Iterator[str]:
    pod_id = env.run_pod()
    yield pod_id
    env.remove_pod(pod_id)


@pytest.fixture(scope="module")
def privileged_pod(env: PodsEnv) -> Iterator[str]:
    config = env.pod_config()
    config.linux.security_context.privileged = True
    pod_id = env.run_pod(config)
    yield pod_id
    env.remove_pod(pod_id)


@pytest.fixture(scope="module")
def nonroot_image(env: PodsEnv) -> str:
    registry = env.busybox.split("/", 1)[0]
    push_image(f"http://{registry}", "test/nonroot", "latest",
               busybox_image(ImageConfig(user="1000:1000")))
    image = f"{registry}/test/nonroot:latest"
    env.daemon.images.PullImage(cri_pb2.PullImageRequest(image=cri_pb2.ImageSpec(image=image)))
    return image


def run(env: PodsEnv, pod: str, name: str, script: str,
        security: cri_pb2.LinuxContainerSecurityContext | None = None,
        **fields: object) -> tuple[int, list[str]]:
    """Run ``sh -c script`` to its end; its exit code and output lines."""
    config = env.container_config(name, ["sh", "-c", script], **fields)
    if security is not None:
        config.linux.security_context.MergeFrom(security)
    status = env.wait_exited(env.run_container(pod, config))
    lines = [line.split(" ", 3)[3] for line in Path(status.log_path).read_text().splitlines()]
    return status.exit_code, lines


def refused(env: PodsEnv, pod: str, config: cri_pb2.ContainerConfig) -> grpc.RpcError:
    with pytest.raises(grpc.RpcError) as error:
        env.runtime.CreateContainer(cri_pb2.CreateContainerRequest(
            pod_sandbox_id=pod, config=config, sandbox_config=cri_pb2.PodSandboxConfig()))
    return error.value


def cap_mask(lines: list[str], field: str) -> int:
    (value,) = [line.split()[1] for line in lines if line.startswith(f"{field}:")]
    return int(value, 16)


def caps(add: list[str] = [], drop: list[str] = []) -> cri_pb2.LinuxContainerSecurityContext:  # noqa: B006
    return cri_pb2.LinuxContainerSecurityContext(
        capabilities=cri_pb2.Capability(add_capabilities=add, drop_capabilities=drop))


STATUS = "grep -E '^(CapEff|CapBnd|NoNewPrivs|Seccomp):' /proc/self/status"


# Capabilities -------------------------------------------------------------------------------


def test_default_capabilities_are_containerds(env: PodsEnv, pod: str) -> None:
    code, lines = run(env, pod, "default-caps", STATUS)
    assert code == 0
    assert cap_mask(lines, "CapEff") == DEFAULT_MASK
    assert cap_mask(lines, "CapBnd") == DEFAULT_MASK
    assert "NoNewPrivs:\t0" in lines and "Seccomp:\t0" in lines


def test_dropping_net_raw_stops_raw_sockets(env: PodsEnv, pod: str) -> None:
    # ping must open a raw ICMP socket: a fresh network namespace's ping_group_range ("1 0")
    # allows no ICMP datagram sockets. arping opens a raw packet socket. Only arping's
    # errors reach the log.
    probe = "echo groups=$(cat /proc/sys/net/ipv4/ping_group_range); " \
            "ping -c1 -W2 127.0.0.1 >/dev/null 2>&1; echo ping=$?; " \
            "arping -c1 -w1 -I lo 127.0.0.1 2>&1 | head -n1; " + STATUS
    _, lines = run(env, pod, "with-net-raw", probe)
    assert "groups=1 0" in lines
    assert "ping=0" in lines
    assert not any("Operation not permitted" in line for line in lines), lines
    assert cap_mask(lines, "CapEff") & (1 << CAP_BITS["NET_RAW"])
    _, lines = run(env, pod, "without-net-raw", probe, caps(drop=["NET_RAW"]))
    assert "ping=0" not in lines and any(line.startswith("ping=") for line in lines)
    assert any("Operation not permitted" in line for line in lines), lines
    assert cap_mask(lines, "CapEff") == DEFAULT_MASK & ~(1 << CAP_BITS["NET_RAW"])


def test_drop_all_then_add_one(env: PodsEnv, pod: str) -> None:
    _, lines = run(env, pod, "only-bind", STATUS + "; chown 1 /tmp && echo chowned",
                      caps(add=["NET_BIND_SERVICE"], drop=["ALL"]))
    assert cap_mask(lines, "CapEff") == 1 << CAP_BITS["NET_BIND_SERVICE"]
    assert cap_mask(lines, "CapBnd") == 1 << CAP_BITS["NET_BIND_SERVICE"]
    assert "chowned" not in lines


def test_added_capability_works(env: PodsEnv, pod: str) -> None:
    # NET_ADMIN lets the container bring an interface of its pod down and up.
    script = "ip link set lo mtu 1400 && echo changed"
    assert "changed" not in run(env, pod, "no-net-admin", script)[1]
    assert "changed" in run(env, pod, "net-admin", script + "; ip link set lo mtu 65536",
                            caps(add=["CAP_NET_ADMIN"]))[1]


def test_unknown_capability_is_refused(env: PodsEnv, pod: str) -> None:
    config = env.container_config("bad-cap", ["true"])
    config.linux.security_context.MergeFrom(caps(add=["FLY"]))
    error = refused(env, pod, config)
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT and "FLY" in str(error.details())


# no_new_privs, read-only rootfs, masked and read-only paths ---------------------------------


def test_no_new_privs(env: PodsEnv, pod: str) -> None:
    _, lines = run(env, pod, "nnp", STATUS,
                   cri_pb2.LinuxContainerSecurityContext(no_new_privs=True))
    assert "NoNewPrivs:\t1" in lines


def test_readonly_rootfs_refuses_writes(env: PodsEnv, pod: str) -> None:
    _, lines = run(env, pod, "ro-root", "touch /etc/written 2>&1; echo rc=$?",
                   cri_pb2.LinuxContainerSecurityContext(readonly_rootfs=True))
    assert "rc=1" in lines and any("Read-only file system" in line for line in lines)
    assert "rc=0" in run(env, pod, "rw-root", "touch /etc/written; echo rc=$?")[1]


# Host files that are masked by default, exist on every kernel and are not empty on the host.
PORT_START = "/proc/sys/net/ipv4/ip_unprivileged_port_start"
PATHS_PROBE = (
    "echo timer_list=$(wc -c < /proc/timer_list); ls /sys/firmware | wc -l | sed s/^/firmware=/;"
    f" echo 1000 2>&1 > {PORT_START}; echo sys=$?;"
    " echo 1 > /proc/sysrq-trigger 2>&1; echo sysrq=$?"
)


def test_default_masked_and_readonly_paths(env: PodsEnv, pod: str) -> None:
    assert Path("/proc/timer_list").stat() and any(Path("/sys/firmware").iterdir())
    _, lines = run(env, pod, "paths", PATHS_PROBE)
    assert "timer_list=0" in lines and "firmware=0" in lines
    assert "sys=1" in lines and "sysrq=1" in lines
    assert any("Read-only file system" in line for line in lines), lines


def test_cri_path_lists_replace_the_defaults(env: PodsEnv, pod: str) -> None:
    security = cri_pb2.LinuxContainerSecurityContext(masked_paths=["/proc/cpuinfo"],
                                                     readonly_paths=["/proc/sysrq-trigger"])
    _, lines = run(env, pod, "own-paths", f"echo cpuinfo=$(wc -c < /proc/cpuinfo); "
                   f"{PATHS_PROBE}; echo port=$(cat {PORT_START})", security)
    assert "cpuinfo=0" in lines
    assert "timer_list=0" not in lines and "firmware=0" not in lines
    # /proc/sys is writable (the pod's own network namespace), sysrq-trigger is read-only.
    assert "sys=0" in lines and "port=1000" in lines
    assert "sysrq=1" in lines


# Privileged ---------------------------------------------------------------------------------


def own_bounding_set() -> int:
    """Every capability the daemon (run by this same root) has: what "all" means."""
    return cap_mask(Path("/proc/self/status").read_text().splitlines(), "CapBnd")


def privileged() -> cri_pb2.LinuxContainerSecurityContext:
    return cri_pb2.LinuxContainerSecurityContext(privileged=True)


def test_privileged_container_has_all_caps_and_host_devices(env: PodsEnv,
                                                            privileged_pod: str) -> None:
    script = (STATUS + "; ls /dev/kmsg /dev/loop-control; "
              "echo timer_list=$(wc -c < /proc/timer_list)")
    code, lines = run(env, privileged_pod, "privileged", script, privileged())
    assert code == 0, lines
    assert cap_mask(lines, "CapEff") == own_bounding_set()
    assert "/dev/kmsg" in lines and "/dev/loop-control" in lines
    assert "timer_list=0" not in lines  # not masked
    assert "Seccomp:\t0" in lines


def test_privileged_without_host_devices_handler(env: PodsEnv) -> None:
    config = env.pod_config()
    config.linux.security_context.privileged = True
    pod_id = str(env.runtime.RunPodSandbox(cri_pb2.RunPodSandboxRequest(
        config=config, runtime_handler=NO_HOST_DEVICES)).pod_sandbox_id)
    try:
        _, lines = run(env, pod_id, "no-devices", STATUS + "; ls /dev/kmsg 2>&1",
                       privileged())
        assert cap_mask(lines, "CapEff") == own_bounding_set()
        assert any("No such file" in line for line in lines), lines
    finally:
        env.remove_pod(pod_id)


def test_privileged_container_needs_a_privileged_pod(env: PodsEnv, pod: str) -> None:
    config = env.container_config("not-allowed", ["true"])
    config.linux.security_context.privileged = True
    error = refused(env, pod, config)
    assert error.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert "privileged pod sandbox" in str(error.details())


# Seccomp ------------------------------------------------------------------------------------


def seccomp(kind: int, ref: str = "") -> cri_pb2.LinuxContainerSecurityContext:
    return cri_pb2.LinuxContainerSecurityContext(
        seccomp=cri_pb2.SecurityProfile(profile_type=kind, localhost_ref=ref))  # type: ignore[arg-type]


def test_runtime_default_seccomp_blocks_unshare(env: PodsEnv, pod: str) -> None:
    script = "unshare -U true 2>&1; echo rc=$?; " + STATUS
    _, lines = run(env, pod, "unconfined", script, seccomp(cri_pb2.SecurityProfile.Unconfined))
    assert "rc=0" in lines and "Seccomp:\t0" in lines
    _, lines = run(env, pod, "runtime-default", script,
                   seccomp(cri_pb2.SecurityProfile.RuntimeDefault))
    assert "rc=0" not in lines and "Seccomp:\t2" in lines
    assert any("Operation not permitted" in line for line in lines), lines
    # The deprecated string form means the same.
    _, lines = run(env, pod, "legacy-default", script,
                   cri_pb2.LinuxContainerSecurityContext(seccomp_profile_path="runtime/default"))
    assert "rc=0" not in lines and "Seccomp:\t2" in lines


def test_localhost_seccomp_profile_is_enforced(env: PodsEnv, pod: str, tmp_path: Path) -> None:
    profile = tmp_path / "no-mkdir.json"
    profile.write_text(json.dumps({
        "defaultAction": "SCMP_ACT_ALLOW",
        "syscalls": [{"names": ["mkdir", "mkdirat"], "action": "SCMP_ACT_ERRNO"}],
    }))
    script = "mkdir /tmp/d 2>&1; echo rc=$?; touch /tmp/f && echo touched"
    _, lines = run(env, pod, "localhost", script,
                   seccomp(cri_pb2.SecurityProfile.Localhost, str(profile)))
    assert "rc=1" in lines and "touched" in lines
    assert any("Operation not permitted" in line for line in lines), lines
    config = env.container_config("missing-profile", ["true"])
    config.linux.security_context.MergeFrom(
        seccomp(cri_pb2.SecurityProfile.Localhost, str(tmp_path / "absent.json")))
    error = refused(env, pod, config)
    assert "absent.json" in str(error.details())


# AppArmor, SELinux --------------------------------------------------------------------------


def test_apparmor_profile_on_a_host_without_apparmor(env: PodsEnv, pod: str) -> None:
    if Path("/sys/module/apparmor/parameters/enabled").exists():
        pytest.skip("this host has AppArmor; the refusal is for hosts without it")
    config = env.container_config("apparmor", ["true"])
    config.linux.security_context.apparmor.CopyFrom(cri_pb2.SecurityProfile(
        profile_type=cri_pb2.SecurityProfile.Localhost, localhost_ref="my-profile"))
    error = refused(env, pod, config)
    assert error.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert "my-profile" in str(error.details()) and "AppArmor is not enabled" in str(
        error.details())
    code, _ = run(env, pod, "apparmor-default", "true", cri_pb2.LinuxContainerSecurityContext(
        apparmor=cri_pb2.SecurityProfile(profile_type=cri_pb2.SecurityProfile.RuntimeDefault)))
    assert code == 0


def test_selinux_options_on_a_host_without_selinux(env: PodsEnv, pod: str) -> None:
    if Path("/sys/fs/selinux/enforce").exists():
        pytest.skip("this host has SELinux")
    config = env.container_config("selinux", ["true"])
    config.linux.security_context.selinux_options.level = "s0:c1,c2"
    error = refused(env, pod, config)
    assert error.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert "SELinux is not enabled" in str(error.details())


# Sysctls ------------------------------------------------------------------------------------


def test_namespaced_sysctls_are_applied(env: PodsEnv) -> None:
    config = env.pod_config()
    config.linux.sysctls["kernel.shmmni"] = "1234"
    config.linux.sysctls["net/ipv4/ip_local_port_range"] = "20000 30000"
    pod_id = env.run_pod(config)
    try:
        _, lines = run(env, pod_id, "sysctls", "cat /proc/sys/kernel/shmmni "
                       "/proc/sys/net/ipv4/ip_local_port_range")
        assert lines[0] == "1234" and lines[1].split() == ["20000", "30000"]
    finally:
        env.remove_pod(pod_id)


@pytest.mark.parametrize(("key", "network", "ipc", "why"), [
    ("kernel.panic", cri_pb2.POD, cri_pb2.POD, "not namespaced"),
    ("net.ipv4.ip_forward", cri_pb2.NODE, cri_pb2.POD, "host's network"),
    ("kernel.shmmax", cri_pb2.POD, cri_pb2.NODE, "host's IPC"),
])
def test_sysctls_the_pod_does_not_own_are_refused(env: PodsEnv, key: str, network: int,
                                                  ipc: int, why: str) -> None:
    config = env.pod_config(network=network, ipc=ipc)
    config.linux.sysctls[key] = "1"
    with pytest.raises(grpc.RpcError) as error:
        env.run_pod(config)
    assert error.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert key in str(error.value.details()) and why in str(error.value.details())


# RunAsNonRoot (user namespaces: test_user_namespaces.py) ------------------------------------


def test_image_user_runs_and_is_reported_for_the_kubelets_run_as_non_root_check(
        env: PodsEnv, pod: str, nonroot_image: str) -> None:
    code, lines = run(env, pod, "uid-image", "id -u", image=nonroot_image)
    assert (code, lines) == (0, ["1000"])
    # The kubelet checks RunAsNonRoot itself from ImageStatus: the uid must be there.
    status = env.daemon.images.ImageStatus(cri_pb2.ImageStatusRequest(
        image=cri_pb2.ImageSpec(image=nonroot_image)))
    assert status.image.uid.value == 1000


def test_pod_security_context_applies_to_the_infra_process(env: PodsEnv) -> None:
    config = env.pod_config(pid=cri_pb2.POD)
    context = config.linux.security_context
    context.run_as_user.value = 65534
    context.run_as_group.value = 65534
    context.seccomp.profile_type = cri_pb2.SecurityProfile.RuntimeDefault
    pod_id = env.run_pod(config)
    try:
        # In the pod's shared PID namespace, the infra process is pid 1.
        _, lines = run(env, pod_id, "look-at-infra",
                       "grep -E '^(Uid|Gid|Seccomp):' /proc/1/status", pid=cri_pb2.POD)
        assert lines[0].split()[1:] == ["65534"] * 4
        assert lines[1].split()[1:] == ["65534"] * 4
        assert lines[2] == "Seccomp:\t2"
    finally:
        env.remove_pod(pod_id)
