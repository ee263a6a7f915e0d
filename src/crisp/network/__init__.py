"""Pod networking through CNI plugins: the runtime side of the CNI specification.

The public surface is :class:`NetworkManager` and the dataclasses it takes and returns;
the modules behind it are private to this package.
"""

from crisp.network.annotations import bandwidth_from_annotations
from crisp.network.invoke import PluginError
from crisp.network.manager import POD_CIDR_SETTING, NetworkManager, parse_pod_cidrs
from crisp.network.types import (
    BandwidthLimits,
    DNSConfig,
    NetworkStatus,
    PodNetwork,
    PodRef,
    PortMapping,
    Protocol,
    parse_protocol,
)

__all__ = [
    "POD_CIDR_SETTING",
    "BandwidthLimits",
    "DNSConfig",
    "NetworkManager",
    "NetworkStatus",
    "PluginError",
    "PodNetwork",
    "PodRef",
    "PortMapping",
    "Protocol",
    "bandwidth_from_annotations",
    "parse_pod_cidrs",
    "parse_protocol",
]
