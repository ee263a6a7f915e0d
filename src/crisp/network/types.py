"""The network package's own vocabulary: what a pod asks for and what it gets.

These dataclasses are what the rest of crisp passes in and gets back; CNI's JSON stays
inside this package. They are frozen so a result handed out cannot be changed behind the
cache's back.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass, field
from typing import Any, Literal, NamedTuple

from crisp.errors import InvalidArgument

Protocol = Literal["tcp", "udp", "sctp"]
PROTOCOLS: tuple[Protocol, ...] = ("tcp", "udp", "sctp")


def parse_protocol(name: str) -> Protocol:
    """"TCP", "udp", ... as a :data:`Protocol`; InvalidArgument for anything else."""
    lowered = name.lower()
    for known in PROTOCOLS:
        if lowered == known:
            return known
    raise InvalidArgument(f"port mapping protocol {name!r} is not TCP, UDP or SCTP")


@dataclass(frozen=True)
class PodRef:
    """Who a network attachment belongs to: the pod's name, namespace and uid."""

    name: str
    namespace: str
    uid: str

    def __post_init__(self) -> None:
        for label, value in (("name", self.name), ("namespace", self.namespace),
                             ("uid", self.uid)):
            # CNI_ARGS is "K=V;K=V": a ';' or '=' in a value would forge another argument.
            if ";" in value or "=" in value:
                raise InvalidArgument(
                    f"pod {label} {value!r} contains ';' or '=', which CNI_ARGS cannot carry"
                )


@dataclass(frozen=True)
class PortMapping:
    """A hostPort: traffic to host_ip:host_port is forwarded to the pod's container_port."""

    host_port: int
    container_port: int
    protocol: Protocol = "tcp"
    host_ip: str = ""

    def __post_init__(self) -> None:
        if self.protocol not in PROTOCOLS:
            raise InvalidArgument(
                f"port mapping protocol {self.protocol!r} is not one of {', '.join(PROTOCOLS)}"
            )
        for label, port in (("host port", self.host_port),
                            ("container port", self.container_port)):
            if not 1 <= port <= 65535:
                raise InvalidArgument(f"port mapping {label} {port} is not in 1..65535")
        if self.host_ip:
            try:
                ipaddress.ip_address(self.host_ip)
            except ValueError:
                raise InvalidArgument(
                    f"port mapping host IP {self.host_ip!r} is not an IP address"
                ) from None

    def to_cni(self) -> dict[str, Any]:
        """The entry of the portMappings capability (CNI CONVENTIONS.md)."""
        entry: dict[str, Any] = {
            "hostPort": self.host_port,
            "containerPort": self.container_port,
            "protocol": self.protocol,
        }
        if self.host_ip:
            entry["hostIP"] = self.host_ip
        return entry


@dataclass(frozen=True)
class BandwidthLimits:
    """Traffic shaping for the bandwidth capability; rates in bits/s, bursts in bits, 0 unset."""

    ingress_rate: int = 0
    ingress_burst: int = 0
    egress_rate: int = 0
    egress_burst: int = 0

    def to_cni(self) -> dict[str, int]:
        entry: dict[str, int] = {}
        for key, value in (("ingressRate", self.ingress_rate),
                           ("ingressBurst", self.ingress_burst),
                           ("egressRate", self.egress_rate),
                           ("egressBurst", self.egress_burst)):
            if value:
                entry[key] = value
        return entry


@dataclass(frozen=True)
class DNSConfig:
    """The pod's DNS settings, offered to plugins through the dns capability."""

    servers: tuple[str, ...] = ()
    searches: tuple[str, ...] = ()
    options: tuple[str, ...] = ()

    def to_cni(self) -> dict[str, list[str]]:
        return {
            "servers": list(self.servers),
            "searches": list(self.searches),
            "options": list(self.options),
        }


@dataclass(frozen=True)
class PodNetwork:
    """What a pod got from its network: addresses (IPv4 first), interface and raw result."""

    network_name: str
    interface: str
    ips: tuple[str, ...]
    mac: str = ""
    result: dict[str, Any] = field(default_factory=dict, compare=False, hash=False)

    @property
    def primary_ip(self) -> str:
        """The address PodSandboxStatus reports as ``ip``; "" when the network gave none."""
        return self.ips[0] if self.ips else ""

    @property
    def additional_ips(self) -> tuple[str, ...]:
        return self.ips[1:]


class NetworkStatus(NamedTuple):
    """The NetworkReady condition of the CRI Status call."""

    ready: bool
    reason: str
    message: str
