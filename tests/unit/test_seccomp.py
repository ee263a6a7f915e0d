"""The RuntimeDefault seccomp profile's structure, and Localhost profile loading."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from crisp.errors import InvalidArgument
from crisp.oci.seccomp import (
    SeccompKind,
    host_kernel,
    load_localhost_profile,
    parse_legacy_profile_path,
    parse_profile,
    runtime_default_profile,
    seccomp_for_container,
)

DEFAULT_CAPS = [
    "CAP_CHOWN", "CAP_DAC_OVERRIDE", "CAP_FSETID", "CAP_FOWNER", "CAP_MKNOD", "CAP_NET_RAW",
    "CAP_SETGID", "CAP_SETUID", "CAP_SETFCAP", "CAP_SETPCAP", "CAP_NET_BIND_SERVICE",
    "CAP_SYS_CHROOT", "CAP_KILL", "CAP_AUDIT_WRITE",
]
NAMESPACE_FLAGS = 0x7E020000


def _unconditional(profile: dict[str, Any]) -> set[str]:
    """Syscalls allowed whatever their arguments."""
    return {
        name
        for rule in profile["syscalls"]
        if rule["action"] == "SCMP_ACT_ALLOW" and not rule.get("args")
        for name in rule["names"]
    }


def _rules_for(profile: dict[str, Any], name: str) -> list[dict[str, Any]]:
    return [rule for rule in profile["syscalls"] if name in rule["names"]]


@pytest.fixture(scope="module")
def amd64() -> dict[str, Any]:
    return runtime_default_profile(DEFAULT_CAPS, machine="x86_64", kernel_release="6.1.0-13")


def test_default_denies_with_eperm_on_all_x86_abis(amd64: dict[str, Any]) -> None:
    assert amd64["defaultAction"] == "SCMP_ACT_ERRNO"
    assert amd64["defaultErrnoRet"] == 1
    assert amd64["architectures"] == ["SCMP_ARCH_X86_64", "SCMP_ARCH_X86", "SCMP_ARCH_X32"]


def test_ordinary_syscalls_are_allowed(amd64: dict[str, Any]) -> None:
    allowed = _unconditional(amd64)
    for name in ("read", "write", "openat", "execve", "mmap", "futex", "exit_group",
                 "epoll_wait", "accept4", "getrandom", "clock_gettime", "rt_sigreturn",
                 "arch_prctl", "chroot", "ptrace", "io_uring_setup", "statx"):
        assert name in allowed, name
    assert len(allowed) > 300


def test_privileged_syscalls_are_denied_without_their_capability(amd64: dict[str, Any]) -> None:
    named = {name for rule in amd64["syscalls"] for name in rule["names"]}
    for name in ("unshare", "mount", "umount2", "setns", "bpf", "reboot", "init_module",
                 "kexec_load", "open_by_handle_at", "acct", "settimeofday", "perf_event_open",
                 "syslog", "kcmp", "iopl", "vhangup", "add_key", "keyctl", "userfaultfd"):
        assert name not in named, name


def test_clone_is_allowed_only_without_namespace_flags(amd64: dict[str, Any]) -> None:
    (clone,) = _rules_for(amd64, "clone")
    assert clone["action"] == "SCMP_ACT_ALLOW"
    assert clone["args"] == [{"index": 0, "value": NAMESPACE_FLAGS, "op": "SCMP_CMP_MASKED_EQ"}]
    (clone3,) = _rules_for(amd64, "clone3")
    assert clone3 == {"names": ["clone3"], "action": "SCMP_ACT_ERRNO", "errnoRet": 38}


def test_argument_checked_rules(amd64: dict[str, Any]) -> None:
    (socket,) = _rules_for(amd64, "socket")
    assert socket["args"] == [{"index": 0, "value": 40, "op": "SCMP_CMP_NE"}]
    personas = sorted(rule["args"][0]["value"] for rule in _rules_for(amd64, "personality"))
    assert personas == [0, 8, 0x20000, 0x20008, 0xFFFFFFFF]


def test_every_rule_is_plain_oci(amd64: dict[str, Any]) -> None:
    for rule in amd64["syscalls"]:
        assert set(rule) <= {"names", "action", "args", "errnoRet"}
        assert rule["names"] and all(rule["names"])
    json.dumps(amd64)  # runc reads it as JSON


def test_cap_sys_admin_opens_namespaces_and_mounts() -> None:
    profile = runtime_default_profile([*DEFAULT_CAPS, "CAP_SYS_ADMIN"], machine="x86_64")
    allowed = _unconditional(profile)
    assert {"unshare", "mount", "setns", "clone", "clone3", "bpf"} <= allowed
    assert all(rule["action"] == "SCMP_ACT_ALLOW" for rule in _rules_for(profile, "clone3"))


@pytest.mark.parametrize(
    ("cap", "names"),
    [
        ("CAP_SYS_PTRACE", {"kcmp", "pidfd_getfd", "process_madvise"}),
        ("CAP_SYS_TIME", {"settimeofday", "clock_settime"}),
        ("CAP_SYS_MODULE", {"init_module", "finit_module", "delete_module"}),
        ("CAP_DAC_READ_SEARCH", {"open_by_handle_at"}),
        ("CAP_SYS_NICE", {"mbind", "set_mempolicy"}),
        ("CAP_BPF", {"bpf"}),
    ],
)
def test_each_capability_unlocks_its_syscalls(cap: str, names: set[str]) -> None:
    assert names <= _unconditional(runtime_default_profile([cap], machine="x86_64"))


def test_arm64_gets_its_abis_and_syscalls() -> None:
    profile = runtime_default_profile(DEFAULT_CAPS, machine="aarch64")
    assert profile["architectures"] == ["SCMP_ARCH_AARCH64", "SCMP_ARCH_ARM"]
    allowed = _unconditional(profile)
    assert {"set_tls", "cacheflush", "arm_fadvise64_64"} <= allowed
    assert "arch_prctl" not in allowed and "modify_ldt" not in allowed


def test_s390x_checks_clone_flags_in_the_second_argument() -> None:
    profile = runtime_default_profile(DEFAULT_CAPS, machine="s390x")
    (clone,) = _rules_for(profile, "clone")
    assert clone["args"][0]["index"] == 1


def test_ptrace_only_on_kernels_where_seccomp_sees_it() -> None:
    old = runtime_default_profile(DEFAULT_CAPS, machine="x86_64", kernel_release="4.4.0-210")
    assert "ptrace" not in _unconditional(old)
    assert host_kernel("6.18.44-fc-v669") == (6, 18)
    assert host_kernel("4.8") == (4, 8)


# Localhost --------------------------------------------------------------------------------


def _profile_file(tmp_path: Path, content: Any) -> str:
    path = tmp_path / "profile.json"
    path.write_text(content if isinstance(content, str) else json.dumps(content))
    return str(path)


def test_oci_form_localhost_profile_passes_through(tmp_path: Path) -> None:
    raw = {
        "defaultAction": "SCMP_ACT_ALLOW",
        "architectures": ["SCMP_ARCH_X86_64"],
        "flags": ["SECCOMP_FILTER_FLAG_LOG"],
        "syscalls": [
            {"names": ["mkdir", "mkdirat"], "action": "SCMP_ACT_ERRNO", "errnoRet": 13},
            {"names": ["kill"], "action": "SCMP_ACT_ERRNO",
             "args": [{"index": 1, "value": 9, "op": "SCMP_CMP_EQ"}]},
        ],
    }
    profile = load_localhost_profile(_profile_file(tmp_path, raw))
    assert profile == raw


def test_docker_form_localhost_profile_is_resolved(tmp_path: Path) -> None:
    raw = {
        "defaultAction": "SCMP_ACT_ERRNO",
        "archMap": [
            {"architecture": "SCMP_ARCH_AARCH64", "subArchitectures": ["SCMP_ARCH_ARM"]},
            {"architecture": "SCMP_ARCH_X86_64", "subArchitectures": ["SCMP_ARCH_X86"]},
        ],
        "syscalls": [
            {"names": ["read"], "action": "SCMP_ACT_ALLOW"},
            {"names": ["mount"], "action": "SCMP_ACT_ALLOW",
             "includes": {"caps": ["CAP_SYS_ADMIN"]}},
            {"names": ["arch_prctl"], "action": "SCMP_ACT_ALLOW",
             "includes": {"arches": ["amd64"]}},
            {"names": ["ptrace"], "action": "SCMP_ACT_ALLOW", "includes": {"minKernel": "99.0"}},
            {"name": "write", "action": "SCMP_ACT_ALLOW", "excludes": {"caps": ["CAP_KILL"]}},
        ],
    }
    text = json.dumps(raw)
    profile = parse_profile(text, "/p.json", ["CAP_KILL"], machine="x86_64")
    assert profile["architectures"] == ["SCMP_ARCH_X86_64", "SCMP_ARCH_X86"]
    assert [rule["names"] for rule in profile["syscalls"]] == [["read"], ["arch_prctl"]]
    admin = parse_profile(text, "/p.json", ["CAP_SYS_ADMIN"], machine="aarch64")
    assert admin["architectures"] == ["SCMP_ARCH_AARCH64", "SCMP_ARCH_ARM"]
    assert [rule["names"] for rule in admin["syscalls"]] == [["read"], ["mount"], ["write"]]


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ("{not json", "not valid JSON"),
        ("[]", "must be a JSON object"),
        ({"defaultAction": "SCMP_ACT_MAYBE"}, "defaultAction 'SCMP_ACT_MAYBE'"),
        ({"defaultAction": "SCMP_ACT_ERRNO", "syscalls": {}}, "syscalls must be a list"),
        ({"defaultAction": "SCMP_ACT_ERRNO",
          "syscalls": [{"names": [], "action": "SCMP_ACT_ALLOW"}]}, "at least one syscall"),
        ({"defaultAction": "SCMP_ACT_ERRNO", "syscalls": [{"names": ["read"], "action": "x"}]},
         r"syscalls\[0\].action 'x'"),
        ({"defaultAction": "SCMP_ACT_ERRNO", "syscalls": [
            {"names": ["read"], "action": "SCMP_ACT_ALLOW",
             "args": [{"index": 7, "value": 1, "op": "SCMP_CMP_EQ"}]}]}, "index must be 0..5"),
        ({"defaultAction": "SCMP_ACT_ERRNO", "syscalls": [
            {"names": ["read"], "action": "SCMP_ACT_ALLOW",
             "args": [{"index": 0, "value": 1, "op": "EQ"}]}]}, "op 'EQ'"),
        ({"defaultAction": "SCMP_ACT_ERRNO", "flags": ["NOPE"]}, "flags"),
        ({"defaultAction": "SCMP_ACT_ERRNO", "defaultErrnoRet": "1"}, "defaultErrnoRet"),
    ],
)
def test_invalid_localhost_profiles_say_what_is_wrong(
    tmp_path: Path, content: Any, message: str
) -> None:
    path = _profile_file(tmp_path, content)
    with pytest.raises(InvalidArgument, match=message) as error:
        load_localhost_profile(path)
    assert path in str(error.value)


def test_missing_relative_and_directory_profiles(tmp_path: Path) -> None:
    with pytest.raises(InvalidArgument, match="does not exist"):
        load_localhost_profile(str(tmp_path / "absent.json"))
    with pytest.raises(InvalidArgument, match="must be absolute"):
        load_localhost_profile("profiles/x.json")
    with pytest.raises(InvalidArgument, match="is a directory"):
        load_localhost_profile(str(tmp_path))
    with pytest.raises(InvalidArgument, match="needs localhost_ref"):
        load_localhost_profile("")


def test_legacy_profile_paths() -> None:
    assert parse_legacy_profile_path("") == (SeccompKind.UNCONFINED, "")
    assert parse_legacy_profile_path("unconfined") == (SeccompKind.UNCONFINED, "")
    assert parse_legacy_profile_path("runtime/default") == (SeccompKind.RUNTIME_DEFAULT, "")
    assert parse_legacy_profile_path("docker/default") == (SeccompKind.RUNTIME_DEFAULT, "")
    local = parse_legacy_profile_path("localhost//etc/p.json")
    assert local == (SeccompKind.LOCALHOST, "/etc/p.json")
    with pytest.raises(InvalidArgument, match="unknown"):
        parse_legacy_profile_path("strict")


async def test_seccomp_for_container_by_kind(tmp_path: Path) -> None:
    assert await seccomp_for_container(SeccompKind.UNCONFINED, "", DEFAULT_CAPS) is None
    assert await seccomp_for_container(
        SeccompKind.RUNTIME_DEFAULT, "", DEFAULT_CAPS, privileged=True
    ) is None
    default = await seccomp_for_container(SeccompKind.RUNTIME_DEFAULT, "", DEFAULT_CAPS)
    assert default is not None and default["defaultAction"] == "SCMP_ACT_ERRNO"
    path = _profile_file(tmp_path, {"defaultAction": "SCMP_ACT_LOG"})
    local = await seccomp_for_container(SeccompKind.LOCALHOST, path, DEFAULT_CAPS)
    assert local == {"defaultAction": "SCMP_ACT_LOG", "syscalls": []}
