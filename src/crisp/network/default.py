"""crisp's built-in network: a bridge with host-local IPAM, hostPorts and loopback.

Written into conf_dir (when the ``cni.write_default_config`` option says so) only while that
directory holds no config at all, so a fresh machine gets pod networking and an
administrator's own config always wins. The file is rewritten when the pod CIDR changes,
but only while it is still exactly what crisp wrote.
"""

from __future__ import annotations

import ipaddress
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from crisp.durable import write_atomic
from crisp.filemodes import public_dir
from crisp.network.conflist import NetworkConfig
from crisp.network.discovery import config_files

DEFAULT_CONFIG_NAME = "99-crisp-default.conflist"
DEFAULT_NETWORK_NAME = "crisp"
DEFAULT_BRIDGE = "crisp0"


def render(subnets: Sequence[str], ipam_dir: str,
           per_pod_masquerade: bool = False) -> dict[str, Any]:
    """The default conflist for the given pod subnets (IPv4 and/or IPv6).

    Its bridge masquerades nothing itself: crisp puts one rule set per subnet in place
    (:mod:`crisp.network.masquerade`) rather than the plugin's chain per pod.
    ``per_pod_masquerade`` renders the file as crisp wrote it before, to recognise it.
    """
    networks = [ipaddress.ip_network(s, strict=False) for s in subnets]
    if not networks:
        raise ValueError("the default network needs at least one subnet")
    routes = [{"dst": "0.0.0.0/0" if n.version == 4 else "::/0"}
              for n in sorted(networks, key=lambda n: n.version)]
    return {
        "cniVersion": "1.0.0",
        "name": DEFAULT_NETWORK_NAME,
        "plugins": [
            {"type": "loopback"},
            {
                "type": "bridge",
                "bridge": DEFAULT_BRIDGE,
                "isGateway": True,
                "ipMasq": per_pod_masquerade,
                "hairpinMode": True,
                "ipam": {
                    "type": "host-local",
                    "ranges": [[{"subnet": str(n)}] for n in networks],
                    "routes": list({r["dst"]: r for r in routes}.values()),
                    "dataDir": ipam_dir,
                },
            },
            {"type": "portmap", "capabilities": {"portMappings": True}, "snat": True},
        ],
    }


def encode(document: dict[str, Any]) -> bytes:
    return (json.dumps(document, indent=2) + "\n").encode()


def ensure_default(conf_dir: Path, subnets: Sequence[str], ipam_dir: str) -> bool:
    """Write or refresh the default config where allowed; return whether the file changed.

    Blocking (directory scan and fsync): call it in a thread.
    """
    wanted = encode(render(subnets, ipam_dir))
    path = conf_dir / DEFAULT_CONFIG_NAME
    existing = config_files(conf_dir)
    if not existing:
        if not conf_dir.is_dir():
            # A conf dir crisp makes is public, as /etc/cni/net.d: other node tools read it.
            public_dir(conf_dir)
        write_atomic(path, wanted)
        return True
    if path not in existing:
        return False
    try:
        current = path.read_bytes()
    except OSError:
        return False
    if current == wanted or not _is_untouched(current, ipam_dir):
        return False
    write_atomic(path, wanted)
    return True


def _is_untouched(content: bytes, ipam_dir: str) -> bool:
    """Whether ``content`` is crisp's own rendering for some subnets, edited by nobody."""
    try:
        document = json.loads(content)
        bridge = document["plugins"][1]
        subnets = [entry[0]["subnet"] for entry in bridge["ipam"]["ranges"]]
        return any(encode(render(subnets, ipam_dir, per_pod)) == content
                   for per_pod in (False, True))
    except (ValueError, KeyError, IndexError, TypeError):
        return False


def masqueraded_subnets(network: NetworkConfig, ipam_dir: str) -> list[str]:
    """The subnets whose masquerade crisp must put in place for ``network``: those of its
    default config exactly as crisp writes it; none for any other (an edited default file
    is the administrator's, whose bridge masquerades per pod with ``ipMasq: true``)."""
    return _own_subnets(network, ipam_dir) or []


def is_crisps_own(network: NetworkConfig, ipam_dir: str) -> bool:
    """Whether ``network`` is the default config exactly as crisp writes it."""
    return _own_subnets(network, ipam_dir) is not None


def _own_subnets(network: NetworkConfig, ipam_dir: str) -> list[str] | None:
    if Path(network.source).name != DEFAULT_CONFIG_NAME or len(network.plugins) < 2:
        return None
    try:
        subnets = [str(entry[0]["subnet"]) for entry in network.plugins[1]["ipam"]["ranges"]]
        wanted = render(subnets, ipam_dir)
    except (ValueError, KeyError, IndexError, TypeError):
        return None
    if network.name != wanted["name"] or list(network.plugins) != wanted["plugins"]:
        return None
    return subnets
