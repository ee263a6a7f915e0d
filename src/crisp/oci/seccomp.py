"""Seccomp profiles for containers: RuntimeDefault, Unconfined and Localhost files.

RuntimeDefault follows the semantics of the profile Docker, containerd and CRI-O share: every
syscall fails with EPERM unless allowed; ordinary syscalls are allowed outright; the ones that
only make sense with a capability (mount, unshare, ptrace, reboot, ...) are allowed only when
the container holds that capability; a few are allowed with argument checks (clone without
namespace flags, personality with harmless personas, socket except AF_VSOCK). The tables below
are crisp's own, grouped by purpose; rules carry conditions (`Condition`) that are resolved
against the container's capabilities, the host architecture and kernel when the OCI
``linux.seccomp`` dict is built, since runc understands no conditions.

Localhost profiles are read from a file in either the OCI form (``architectures``) or the
Docker form (``archMap``, ``includes``/``excludes``), validated, and resolved the same way.
"""

from __future__ import annotations

import asyncio
import enum
import json
import os
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from crisp.errors import InvalidArgument

ALLOW = "SCMP_ACT_ALLOW"
ERRNO = "SCMP_ACT_ERRNO"
EPERM = 1
ENOSYS = 38

ACTIONS = frozenset({
    "SCMP_ACT_KILL", "SCMP_ACT_KILL_PROCESS", "SCMP_ACT_KILL_THREAD", "SCMP_ACT_TRAP",
    "SCMP_ACT_ERRNO", "SCMP_ACT_TRACE", "SCMP_ACT_ALLOW", "SCMP_ACT_LOG", "SCMP_ACT_NOTIFY",
})
OPERATORS = frozenset({
    "SCMP_CMP_NE", "SCMP_CMP_LT", "SCMP_CMP_LE", "SCMP_CMP_EQ", "SCMP_CMP_GE", "SCMP_CMP_GT",
    "SCMP_CMP_MASKED_EQ",
})
FLAGS = frozenset({
    "SECCOMP_FILTER_FLAG_TSYNC", "SECCOMP_FILTER_FLAG_LOG", "SECCOMP_FILTER_FLAG_SPEC_ALLOW",
    "SECCOMP_FILTER_FLAG_WAIT_KILLABLE_RECV",
})

# Architectures -------------------------------------------------------------------------------

_MACHINE_TO_ARCH = {
    "x86_64": "amd64", "amd64": "amd64", "aarch64": "arm64", "arm64": "arm64",
    "armv7l": "arm", "armv6l": "arm", "i386": "386", "i686": "386", "s390x": "s390x",
    "ppc64le": "ppc64le", "riscv64": "riscv64",
}
"""platform.machine() names to the architecture names profile conditions use."""

_SECCOMP_ARCHES: dict[str, tuple[str, ...]] = {
    # The native ABI first, then the ones the same kernel also runs binaries of.
    "amd64": ("SCMP_ARCH_X86_64", "SCMP_ARCH_X86", "SCMP_ARCH_X32"),
    "arm64": ("SCMP_ARCH_AARCH64", "SCMP_ARCH_ARM"),
    "arm": ("SCMP_ARCH_ARM",),
    "386": ("SCMP_ARCH_X86",),
    "s390x": ("SCMP_ARCH_S390X", "SCMP_ARCH_S390"),
    "ppc64le": ("SCMP_ARCH_PPC64LE",),
    "riscv64": ("SCMP_ARCH_RISCV64",),
}


def host_arch(machine: str | None = None) -> str:
    """The architecture name ("amd64", "arm64", ...) of ``machine`` or of this host."""
    machine = machine or os.uname().machine
    return _MACHINE_TO_ARCH.get(machine, machine)


def host_kernel(release: str | None = None) -> tuple[int, int]:
    """(major, minor) of a kernel release string such as "6.1.0-13-amd64"."""
    release = release or os.uname().release
    numbers = []
    for part in release.split(".")[:2]:
        digits = "".join(ch for ch in part if ch.isdigit()) or "0"
        numbers.append(int(digits))
    while len(numbers) < 2:
        numbers.append(0)
    return numbers[0], numbers[1]


# The rule model ------------------------------------------------------------------------------


@dataclass(frozen=True)
class Condition:
    """When a rule applies. As an ``includes`` every part must hold (all caps present, one of
    the arches, kernel at least min_kernel); as an ``excludes`` any part holding drops it."""

    caps: frozenset[str] = frozenset()
    arches: frozenset[str] = frozenset()
    min_kernel: tuple[int, int] | None = None


@dataclass(frozen=True)
class Rule:
    """Syscalls that get ``action`` (when their arguments match ``args``) if the rule applies."""

    names: tuple[str, ...]
    action: str = ALLOW
    args: tuple[Mapping[str, Any], ...] = ()
    errno_ret: int | None = None
    includes: Condition = field(default_factory=Condition)
    excludes: Condition = field(default_factory=Condition)

    def applies(self, caps: frozenset[str], arch: str, kernel: tuple[int, int]) -> bool:
        need = self.includes
        if need.caps and not need.caps <= caps:
            return False
        if need.arches and arch not in need.arches:
            return False
        if need.min_kernel is not None and kernel < need.min_kernel:
            return False
        drop = self.excludes
        if drop.caps & caps or arch in drop.arches:
            return False
        return not (drop.min_kernel is not None and kernel >= drop.min_kernel)

    def to_oci(self) -> dict[str, Any]:
        syscall: dict[str, Any] = {"names": list(self.names), "action": self.action}
        if self.errno_ret is not None:
            syscall["errnoRet"] = self.errno_ret
        if self.args:
            syscall["args"] = [dict(arg) for arg in self.args]
        return syscall


# RuntimeDefault's tables ---------------------------------------------------------------------

_ALLOWED_BY_PURPOSE: dict[str, tuple[str, ...]] = {
    "paths": (
        "access", "chdir", "chmod", "chown", "chown32", "creat", "faccessat", "faccessat2",
        "fchdir", "fchmod", "fchmodat", "fchown", "fchown32", "fchownat", "fstatat64",
        "futimesat", "getcwd", "getdents", "getdents64", "lchown", "lchown32", "link", "linkat",
        "lstat", "lstat64", "mkdir", "mkdirat", "mknod", "mknodat", "name_to_handle_at",
        "newfstatat", "open", "openat", "openat2", "readlink", "readlinkat", "rename",
        "renameat", "renameat2", "rmdir", "stat", "stat64", "statfs", "statfs64", "statx",
        "symlink", "symlinkat", "truncate", "truncate64", "umask", "unlink", "unlinkat",
        "utime", "utimensat", "utimensat_time64", "utimes",
    ),
    "file descriptors and data": (
        "close", "close_range", "copy_file_range", "dup", "dup2", "dup3", "fadvise64",
        "fadvise64_64", "fallocate", "fcntl", "fcntl64", "fdatasync", "flock", "fstat",
        "fstat64", "fstatfs", "fstatfs64", "fsync", "ftruncate", "ftruncate64", "ioctl",
        "_llseek", "lseek", "pipe", "pipe2", "pread64", "preadv", "preadv2", "pwrite64",
        "pwritev", "pwritev2", "read", "readahead", "readv", "sendfile", "sendfile64",
        "splice", "sync", "sync_file_range", "syncfs", "tee", "vmsplice", "write", "writev",
    ),
    "extended attributes": (
        "fgetxattr", "flistxattr", "fremovexattr", "fsetxattr", "getxattr", "lgetxattr",
        "listxattr", "llistxattr", "lremovexattr", "lsetxattr", "removexattr", "setxattr",
    ),
    "waiting for events": (
        "_newselect", "epoll_create", "epoll_create1", "epoll_ctl", "epoll_ctl_old",
        "epoll_pwait", "epoll_pwait2", "epoll_wait", "epoll_wait_old", "eventfd", "eventfd2",
        "fanotify_mark", "inotify_add_watch", "inotify_init", "inotify_init1",
        "inotify_rm_watch", "poll", "ppoll", "ppoll_time64", "pselect6", "pselect6_time64",
        "select", "signalfd", "signalfd4", "timerfd_create", "timerfd_gettime",
        "timerfd_gettime64", "timerfd_settime", "timerfd_settime64",
    ),
    "asynchronous io": (
        "io_cancel", "io_destroy", "io_getevents", "io_pgetevents", "io_pgetevents_time64",
        "io_setup", "io_submit", "io_uring_enter", "io_uring_register", "io_uring_setup",
        "ioprio_get", "ioprio_set",
    ),
    "memory": (
        "brk", "madvise", "membarrier", "memfd_create", "memfd_secret", "mincore", "mlock",
        "mlock2", "mlockall", "mmap", "mmap2", "mprotect", "mremap", "msync", "munlock",
        "munlockall", "munmap", "pkey_alloc", "pkey_free", "pkey_mprotect", "process_mrelease",
        "remap_file_pages",
    ),
    "processes and threads": (
        "capget", "capset", "execve", "execveat", "exit", "exit_group", "fork", "futex",
        "futex_time64", "futex_waitv", "get_robust_list", "get_thread_area", "getcpu",
        "getpgid", "getpgrp", "getpid", "getppid", "getpriority", "getrandom", "getrlimit",
        "getrusage", "getsid", "gettid", "landlock_add_rule", "landlock_create_ruleset",
        "landlock_restrict_self", "pidfd_open", "pidfd_send_signal", "prctl", "prlimit64",
        "restart_syscall", "rseq", "seccomp", "set_robust_list", "set_thread_area",
        "set_tid_address", "setpgid", "setpriority", "setrlimit", "setsid", "sysinfo",
        "ugetrlimit", "uname", "vfork", "wait4", "waitid", "waitpid",
    ),
    "user and group ids": (
        "getegid", "getegid32", "geteuid", "geteuid32", "getgid", "getgid32", "getgroups",
        "getgroups32", "getresgid", "getresgid32", "getresuid", "getresuid32", "getuid",
        "getuid32", "setfsgid", "setfsgid32", "setfsuid", "setfsuid32", "setgid", "setgid32",
        "setgroups", "setgroups32", "setregid", "setregid32", "setresgid", "setresgid32",
        "setresuid", "setresuid32", "setreuid", "setreuid32", "setuid", "setuid32",
    ),
    "signals": (
        "alarm", "kill", "pause", "rt_sigaction", "rt_sigpending", "rt_sigprocmask",
        "rt_sigqueueinfo", "rt_sigreturn", "rt_sigsuspend", "rt_sigtimedwait",
        "rt_sigtimedwait_time64", "rt_tgsigqueueinfo", "sigaltstack", "sigprocmask",
        "sigreturn", "tgkill", "tkill",
    ),
    "clocks and timers": (
        "adjtimex", "clock_adjtime", "clock_adjtime64", "clock_getres", "clock_getres_time64",
        "clock_gettime", "clock_gettime64", "clock_nanosleep", "clock_nanosleep_time64",
        "getitimer", "gettimeofday", "nanosleep", "setitimer", "time", "timer_create",
        "timer_delete", "timer_getoverrun", "timer_gettime", "timer_gettime64",
        "timer_settime", "timer_settime64", "times",
    ),
    "scheduling": (
        "sched_get_priority_max", "sched_get_priority_min", "sched_getaffinity",
        "sched_getattr", "sched_getparam", "sched_getscheduler", "sched_rr_get_interval",
        "sched_rr_get_interval_time64", "sched_setaffinity", "sched_setattr",
        "sched_setparam", "sched_setscheduler", "sched_yield",
    ),
    "inter-process communication": (
        "ipc", "mq_getsetattr", "mq_notify", "mq_open", "mq_timedreceive",
        "mq_timedreceive_time64", "mq_timedsend", "mq_timedsend_time64", "mq_unlink", "msgctl",
        "msgget", "msgrcv", "msgsnd", "semctl", "semget", "semop", "semtimedop",
        "semtimedop_time64", "shmat", "shmctl", "shmdt", "shmget",
    ),
    "sockets": (
        "accept", "accept4", "bind", "connect", "getpeername", "getsockname", "getsockopt",
        "listen", "recv", "recvfrom", "recvmmsg", "recvmmsg_time64", "recvmsg", "send",
        "sendmmsg", "sendmsg", "sendto", "setsockopt", "shutdown", "socketcall", "socketpair",
    ),
}

_ALLOWED_WITH_CAPABILITY: dict[str, tuple[str, ...]] = {
    "CAP_BPF": ("bpf",),
    "CAP_DAC_READ_SEARCH": ("open_by_handle_at",),
    "CAP_PERFMON": ("perf_event_open",),
    "CAP_SYSLOG": ("syslog",),
    "CAP_SYS_ADMIN": (
        "bpf", "clone", "clone3", "fanotify_init", "fsconfig", "fsmount", "fsopen", "fspick",
        "lookup_dcookie", "mount", "mount_setattr", "move_mount", "open_tree",
        "perf_event_open", "quotactl", "quotactl_fd", "setdomainname", "sethostname", "setns",
        "syslog", "umount", "umount2", "unshare",
    ),
    "CAP_SYS_BOOT": ("reboot",),
    "CAP_SYS_CHROOT": ("chroot",),
    "CAP_SYS_MODULE": ("delete_module", "finit_module", "init_module"),
    "CAP_SYS_NICE": ("get_mempolicy", "mbind", "set_mempolicy", "set_mempolicy_home_node"),
    "CAP_SYS_PACCT": ("acct",),
    "CAP_SYS_PTRACE": (
        "kcmp", "pidfd_getfd", "process_madvise", "process_vm_readv", "process_vm_writev",
        "ptrace",
    ),
    "CAP_SYS_RAWIO": ("ioperm", "iopl"),
    "CAP_SYS_TIME": ("clock_settime", "clock_settime64", "settimeofday", "stime"),
    "CAP_SYS_TTY_CONFIG": ("vhangup",),
}

_ALLOWED_ON_ARCH: tuple[tuple[frozenset[str], tuple[str, ...]], ...] = (
    (frozenset({"amd64", "x32"}), ("arch_prctl",)),
    (frozenset({"amd64", "x32", "x86", "386"}), ("modify_ldt",)),
    (frozenset({"arm", "arm64"}), (
        "arm_fadvise64_64", "arm_sync_file_range", "breakpoint", "cacheflush", "set_tls",
        "sync_file_range2",
    )),
    (frozenset({"ppc64le"}), ("swapcontext", "sync_file_range2")),
    (frozenset({"riscv64"}), ("riscv_flush_icache",)),
    (frozenset({"s390", "s390x"}), (
        "s390_pci_mmio_read", "s390_pci_mmio_write", "s390_runtime_instr",
    )),
)

PTRACE_SAFE_KERNEL = (4, 8)
"""Before 4.8 a traced process could skip seccomp checks, so ptrace is only safe from here."""

PERSONAS = (0x0, 0x0008, 0x20000, 0x20008, 0xFFFFFFFF)
"""PER_LINUX, UNAME26, ADDR_NO_RANDOMIZE, both, and the query value."""

AF_VSOCK = 40
CLONE_NAMESPACE_FLAGS = (
    0x00020000  # CLONE_NEWNS
    | 0x02000000  # CLONE_NEWCGROUP
    | 0x04000000  # CLONE_NEWUTS
    | 0x08000000  # CLONE_NEWIPC
    | 0x10000000  # CLONE_NEWUSER
    | 0x20000000  # CLONE_NEWPID
    | 0x40000000  # CLONE_NEWNET
)


def _arg(index: int, value: int, op: str) -> Mapping[str, Any]:
    return {"index": index, "value": value, "op": op}


def runtime_default_rules() -> list[Rule]:
    """RuntimeDefault as conditional rules, before resolving them for one container."""
    admin = frozenset({"CAP_SYS_ADMIN"})
    s390 = frozenset({"s390", "s390x"})
    always = sorted({name for names in _ALLOWED_BY_PURPOSE.values() for name in names})
    rules = [
        Rule(tuple(always)),
        Rule(
            ("process_vm_readv", "process_vm_writev", "ptrace"),
            includes=Condition(min_kernel=PTRACE_SAFE_KERNEL),
        ),
        Rule(("socket",), args=(_arg(0, AF_VSOCK, "SCMP_CMP_NE"),)),
    ]
    rules += [Rule(("personality",), args=(_arg(0, p, "SCMP_CMP_EQ"),)) for p in PERSONAS]
    rules += [Rule(names, includes=Condition(arches=arches)) for arches, names in _ALLOWED_ON_ARCH]
    rules += [
        Rule(names, includes=Condition(caps=frozenset({cap})))
        for cap, names in sorted(_ALLOWED_WITH_CAPABILITY.items())
    ]
    # Without CAP_SYS_ADMIN: threads and processes, but no new namespaces. s390 passes the
    # clone flags second. clone3 passes them in memory seccomp cannot see, so it reports
    # ENOSYS and libc falls back to clone.
    rules += [
        Rule(
            ("clone",),
            args=(_arg(0, CLONE_NAMESPACE_FLAGS, "SCMP_CMP_MASKED_EQ"),),
            excludes=Condition(caps=admin, arches=s390),
        ),
        Rule(
            ("clone",),
            args=(_arg(1, CLONE_NAMESPACE_FLAGS, "SCMP_CMP_MASKED_EQ"),),
            includes=Condition(arches=s390),
            excludes=Condition(caps=admin),
        ),
        Rule(("clone3",), action=ERRNO, errno_ret=ENOSYS, excludes=Condition(caps=admin)),
    ]
    return rules


def resolve(
    rules: Iterable[Rule],
    *,
    default_action: str,
    default_errno_ret: int | None,
    architectures: Iterable[str],
    capabilities: Iterable[str],
    arch: str,
    kernel: tuple[int, int],
    extra: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """The OCI ``linux.seccomp`` dict: the rules that apply to this container and host."""
    caps = frozenset(capabilities)
    profile: dict[str, Any] = {"defaultAction": default_action}
    if default_errno_ret is not None:
        profile["defaultErrnoRet"] = default_errno_ret
    arches = list(architectures)
    if arches:
        profile["architectures"] = arches
    profile.update(extra or {})
    profile["syscalls"] = [rule.to_oci() for rule in rules if rule.applies(caps, arch, kernel)]
    return profile


def runtime_default_profile(
    capabilities: Iterable[str] = (),
    *,
    machine: str | None = None,
    kernel_release: str | None = None,
) -> dict[str, Any]:
    """RuntimeDefault for a container with these (bounding) capabilities on this host."""
    arch = host_arch(machine)
    return resolve(
        runtime_default_rules(),
        default_action=ERRNO,
        default_errno_ret=EPERM,
        architectures=_SECCOMP_ARCHES.get(arch, ()),
        capabilities=capabilities,
        arch=arch,
        kernel=host_kernel(kernel_release),
    )


# Localhost profiles --------------------------------------------------------------------------


def _fail(path: str, problem: str) -> InvalidArgument:
    return InvalidArgument(f"seccomp profile {path}: {problem}")


def _strings(value: Any, path: str, what: str) -> list[str]:
    if not isinstance(value, list) or not all(isinstance(item, str) for item in value):
        raise _fail(path, f"{what} must be a list of strings")
    return value


def _int_field(value: Any, path: str, what: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise _fail(path, f"{what} must be an integer")
    return value


def _condition(raw: Any, path: str, what: str) -> Condition:
    if raw is None:
        return Condition()
    if not isinstance(raw, dict):
        raise _fail(path, f"{what} must be an object")
    min_kernel = None
    if raw.get("minKernel"):
        text = raw["minKernel"]
        if not isinstance(text, str) or not all(p.isdigit() for p in text.split(".")[:2]):
            raise _fail(path, f'{what}.minKernel must be a version such as "4.8"')
        min_kernel = host_kernel(text)
    return Condition(
        caps=frozenset(_strings(raw.get("caps") or [], path, f"{what}.caps")),
        arches=frozenset(_strings(raw.get("arches") or [], path, f"{what}.arches")),
        min_kernel=min_kernel,
    )


def _syscall_rule(raw: Any, index: int, path: str) -> Rule:
    where = f"syscalls[{index}]"
    if not isinstance(raw, dict):
        raise _fail(path, f"{where} must be an object")
    names = raw.get("names")
    if names is None and isinstance(raw.get("name"), str):
        names = [raw["name"]]
    names = _strings(names, path, f"{where}.names")
    if not names or not all(names):
        raise _fail(path, f"{where}.names must name at least one syscall")
    action = raw.get("action")
    if action not in ACTIONS:
        raise _fail(path, f"{where}.action {action!r} is not one of {sorted(ACTIONS)}")
    errno_ret = raw.get("errnoRet")
    if errno_ret is not None:
        errno_ret = _int_field(errno_ret, path, f"{where}.errnoRet")
    args: list[Mapping[str, Any]] = []
    for number, arg in enumerate(raw.get("args") or []):
        what = f"{where}.args[{number}]"
        if not isinstance(arg, dict):
            raise _fail(path, f"{what} must be an object")
        arg_index = _int_field(arg.get("index"), path, f"{what}.index")
        if not 0 <= arg_index <= 5:
            raise _fail(path, f"{what}.index must be 0..5 (syscalls have six arguments)")
        if arg.get("op") not in OPERATORS:
            raise _fail(path, f"{what}.op {arg.get('op')!r} is not one of {sorted(OPERATORS)}")
        checked: dict[str, Any] = {
            "index": arg_index,
            "value": _int_field(arg.get("value", 0), path, f"{what}.value"),
            "op": arg["op"],
        }
        if arg.get("valueTwo"):
            checked["valueTwo"] = _int_field(arg["valueTwo"], path, f"{what}.valueTwo")
        args.append(checked)
    return Rule(
        tuple(names),
        action=action,
        args=tuple(args),
        errno_ret=errno_ret,
        includes=_condition(raw.get("includes"), path, f"{where}.includes"),
        excludes=_condition(raw.get("excludes"), path, f"{where}.excludes"),
    )


def _architectures(raw: dict[str, Any], path: str, arch: str) -> list[str]:
    if "archMap" in raw and raw["archMap"] is not None:
        native = _SECCOMP_ARCHES.get(arch, ("",))[0]
        entries = raw["archMap"]
        if not isinstance(entries, list):
            raise _fail(path, "archMap must be a list")
        for entry in entries:
            if not isinstance(entry, dict) or not isinstance(entry.get("architecture"), str):
                raise _fail(path, 'archMap entries need an "architecture" string')
            if entry["architecture"] == native:
                subs = _strings(entry.get("subArchitectures") or [], path, "subArchitectures")
                return [native, *subs]
        return []
    return _strings(raw.get("architectures") or [], path, "architectures")


def parse_profile(
    text: str,
    path: str,
    capabilities: Iterable[str] = (),
    *,
    machine: str | None = None,
    kernel_release: str | None = None,
) -> dict[str, Any]:
    """A profile file's text (OCI or Docker form) as a resolved OCI ``linux.seccomp`` dict."""
    try:
        raw = json.loads(text)
    except json.JSONDecodeError as error:
        raise _fail(path, f"is not valid JSON ({error})") from error
    if not isinstance(raw, dict):
        raise _fail(path, "must be a JSON object")
    default_action = raw.get("defaultAction")
    if default_action not in ACTIONS:
        raise _fail(path, f"defaultAction {default_action!r} is not one of {sorted(ACTIONS)}")
    default_errno = raw.get("defaultErrnoRet")
    if default_errno is not None:
        default_errno = _int_field(default_errno, path, "defaultErrnoRet")
    syscalls = raw.get("syscalls")
    if syscalls is None:
        syscalls = []
    if not isinstance(syscalls, list):
        raise _fail(path, "syscalls must be a list")
    rules = [_syscall_rule(entry, index, path) for index, entry in enumerate(syscalls)]
    extra: dict[str, Any] = {}
    if raw.get("flags"):
        flags = _strings(raw["flags"], path, "flags")
        unknown = set(flags) - FLAGS
        if unknown:
            raise _fail(path, f"flags {sorted(unknown)} are unknown (known: {sorted(FLAGS)})")
        extra["flags"] = flags
    for key in ("listenerPath", "listenerMetadata"):
        if raw.get(key):
            if not isinstance(raw[key], str):
                raise _fail(path, f"{key} must be a string")
            extra[key] = raw[key]
    arch = host_arch(machine)
    return resolve(
        rules,
        default_action=default_action,
        default_errno_ret=default_errno,
        architectures=_architectures(raw, path, arch),
        capabilities=capabilities,
        arch=arch,
        kernel=host_kernel(kernel_release),
        extra=extra,
    )


MAX_PROFILE_BYTES = 1 << 20


def read_localhost_profile(path: str) -> str:
    """The text of a Localhost profile file (blocking), or InvalidArgument saying why not."""
    if not path:
        raise InvalidArgument("seccomp profile type Localhost needs localhost_ref: the path "
                              "of a profile file on the node")
    if not os.path.isabs(path):
        raise _fail(path, "the path must be absolute")
    try:
        with open(path, "rb") as file:
            data = file.read(MAX_PROFILE_BYTES + 1)
    except FileNotFoundError as error:
        raise _fail(path, "does not exist on this node") from error
    except IsADirectoryError as error:
        raise _fail(path, "is a directory, not a profile file") from error
    except OSError as error:
        raise _fail(path, f"cannot be read: {error.strerror}") from error
    if len(data) > MAX_PROFILE_BYTES:
        raise _fail(path, f"is larger than {MAX_PROFILE_BYTES} bytes")
    try:
        return data.decode()
    except UnicodeDecodeError as error:
        raise _fail(path, "is not UTF-8 text") from error


def load_localhost_profile(path: str, capabilities: Iterable[str] = ()) -> dict[str, Any]:
    """A Localhost profile file as an OCI ``linux.seccomp`` dict (blocking: reads the file)."""
    return parse_profile(read_localhost_profile(path), path, capabilities)


class SeccompKind(enum.Enum):
    """CRI's SecurityProfile.ProfileType for seccomp."""

    RUNTIME_DEFAULT = "RuntimeDefault"
    UNCONFINED = "Unconfined"
    LOCALHOST = "Localhost"


def parse_legacy_profile_path(value: str) -> tuple[SeccompKind, str]:
    """The deprecated string form (seccomp_profile_path): "runtime/default", "docker/default",
    "unconfined", "localhost/<absolute path>"; "" is Unconfined, as CRI defines it."""
    if value in ("", "unconfined"):
        return SeccompKind.UNCONFINED, ""
    if value in ("runtime/default", "docker/default"):
        return SeccompKind.RUNTIME_DEFAULT, ""
    if value.startswith("localhost/"):
        return SeccompKind.LOCALHOST, value.removeprefix("localhost/")
    raise InvalidArgument(
        f"seccomp profile {value!r} is unknown: use \"runtime/default\", \"unconfined\" or "
        '"localhost/<absolute path>"'
    )


async def seccomp_for_container(
    kind: SeccompKind,
    localhost_ref: str,
    capabilities: Iterable[str],
    *,
    privileged: bool = False,
) -> dict[str, Any] | None:
    """The ``linux.seccomp`` of a container, or None for no filter at all.

    Privileged containers run unconfined whatever they ask for, as Kubernetes documents.
    ``capabilities`` is the container's final bounding set: RuntimeDefault allows mount,
    unshare and the rest only where the matching capability was granted.
    """
    if privileged or kind is SeccompKind.UNCONFINED:
        return None
    caps = list(capabilities)
    if kind is SeccompKind.RUNTIME_DEFAULT:
        return runtime_default_profile(caps)
    return await asyncio.to_thread(load_localhost_profile, localhost_ref, caps)
