"""The checks of ``crisp doctor``, in the order a person would go through them."""

from __future__ import annotations

import asyncio
import enum
import gzip
import os
import platform
import re
import shutil
import ssl
import subprocess
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

from crisp.config import Config, ConfigError, config_path, load
from crisp.network.default import render as render_default_network
from crisp.network.discovery import PluginVersions, discover
from crisp.network.invoke import find_plugin

KUBELET_CONFIG = Path("/var/lib/kubelet/config.yaml")
COMMAND_TIMEOUT_S = 10.0
REGISTRY_TIMEOUT_S = 5.0
# Below this share or size of free space under root_dir, pulls and containers start failing.
DISK_FAIL_FRACTION, DISK_FAIL_BYTES = 0.05, 1 << 30
DISK_WARN_FRACTION = 0.15


class Status(enum.Enum):
    OK = "OK"
    WARN = "WARN"
    FAIL = "FAIL"


@dataclass(frozen=True)
class Check:
    """One finding: what was checked, how it stands, what was seen, and what to do."""

    name: str
    status: Status
    detail: str
    fix: str = ""

    def as_json(self) -> dict[str, str]:
        return {"name": self.name, "status": self.status.value, "detail": self.detail,
                "fix": self.fix}


@dataclass(frozen=True)
class Host:
    """Where the host's files are; tests point these elsewhere."""

    proc: Path = Path("/proc")
    sys: Path = Path("/sys")
    kubelet_config: Path = KUBELET_CONFIG


def ok(name: str, detail: str) -> Check:
    return Check(name, Status.OK, detail)


def warn(name: str, detail: str, fix: str) -> Check:
    return Check(name, Status.WARN, detail, fix)


def fail(name: str, detail: str, fix: str) -> Check:
    return Check(name, Status.FAIL, detail, fix)


def _read(path: Path) -> str | None:
    try:
        return path.read_text()
    except OSError:
        return None


def _module_loaded_or_builtin(host: Host, module: str) -> bool:
    if (host.sys / "module" / module).exists():
        return True
    builtin = _read(Path("/lib/modules") / platform.release() / "modules.builtin") or ""
    return any(Path(line).stem == module for line in builtin.splitlines())


def _module_available(module: str) -> bool:
    directory = Path("/lib/modules") / platform.release()
    dep = _read(directory / "modules.dep") or ""
    return any(Path(line.split(":")[0]).name.split(".")[0] == module
               for line in dep.splitlines())


def _kernel_config(host: Host) -> dict[str, str] | None:
    """The kernel's build options (/proc/config.gz or /boot/config-RELEASE), if it says."""
    text: str | None = None
    try:
        text = gzip.decompress((host.proc / "config.gz").read_bytes()).decode()
    except (OSError, EOFError, gzip.BadGzipFile):
        text = _read(Path("/boot") / f"config-{platform.release()}")
    if text is None:
        return None
    return dict(re.findall(r"^(CONFIG_\w+)=(\S+)", text, re.M))


def _has_module(host: Host, module: str, option: str) -> bool | None:
    """Whether ``module`` is loaded, built in or loadable; None when nothing can tell."""
    if _module_loaded_or_builtin(host, module) or _module_available(module):
        return True
    config = _kernel_config(host)
    if config is not None:
        return config.get(option) in {"y", "m"}
    if (Path("/lib/modules") / platform.release()).is_dir():
        return False
    return None


def _modprobe_fix(module: str) -> str:
    return (f"modprobe {module} && echo {module} > /etc/modules-load.d/{module}.conf "
            f"(loaded now and at boot)")


def kernel_checks(host: Host) -> Iterator[Check]:
    filesystems = _read(host.proc / "filesystems") or ""
    if re.search(r"\boverlay$", filesystems, re.M):
        yield ok("kernel: overlay", "overlayfs is available")
    elif _module_available("overlay"):
        yield warn("kernel: overlay", "the overlay module is not loaded; mounts load it",
                   _modprobe_fix("overlay"))
    else:
        yield fail("kernel: overlay", "this kernel has no overlayfs; crisp's snapshots need it",
                   "use a kernel with CONFIG_OVERLAY_FS")
    if (host.proc / "sys/net/bridge").is_dir():
        yield ok("kernel: br_netfilter", "bridged traffic passes through iptables")
    else:
        yield warn("kernel: br_netfilter", "not loaded: Services' iptables rules miss "
                   "traffic between pods on one bridge", _modprobe_fix("br_netfilter"))
    veth = _has_module(host, "veth", "CONFIG_VETH")
    if veth:
        yield ok("kernel: veth", "veth pairs are available (the bridge plugin loads it)")
    elif veth is None:
        yield warn("kernel: veth", "cannot tell: no /sys/module/veth, kernel config or "
                   f"/lib/modules/{platform.release()}", "check that the kernel has CONFIG_VETH")
    else:
        yield fail("kernel: veth", "no veth module: pods cannot be wired to the bridge",
                   "use a kernel with CONFIG_VETH")
    status = _read(host.proc / "self/status") or ""
    if re.search(r"^Seccomp:", status, re.M):
        yield ok("kernel: seccomp", "seccomp filters are available")
    else:
        yield fail("kernel: seccomp", "this kernel has no seccomp; RuntimeDefault profiles "
                   "cannot be applied", "use a kernel with CONFIG_SECCOMP_FILTER")
    max_userns = (_read(host.proc / "sys/user/max_user_namespaces") or "0").strip()
    if max_userns.isdigit() and int(max_userns) > 0:
        yield ok("kernel: user namespaces", f"max_user_namespaces = {max_userns}")
    else:
        yield warn("kernel: user namespaces", "disabled: pods with hostUsers: false fail",
                   "sysctl -w user.max_user_namespaces=15000 (and in /etc/sysctl.d)")
    # Pods in their own user namespace get their rootfs owners shifted on an overlay with
    # metacopy (runc 1.1 has no idmapped mounts): see docs/security.md.
    if (host.sys / "module/overlay/parameters/metacopy").exists():
        yield ok("kernel: overlay metacopy", "pods with hostUsers: false can run")
    else:
        yield warn("kernel: overlay metacopy", "no overlayfs metacopy: pods with "
                   "hostUsers: false are refused", "use a kernel with "
                   "CONFIG_OVERLAY_FS_METACOPY (and the overlay module loaded)")


def sysctl_checks(host: Host) -> Iterator[Check]:
    wanted = {
        "net.ipv4.ip_forward": "pods cannot reach beyond the node",
        "net.bridge.bridge-nf-call-iptables": "Services' rules miss traffic between pods",
    }
    for key, harm in wanted.items():
        value = (_read(host.proc / "sys" / key.replace(".", "/")) or "").strip()
        name = f"sysctl: {key}"
        if value == "1":
            yield ok(name, "1")
        else:
            yield fail(name, f"is {value or 'absent'}: {harm}",
                       f"sysctl -w {key}=1 and put '{key} = 1' in /etc/sysctl.d/k8s.conf")


def swap_check(host: Host) -> Check:
    lines = (_read(host.proc / "swaps") or "").splitlines()[1:]
    if not lines:
        return ok("swap", "no swap is on")
    devices = ", ".join(line.split()[0] for line in lines)
    return warn("swap", f"swap is on ({devices}): the kubelet refuses to start unless "
                "failSwapOn is false", "swapoff -a and remove swap from /etc/fstab, or "
                "configure the kubelet's memorySwap")


def cgroup_checks(host: Host, config: Config) -> Iterator[Check]:
    v2 = (host.sys / "fs/cgroup/cgroup.controllers").exists()
    if v2:
        yield ok("cgroups: version", "cgroup v2 (unified)")
    else:
        yield warn("cgroups: version", "cgroup v1: supported, but Kubernetes deprecates it",
                   "boot with systemd.unified_cgroup_hierarchy=1")
    driver = config.cgroup_manager
    systemd_init = Path("/run/systemd/system").is_dir()
    if driver == "systemd" and not systemd_init:
        yield fail("cgroups: driver", "cgroup_manager = systemd, but systemd is not init",
                   'set cgroup_manager = "cgroupfs" in the config')
    elif driver == "cgroupfs" and systemd_init:
        yield warn("cgroups: driver", "cgroupfs under systemd: two managers of one tree",
                   'set cgroup_manager = "systemd" (and the kubelet\'s cgroupDriver)')
    else:
        yield ok("cgroups: driver", driver)
    kubelet = _read(host.kubelet_config)
    if kubelet is not None:
        found = re.search(r"^cgroupDriver:\s*['\"]?(\w+)", kubelet, re.M)
        theirs = found.group(1) if found else "cgroupfs"  # the kubelet's own default
        if theirs == driver:
            yield ok("cgroups: kubelet driver", f"{host.kubelet_config} agrees: {theirs}")
        else:
            yield fail("cgroups: kubelet driver",
                       f"the kubelet uses {theirs}, crisp uses {driver}",
                       f"set cgroupDriver: {driver} in {host.kubelet_config} or "
                       f'cgroup_manager = "{theirs}" in crisp\'s config')


def _version_line(program: str, *args: str) -> str:
    try:
        result = subprocess.run([program, *args], capture_output=True, text=True,
                                timeout=COMMAND_TIMEOUT_S, check=False)
    except (OSError, subprocess.TimeoutExpired):
        return ""
    lines = (result.stdout or result.stderr).strip().splitlines()
    return lines[0] if lines else ""


def _resolve(program: str) -> str | None:
    if os.sep in program:
        return program if os.access(program, os.X_OK) and Path(program).is_file() else None
    return shutil.which(program)


def binary_checks(config: Config) -> Iterator[Check]:
    seen: set[str] = set()
    for handler_name, handler in sorted(config.runtimes.items()):
        for role, program, setting in (
            ("runtime", handler.runtime_path, "runtime_path"),
            ("monitor", handler.monitor_path, "monitor_path"),
        ):
            name = f"binary: {role} of handler {handler_name}"
            path = _resolve(program)
            if path is None:
                yield fail(name, f"{program} not found (runtimes.{handler_name}.{setting})",
                           f"install it (./scripts/install-deps) or set "
                           f"[runtimes.{handler_name}] {setting} to its path")
            elif path not in seen:
                seen.add(path)
                yield ok(name, f"{path}: {_version_line(path, '--version') or 'no version'}")
    iptables = shutil.which("iptables")
    if iptables:
        yield ok("binary: iptables", f"{iptables}: {_version_line(iptables, '--version')}")
    else:
        yield warn("binary: iptables", "not found: portmap and ipMasq need it",
                   "apt-get install iptables")


def config_check(explicit: str | None) -> tuple[Check, Config | None]:
    path = config_path(explicit)
    try:
        config = load(path)
    except ConfigError as error:
        return fail("config", str(error).replace("\n", "; "),
                    "fix the file (crisp config check FILE says what is wrong)"), None
    return ok("config", str(path) if path else "built-in defaults (no config file)"), config


def cni_checks(config: Config) -> Iterator[Check]:
    bin_dirs = config.cni.bin_dirs
    discovery = asyncio.run(discover(Path(config.cni.conf_dir), bin_dirs, (), PluginVersions()))
    if discovery.network is not None:
        yield ok("cni: network", discovery.explanation())
        for plugin in discovery.network.plugins:
            binary = find_plugin(str(plugin["type"]), bin_dirs)
            yield ok(f"cni: plugin {plugin['type']}",
                     f"{binary}: {_version_line(str(binary), '--version') or 'present'}")
        return
    if config.cni.write_default_config and not discovery.rejected:
        default = render_default_network([config.cni.default_subnet], "/var/lib/cni")
        types = [p["type"] for p in default["plugins"]] + ["host-local"]
        missing = [t for t in types if find_plugin(t, bin_dirs) is None]
        if missing:
            yield fail("cni: network", f"crisp's default network needs {', '.join(missing)}, "
                       f"in none of {', '.join(bin_dirs)}",
                       "apt-get install containernetworking-plugins, or set [cni] bin_dirs")
        else:
            yield ok("cni: network", f"crisp writes its default bridge network into "
                     f"{config.cni.conf_dir} at start ({', '.join(types)} found)")
        return
    yield warn("cni: network", discovery.explanation() + ": pods get no network",
               "install a network add-on (flannel, calico, ...) or set [cni] "
               "write_default_config = true")


def socket_check(config: Config) -> Check:
    socket = Path(config.socket)
    if not socket.exists():
        return warn("socket", f"{socket} does not exist: crisp is not running",
                    "start it: systemctl start crisp (or crisp --daemonize)")
    import grpc  # only this check needs the gRPC stack

    from crisp.api import cri_pb2, cri_pb2_grpc

    try:
        with grpc.insecure_channel(f"unix://{socket}") as channel:
            version = cri_pb2_grpc.RuntimeServiceStub(channel).Version(
                cri_pb2.VersionRequest(), timeout=5)
    except grpc.RpcError as error:
        return fail("socket", f"{socket} does not answer: {error.code().name}",
                    "see crisp's log (journalctl -u crisp); restart it")
    return ok("socket", f"{socket} answers: {version.runtime_name} "
              f"{version.runtime_version} (CRI {version.runtime_api_version})")


def _registry_url(host: str, insecure: bool) -> str:
    if "://" in host:
        return host.rstrip("/") + "/v2/"
    if host == "docker.io":
        host = "registry-1.docker.io"
    return f"{'http' if insecure else 'https'}://{host}/v2/"


def registry_checks(config: Config) -> Iterator[Check]:
    hosts = list(dict.fromkeys([*config.registries.search,
                                *(m for ms in config.registries.mirrors.values() for m in ms)]))
    context = ssl.create_default_context()
    for host in hosts:
        url = _registry_url(host, host in config.registries.insecure)
        try:
            with urllib.request.urlopen(url, timeout=REGISTRY_TIMEOUT_S, context=context):
                pass
            answered = "answers"
        except urllib.error.HTTPError as error:  # 401 is the usual, and fine, answer
            answered = f"answers (HTTP {error.code})"
        except (OSError, ValueError) as error:
            reason = getattr(error, "reason", error)
            yield warn(f"registry: {host}", f"{url} unreachable: {reason}",
                       "check DNS, proxy (HTTPS_PROXY) and firewall, or configure a mirror; "
                       "offline nodes can import images (crispctl images import)")
            continue
        yield ok(f"registry: {host}", f"{url} {answered}")


def disk_check(config: Config) -> Check:
    path = Path(config.root_dir)
    while not path.exists():
        path = path.parent
    usage = os.statvfs(path)
    free, total = usage.f_bavail * usage.f_frsize, usage.f_blocks * usage.f_frsize
    fraction = free / total if total else 0.0
    detail = f"{free / (1 << 30):.1f} GiB free ({fraction:.0%}) under {config.root_dir}"
    fix = f"free space on the filesystem of {path}, or move root_dir"
    if fraction < DISK_FAIL_FRACTION or free < DISK_FAIL_BYTES:
        return fail("disk", detail, fix)
    if fraction < DISK_WARN_FRACTION:
        return warn("disk", detail, fix)
    return ok("disk", detail)


def run_checks(explicit_config: str | None, host: Host | None = None,
               *, network: bool = True) -> list[Check]:
    """Every check, in order; ``network=False`` skips the registry probes."""
    host = host or Host()
    found: list[Check] = [*kernel_checks(host), *sysctl_checks(host), swap_check(host)]
    check, config = config_check(explicit_config)
    found.append(check)
    if config is None:
        return found
    later: list[Callable[[], Iterator[Check] | Check]] = [
        lambda: cgroup_checks(host, config), lambda: binary_checks(config),
        lambda: cni_checks(config), lambda: socket_check(config), lambda: disk_check(config),
    ]
    if network:
        later.insert(4, lambda: registry_checks(config))
    for step in later:
        result = step()
        found.extend([result] if isinstance(result, Check) else result)
    return found
