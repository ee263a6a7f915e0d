"""Reading a CNI ADD result (spec 0.3.0 to 1.1.0) into the pod's addresses.

The pod's IPs are those on the interface the plugins created inside the sandbox under the
requested name; IPv4 comes first because the kubelet treats the first IP as the pod's
primary one.
"""

from __future__ import annotations

import ipaddress
from typing import Any

from crisp.network.types import PodNetwork


def pod_network(result: dict[str, Any], network_name: str, ifname: str) -> PodNetwork:
    """The pod's view of a final ADD result; ValueError if the result is malformed."""
    interfaces = result.get("interfaces") or []
    ips = result.get("ips") or []
    if not isinstance(interfaces, list) or not isinstance(ips, list):
        raise ValueError("\"interfaces\" and \"ips\" must be lists")
    pod_indexes = {
        index for index, iface in enumerate(interfaces)
        if isinstance(iface, dict) and iface.get("name") == ifname and iface.get("sandbox")
    }
    mac = ""
    for index in sorted(pod_indexes):
        mac = str(interfaces[index].get("mac") or "")
        break
    addresses: list[ipaddress.IPv4Address | ipaddress.IPv6Address] = []
    for entry in ips:
        if not isinstance(entry, dict) or not isinstance(entry.get("address"), str):
            raise ValueError(f"an entry of \"ips\" has no address: {entry!r}")
        owner = entry.get("interface")
        # Without an interface index, an address cannot be placed: count it as the pod's,
        # as other runtimes do. With one, keep only those on the pod's own interface.
        if pod_indexes and isinstance(owner, int) and owner not in pod_indexes:
            continue
        try:
            interface = ipaddress.ip_interface(entry["address"])
        except ValueError:
            raise ValueError(f"{entry['address']!r} is not an address with a prefix") from None
        if interface.ip not in addresses:
            addresses.append(interface.ip)
    addresses.sort(key=lambda ip: ip.version)  # stable: IPv4 first, order kept within a family
    return PodNetwork(
        network_name=network_name,
        interface=ifname,
        ips=tuple(str(ip) for ip in addresses),
        mac=mac,
        result=result,
    )
