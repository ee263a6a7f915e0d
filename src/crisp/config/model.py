"""The typed configuration of crisp, with every option's default and meaning.

Every field has a default so crisp runs with no file at all. A field's ``doc`` metadata is
the comment ``crisp config default`` prints above it, and ``live`` marks the options a SIGHUP
may change without a restart.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

LogLevel = Literal["debug", "info", "warning", "error"]
LogFormat = Literal["text", "json"]
CgroupManager = Literal["cgroupfs", "systemd"]


def option(default: Any, doc: str, *, live: bool = False, factory: Any = None) -> Any:
    """A config field: its default, the comment that documents it, and if SIGHUP applies it."""
    metadata = {"doc": doc, "live": live}
    if factory is not None:
        return field(default_factory=factory, metadata=metadata)
    return field(default=default, metadata=metadata)


@dataclass(frozen=True)
class RuntimeHandler:
    """One OCI runtime that pods can select by RuntimeClass handler name."""

    runtime_path: str = option("runc", "OCI runtime binary: an absolute path or a name on PATH.")
    runtime_root: str = option(
        "", "The runtime's --root state directory; empty means <run_dir>/runtimes/<name>."
    )
    runtime_type: Literal["oci"] = option(
        "oci", 'How crisp drives the runtime; "oci" is the runc command-line interface.'
    )
    privileged_without_host_devices: bool = option(
        False, "Privileged containers of this handler do not get the host's devices."
    )
    monitor_path: str = option(
        "conmon", "The conmon binary that watches each container: an absolute path or a name."
    )


def _default_runtimes() -> dict[str, RuntimeHandler]:
    return {"runc": RuntimeHandler()}


@dataclass(frozen=True)
class RegistryTLS:
    """TLS towards one registry host (or host:port): a private CA, a client certificate."""

    ca_file: str = option("", "PEM CA bundle trusted for this host, on top of the system's.")
    cert_file: str = option("", "PEM client certificate for mutual TLS (may hold the key too).")
    key_file: str = option("", "PEM private key of cert_file, if not in that file.")
    insecure_skip_verify: bool = option(
        False, "Do not verify the host's certificate (encrypted but not authenticated)."
    )


@dataclass(frozen=True)
class RegistryConfig:
    """Where images come from and how registries are reached."""

    search: list[str] = option(
        None,
        'Registries tried, in order, for short image names such as "busybox".',
        live=True,
        factory=lambda: ["docker.io"],
    )
    insecure: list[str] = option(
        None,
        "Registries (host or host:port) reached over plain HTTP or unverified TLS. "
        "localhost and 127.0.0.1 always are.",
        live=True,
        factory=list,
    )
    mirrors: dict[str, list[str]] = option(
        None,
        "Mirrors per registry host, tried in order before the registry itself, as "
        '"docker.io" = ["https://mirror.example:5000"].',
        live=True,
        factory=dict,
    )
    mirror_credentials: dict[str, list[str]] = option(
        None,
        "Hosts (host[:port]) that also get a registry's credentials when they serve its "
        'images, as "registry.example:5000" = ["mirror.lan:5000"] ("*": every mirror or '
        "server configured for it); credentials go to no other host.",
        live=True,
        factory=dict,
    )
    tls: dict[str, RegistryTLS] = option(
        None,
        'TLS per registry host, as [registries.tls."host:port"]; a host named here is '
        "reached over HTTPS, localhost too.",
        live=True,
        factory=dict,
    )
    config_path: str = option(
        "",
        "A containerd hosts directory (DIR/<host[:port]>/hosts.toml, DIR/_default/hosts.toml); "
        "it fills in what this table leaves unset for a host.",
        live=True,
    )
    registries_conf: str = option(
        "",
        "A containers-registries.conf v2 file (and its FILE.d/*.conf drop-ins), as CRI-O "
        "reads it; it fills in what this table and config_path leave unset.",
        live=True,
    )
    auth_file: str = option(
        "",
        "Node-wide credentials in docker config.json / containers auth.json form, used by "
        "pulls that bring none.",
        live=True,
    )


@dataclass(frozen=True)
class ImageConfig:
    """Pulling and unpacking images."""

    pull_timeout: float = option(0.0, "Seconds a whole pull may take; 0 means no limit.", live=True)
    pull_progress_timeout: float = option(
        300.0, "Seconds a pull may make no progress before it is cancelled.", live=True
    )
    max_concurrent_downloads: int = option(
        3, "Layers downloaded in parallel for one pull.", live=True
    )
    unpack_while_downloading: bool = option(
        True,
        "Unpack each layer as its bytes arrive (it is marked ready only once the whole blob "
        "verified); false unpacks a layer after its download.",
        live=True,
    )
    registry_helper_idle: float = option(
        30.0,
        "Seconds the registry helper process (the HTTP client of pulls, kept out of the "
        "daemon's memory) stays after its last request; the next pull starts a new one.",
        live=True,
    )


@dataclass(frozen=True)
class PodConfig:
    """Pod sandboxes and their infra (pause) process."""

    pause_image: str = option(
        "registry.k8s.io/pause:3.9",
        "Image of the infra process, started where a pod shares one PID namespace; pulled "
        "when first needed and pinned (never garbage-collected by the kubelet).",
    )
    infra_container: bool = option(
        False, "Start an infra (pause) process in every pod, not only where one is needed."
    )
    stop_timeout: float = option(
        10.0,
        "Seconds StopPodSandbox gives each still running container after its stop signal "
        "before it sends SIGKILL.",
    )


@dataclass(frozen=True)
class CNIConfig:
    """Pod networking through CNI plugins."""

    conf_dir: str = option(
        "/etc/cni/net.d",
        "Directory of CNI network configs; the lexically first valid one is used.",
        live=True,
    )
    bin_dirs: list[str] = option(
        None,
        "Directories searched for CNI plugin binaries.",
        live=True,
        factory=lambda: ["/opt/cni/bin", "/usr/lib/cni"],
    )
    write_default_config: bool = option(
        False,
        "Write crisp's own bridge network config into conf_dir when it holds none.",
        live=True,
    )
    default_subnet: str = option(
        "10.88.0.0/16",
        "Pod subnet of the default bridge config, unless the kubelet sends one.",
        live=True,
    )


@dataclass(frozen=True)
class StreamingConfig:
    """The HTTP server behind Exec, Attach and PortForward."""

    address: str = option("127.0.0.1", "Address the streaming server listens on.")
    port: int = option(0, "Port of the streaming server; 0 picks a free one.")
    token_ttl: float = option(
        60.0, "Seconds a streaming URL stays valid before its client must connect."
    )
    tls_cert_file: str = option(
        "", "PEM certificate for HTTPS streaming; empty serves plain HTTP."
    )
    tls_key_file: str = option("", "PEM private key of tls_cert_file (if not in that file).")


@dataclass(frozen=True)
class MetricsConfig:
    """The Prometheus endpoint."""

    enabled: bool = option(False, "Serve Prometheus metrics over HTTP.")
    address: str = option("127.0.0.1", "Address the metrics endpoint listens on.")
    port: int = option(9090, "Port of the metrics endpoint.")


@dataclass(frozen=True)
class Config:
    """Everything crisp can be told, with its built-in defaults."""

    root_dir: str = option("/var/lib/crisp", "Persistent state: database, images, containers.")
    run_dir: str = option("/run/crisp", "Volatile state: namespace pins, bundles, runtime state.")
    socket: str = option("/run/crisp/crisp.sock", "The CRI gRPC unix socket.")
    log_level: LogLevel = option("info", "Least severe log level written.", live=True)
    log_format: LogFormat = option(
        "text", "Log lines as text, or json (one object per line).", live=True
    )
    cgroup_manager: CgroupManager = option(
        "cgroupfs",
        "The cgroup driver: cgroupfs, or systemd where systemd runs as init; it must match "
        "the kubelet's cgroupDriver (RuntimeConfig reports it to the kubelet).",
    )
    default_runtime: str = option(
        "runc", "The runtime handler of pods that name none; must be one of [runtimes]."
    )
    runtimes: dict[str, RuntimeHandler] = option(
        None, "One table per runtime handler.", live=True, factory=_default_runtimes
    )
    registries: RegistryConfig = option(None, "", live=True, factory=RegistryConfig)
    images: ImageConfig = option(None, "", live=True, factory=ImageConfig)
    pod: PodConfig = option(None, "", factory=PodConfig)
    cni: CNIConfig = option(None, "", live=True, factory=CNIConfig)
    streaming: StreamingConfig = option(None, "", factory=StreamingConfig)
    metrics: MetricsConfig = option(None, "", factory=MetricsConfig)

    def runtime(self, name: str) -> RuntimeHandler:
        """The handler called ``name`` ("" is the default); KeyError names the known ones."""
        handler = self.runtimes.get(name or self.default_runtime)
        if handler is None:
            known = ", ".join(sorted(self.runtimes))
            raise KeyError(f"runtime handler {name!r} is not configured (configured: {known})")
        return handler
