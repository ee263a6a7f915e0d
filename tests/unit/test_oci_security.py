"""Security context rules: capabilities, paths, sysctls, LSMs, user namespaces, devices."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from crisp.errors import FailedPrecondition, InvalidArgument
from crisp.oci.model import (
    ContainerRequest,
    DeviceRequest,
    IDMapping,
    ImageDefaults,
    NamespaceMode,
    ProcessUser,
    ProfileKind,
    SecurityProfile,
    SecurityRequest,
    SELinuxOptions,
    UserNamespace,
)
from crisp.oci.seccomp import SeccompKind
from crisp.oci.security import (
    ALL_CAPABILITIES,
    APPARMOR_DEFAULT_PROFILE,
    DEFAULT_CAPABILITIES,
    DEFAULT_MASKED_PATHS,
    DEFAULT_READONLY_PATHS,
    HostSecurity,
    SecurityPlan,
    apparmor_profile,
    capabilities_of_mask,
    capability_name,
    check_runtime_userns,
    check_userns,
    check_userns_support,
    container_capabilities,
    detect_host_security,
    host_devices,
    masked_and_readonly_paths,
    normalize_sysctl,
    own_capabilities,
    parse_legacy_apparmor,
    plan_security,
    seccomp_request,
    selinux_label,
    validate_sysctls,
)
from crisp.oci.spec import PodPaths, SpecInputs, build_spec

NO_LSM = HostSecurity(max_user_namespaces=100)
APPARMOR = HostSecurity(apparmor=True,
                        apparmor_profiles=frozenset({"mine", APPARMOR_DEFAULT_PROFILE}))
SELINUX = HostSecurity(selinux=True,
                       selinux_default_process_label="system_u:system_r:container_t:s0")
IMAGE = ImageDefaults(reference="busybox", cmd=["sh"])


# Capabilities -------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["net_raw", "NET_RAW", "CAP_NET_RAW", " cap_net_raw "])
def test_capability_names_with_or_without_prefix(name: str) -> None:
    assert capability_name(name) == "CAP_NET_RAW"


def test_unknown_capability_is_refused_by_name() -> None:
    with pytest.raises(InvalidArgument, match="NET_MAGIC"):
        capability_name("NET_MAGIC")


EVERY = frozenset(ALL_CAPABILITIES)
NO_SYS_RESOURCE = EVERY - {"CAP_SYS_RESOURCE"}


def test_default_set_is_containerds() -> None:
    assert container_capabilities(False, [], [], EVERY) == DEFAULT_CAPABILITIES
    assert len(DEFAULT_CAPABILITIES) == 14


def test_drop_all_then_add_one_leaves_exactly_that_one() -> None:
    assert container_capabilities(False, ["NET_BIND_SERVICE"], ["ALL"], EVERY) == [
        "CAP_NET_BIND_SERVICE"]


def test_add_all_then_drop_one() -> None:
    caps = container_capabilities(False, ["all"], ["chown"], EVERY)
    assert set(caps) == EVERY - {"CAP_CHOWN"}


def test_add_and_drop_individual_capabilities() -> None:
    caps = container_capabilities(False, ["SYS_ADMIN", "CAP_NET_ADMIN"], ["NET_RAW"], EVERY)
    assert "CAP_SYS_ADMIN" in caps and "CAP_NET_ADMIN" in caps and "CAP_NET_RAW" not in caps
    assert len(caps) == len(DEFAULT_CAPABILITIES) + 1


def test_privileged_gets_every_capability_whatever_it_drops() -> None:
    assert container_capabilities(True, [], ["ALL"], EVERY) == ALL_CAPABILITIES


def test_every_capability_is_every_one_crisp_holds() -> None:
    assert "CAP_SYS_RESOURCE" not in container_capabilities(True, [], [], NO_SYS_RESOURCE)
    assert set(container_capabilities(False, ["ALL"], [], NO_SYS_RESOURCE)) == NO_SYS_RESOURCE
    with pytest.raises(FailedPrecondition, match="CAP_SYS_RESOURCE"):
        container_capabilities(False, ["SYS_RESOURCE"], [], NO_SYS_RESOURCE)


def test_capability_masks_and_own_set() -> None:
    assert capabilities_of_mask(0x2001) == ["CAP_CHOWN", "CAP_NET_RAW"]
    assert capabilities_of_mask((1 << 41) - 1) == ALL_CAPABILITIES
    assert "CAP_CHOWN" in own_capabilities()


# Masked and read-only paths -----------------------------------------------------------------


def test_default_masked_and_readonly_paths() -> None:
    masked, readonly = masked_and_readonly_paths(SecurityRequest())
    assert masked == DEFAULT_MASKED_PATHS and "/proc/kcore" in masked
    assert readonly == DEFAULT_READONLY_PATHS and "/proc/sys" in readonly


def test_cri_lists_override_and_privileged_clears_them() -> None:
    own = SecurityRequest(masked_paths=["/proc/x"], readonly_paths=["/proc/y"])
    assert masked_and_readonly_paths(own) == (["/proc/x"], ["/proc/y"])
    assert masked_and_readonly_paths(SecurityRequest(privileged=True,
                                                     masked_paths=["/proc/x"])) == ([], [])


# Sysctls ------------------------------------------------------------------------------------


def test_namespaced_sysctls_pass() -> None:
    wanted = {"net.ipv4.ip_forward": "1", "kernel.shmmax": "65536", "kernel.sem": "1 2 3 4",
              "fs.mqueue.msg_max": "20", "kernel.msgmax": "9000"}
    assert validate_sysctls(wanted, host_network=False, host_ipc=False) == wanted


def test_slash_form_is_normalized() -> None:
    assert normalize_sysctl("net/ipv4/ip_forward") == "net.ipv4.ip_forward"
    assert normalize_sysctl("net/ipv4/conf/eth0.100/forwarding") == \
        "net.ipv4.conf.eth0/100.forwarding"
    assert normalize_sysctl("net.ipv4.conf.eth0/100.forwarding") == \
        "net.ipv4.conf.eth0/100.forwarding"


@pytest.mark.parametrize(("name", "host_network", "host_ipc", "match"), [
    ("kernel.panic", False, False, "not namespaced"),
    ("vm.swappiness", False, False, "not namespaced"),
    ("net.ipv4.ip_forward", True, False, "host's network"),
    ("kernel.shmmax", False, True, "host's IPC"),
    ("fs.mqueue.msg_max", False, True, "host's IPC"),
    ("net", False, False, "not a valid"),
])
def test_sysctls_outside_the_pods_namespaces_are_refused(name: str, host_network: bool,
                                                         host_ipc: bool, match: str) -> None:
    with pytest.raises(InvalidArgument, match=match) as error:
        validate_sysctls({name: "1"}, host_network=host_network, host_ipc=host_ipc)
    assert repr(name) in str(error.value)


def test_sysctl_values_must_be_one_line() -> None:
    with pytest.raises(InvalidArgument):
        validate_sysctls({"net.ipv4.ip_forward": "1\n2"}, host_network=False, host_ipc=False)
    with pytest.raises(InvalidArgument):
        validate_sysctls({"net.ipv4.ip_forward": ""}, host_network=False, host_ipc=False)


# AppArmor and SELinux -----------------------------------------------------------------------


def test_apparmor_without_apparmor_accepts_default_and_unconfined() -> None:
    for profile in (None, SecurityProfile(ProfileKind.RUNTIME_DEFAULT),
                    SecurityProfile(ProfileKind.UNCONFINED)):
        assert apparmor_profile(profile, NO_LSM, privileged=False) == ""


def test_apparmor_localhost_without_apparmor_is_a_failed_precondition() -> None:
    with pytest.raises(FailedPrecondition, match="AppArmor is not enabled"):
        apparmor_profile(SecurityProfile(ProfileKind.LOCALHOST, "localhost/mine"), NO_LSM,
                         privileged=False)


def test_apparmor_on_an_apparmor_host() -> None:
    assert apparmor_profile(SecurityProfile(ProfileKind.LOCALHOST, "mine"), APPARMOR,
                            privileged=False) == "mine"
    assert apparmor_profile(SecurityProfile(ProfileKind.RUNTIME_DEFAULT), APPARMOR,
                            privileged=False) == APPARMOR_DEFAULT_PROFILE
    assert apparmor_profile(SecurityProfile(ProfileKind.RUNTIME_DEFAULT), APPARMOR,
                            privileged=True) == ""
    with pytest.raises(FailedPrecondition, match="not loaded"):
        apparmor_profile(SecurityProfile(ProfileKind.LOCALHOST, "other"), APPARMOR,
                         privileged=False)
    with pytest.raises(FailedPrecondition, match=APPARMOR_DEFAULT_PROFILE):
        apparmor_profile(SecurityProfile(ProfileKind.RUNTIME_DEFAULT),
                         HostSecurity(apparmor=True), privileged=False)


def test_legacy_apparmor_strings() -> None:
    assert parse_legacy_apparmor("") is None
    assert parse_legacy_apparmor("runtime/default") == SecurityProfile(
        ProfileKind.RUNTIME_DEFAULT)
    assert parse_legacy_apparmor("localhost/x") == SecurityProfile(ProfileKind.LOCALHOST, "x")
    with pytest.raises(InvalidArgument):
        parse_legacy_apparmor("strict")


def test_selinux() -> None:
    assert selinux_label(None, NO_LSM) == ""
    with pytest.raises(FailedPrecondition, match="SELinux is not enabled"):
        selinux_label(SELinuxOptions(level="s0:c1,c2"), NO_LSM)
    assert selinux_label(SELinuxOptions(level="s0:c1,c2"), SELINUX) == \
        "system_u:system_r:container_t:s0:c1,c2"
    with pytest.raises(FailedPrecondition, match="partial"):
        selinux_label(SELinuxOptions(type="x_t"), HostSecurity(selinux=True))


def test_detect_host_security_reads_sys_proc_and_etc(tmp_path: Path) -> None:
    sys_root, proc_root, etc_root = tmp_path / "sys", tmp_path / "proc", tmp_path / "etc"
    (sys_root / "module/apparmor/parameters").mkdir(parents=True)
    (sys_root / "module/apparmor/parameters/enabled").write_text("Y\n")
    (sys_root / "kernel/security/apparmor").mkdir(parents=True)
    (sys_root / "kernel/security/apparmor/profiles").write_text(
        "crisp-default (enforce)\nmy profile (complain)\n")
    (sys_root / "fs/selinux").mkdir(parents=True)
    (sys_root / "fs/selinux/enforce").write_text("1")
    (etc_root / "selinux/targeted/contexts").mkdir(parents=True)
    (etc_root / "selinux/config").write_text("SELINUX=enforcing\nSELINUXTYPE=targeted\n")
    (etc_root / "selinux/targeted/contexts/lxc_contexts").write_text(
        'process = "system_u:system_r:container_t:s0"\n')
    (proc_root / "sys/user").mkdir(parents=True)
    (proc_root / "sys/user/max_user_namespaces").write_text("42\n")
    host = detect_host_security(sys_root, proc_root, etc_root)
    assert host == HostSecurity(apparmor=True,
                                apparmor_profiles=frozenset({"crisp-default", "my profile"}),
                                selinux=True,
                                selinux_default_process_label="system_u:system_r:container_t:s0",
                                max_user_namespaces=42)
    assert detect_host_security(tmp_path / "none", tmp_path / "none", tmp_path / "none") == \
        HostSecurity()


# User namespaces ----------------------------------------------------------------------------


def _pod_userns(uids: list[IDMapping], gids: list[IDMapping] | None = None) -> UserNamespace:
    return UserNamespace(mode=NamespaceMode.POD, uids=uids, gids=uids if gids is None else gids)


ONE = [IDMapping(host_id=1000, container_id=0, length=100000)]


@pytest.mark.parametrize(("userns", "says"), [
    (UserNamespace(mode=NamespaceMode.CONTAINER), "mode CONTAINER is not supported"),
    (UserNamespace(mode=NamespaceMode.TARGET), "mode TARGET is not supported"),
    (UserNamespace(mode=NamespaceMode.NODE, uids=ONE), "NODE takes no uid/gid mappings"),
    (_pod_userns([]), "exactly one uid mapping, got 0"),
    (_pod_userns([*ONE, IDMapping(host_id=2000, container_id=0, length=100000)]),
     "exactly one uid mapping, got 2"),
    (_pod_userns(ONE, []), "exactly one gid mapping, got 0"),
    (_pod_userns([IDMapping(host_id=1000, container_id=1, length=100000)]),
     r"container root \(id 0\) is unmapped"),
    (_pod_userns([IDMapping(host_id=0, container_id=0, length=100)]), "host id 0"),
    (_pod_userns([IDMapping(host_id=1000, container_id=0, length=0)]), "at least 1"),
    (_pod_userns([IDMapping(host_id=2**32 - 10, container_id=0, length=100)]), "runs past"),
])
def test_user_namespace_refusals_say_what_to_change(userns: UserNamespace, says: str) -> None:
    with pytest.raises(InvalidArgument, match=says):
        check_userns(userns)


def test_user_namespace_requests_crisp_runs() -> None:
    check_userns(None)
    check_userns(UserNamespace(mode=NamespaceMode.NODE))
    check_userns(_pod_userns(ONE))


def test_pod_user_namespace_needs_the_kernel() -> None:
    with pytest.raises(FailedPrecondition, match="max_user_namespaces"):
        check_userns_support(HostSecurity())
    with pytest.raises(FailedPrecondition, match="metacopy"):
        check_userns_support(HostSecurity(max_user_namespaces=5))
    check_userns_support(HostSecurity(max_user_namespaces=5, overlay_metacopy=True))


# Devices and the plan -----------------------------------------------------------------------


def test_host_devices_lists_dev_but_not_the_containers_own_mounts() -> None:
    devices = {d["path"]: d for d in host_devices()}
    assert devices["/dev/null"]["type"] == "c"
    assert (devices["/dev/null"]["major"], devices["/dev/null"]["minor"]) == (1, 3)
    assert not any(p.startswith(("/dev/pts/", "/dev/shm/")) for p in devices)
    assert "/dev/console" not in devices


async def test_privileged_container_needs_a_privileged_pod() -> None:
    with pytest.raises(FailedPrecondition, match="privileged pod sandbox"):
        await plan_security(SecurityRequest(privileged=True), sandbox_privileged=False,
                            without_host_devices=False, host=NO_LSM)


async def test_privileged_plan_has_host_devices_and_no_seccomp() -> None:
    security = SecurityRequest(privileged=True,
                               seccomp=SecurityProfile(ProfileKind.RUNTIME_DEFAULT))
    plan = await plan_security(security, sandbox_privileged=True,
                               without_host_devices=False, host=NO_LSM)
    assert plan.seccomp is None and plan.all_devices_allowed
    assert any(d["path"] == "/dev/null" for d in plan.host_devices)
    bare = await plan_security(security, sandbox_privileged=True,
                               without_host_devices=True, host=NO_LSM)
    assert bare.host_devices == [] and not bare.all_devices_allowed


async def test_seccomp_requests() -> None:
    assert seccomp_request(SecurityRequest()) == (SeccompKind.UNCONFINED, "")
    assert seccomp_request(SecurityRequest(seccomp_profile_path="docker/default")) == (
        SeccompKind.RUNTIME_DEFAULT, "")
    assert seccomp_request(SecurityRequest(
        seccomp=SecurityProfile(ProfileKind.LOCALHOST, "localhost//p.json"))) == (
        SeccompKind.LOCALHOST, "/p.json")
    with pytest.raises(InvalidArgument, match="localhost_ref"):
        seccomp_request(SecurityRequest(seccomp=SecurityProfile(ProfileKind.LOCALHOST)))
    plan = await plan_security(
        SecurityRequest(seccomp=SecurityProfile(ProfileKind.RUNTIME_DEFAULT)),
        sandbox_privileged=False, without_host_devices=False, host=NO_LSM)
    assert plan.seccomp is not None and plan.seccomp["defaultAction"] == "SCMP_ACT_ERRNO"


async def test_container_user_namespace_is_checked_with_the_host() -> None:
    security = SecurityRequest(userns=UserNamespace(mode=NamespaceMode.POD))
    with pytest.raises(InvalidArgument, match="exactly one uid mapping"):
        await plan_security(security, sandbox_privileged=False, without_host_devices=False,
                            host=NO_LSM)
    security = SecurityRequest(userns=UserNamespace(mode=NamespaceMode.POD, uids=ONE, gids=ONE))
    with pytest.raises(FailedPrecondition, match="metacopy"):
        await plan_security(security, sandbox_privileged=False, without_host_devices=False,
                            host=NO_LSM)


# The spec -----------------------------------------------------------------------------------


def _spec(security: SecurityRequest, plan: SecurityPlan,
          devices: list[DeviceRequest] | None = None) -> dict:  # type: ignore[type-arg]
    config = ContainerRequest(name="c", security=security, devices=devices or [])
    return build_spec(SpecInputs(config=config, image=IMAGE, rootfs="/rootfs",
                                 user=ProcessUser(0, 0), pod=PodPaths(network_ns="/ns/net"),
                                 cgroups_path="/crisp/c", security=plan))


def test_spec_takes_capabilities_seccomp_and_labels() -> None:
    spec = _spec(SecurityRequest(drop_capabilities=["ALL"], add_capabilities=["KILL"],
                                 no_new_privs=True, readonly_rootfs=True),
                 SecurityPlan(seccomp={"defaultAction": "SCMP_ACT_ERRNO"},
                              apparmor_profile="mine", selinux_label="a:b:c:d"))
    process = spec["process"]
    assert process["capabilities"] == {"bounding": ["CAP_KILL"], "effective": ["CAP_KILL"],
                                       "permitted": ["CAP_KILL"]}
    assert process["noNewPrivileges"] is True and spec["root"]["readonly"] is True
    assert process["apparmorProfile"] == "mine" and process["selinuxLabel"] == "a:b:c:d"
    assert spec["linux"]["seccomp"] == {"defaultAction": "SCMP_ACT_ERRNO"}
    assert spec["linux"]["maskedPaths"] == DEFAULT_MASKED_PATHS


def test_spec_of_a_privileged_container() -> None:
    host = [{"path": "/dev/null", "type": "c", "major": 1, "minor": 3, "fileMode": 0o666,
             "uid": 0, "gid": 0},
            {"path": "/dev/kmsg", "type": "c", "major": 1, "minor": 11, "fileMode": 0o644,
             "uid": 0, "gid": 0}]
    spec = _spec(SecurityRequest(privileged=True),
                 SecurityPlan(host_devices=host, all_devices_allowed=True),
                 devices=[DeviceRequest("/dev/null", "/dev/null", "r")])
    linux = spec["linux"]
    assert [d["path"] for d in linux["devices"]] == ["/dev/null", "/dev/kmsg"]
    assert linux["resources"]["devices"] == [{"allow": True, "access": "rwm"}]
    assert linux["maskedPaths"] == [] and linux["readonlyPaths"] == []
    assert "seccomp" not in linux
    bare = _spec(SecurityRequest(privileged=True), SecurityPlan())["linux"]
    assert bare["devices"] == []
    assert bare["resources"]["devices"] == [{"allow": False, "access": "rwm"}]


async def test_user_namespace_support_is_read_from_runtime_features(tmp_path: Path) -> None:
    def runtime(name: str, document: object) -> str:
        script = tmp_path / name
        script.write_text(f"#!/bin/sh\ncat <<'EOF'\n{json.dumps(document)}\nEOF\n")
        script.chmod(0o755)
        return str(script)

    await check_runtime_userns(runtime("runc", {"linux": {"namespaces": ["user", "pid"]}}))
    for path in (runtime("no-userns", {"linux": {"namespaces": ["pid"]}}),
                 str(tmp_path / "absent")):
        with pytest.raises(FailedPrecondition, match="reports the user namespace"):
            await check_runtime_userns(path)
