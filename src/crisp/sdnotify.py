"""systemd's readiness protocol (sd_notify(3)) without libsystemd: one datagram per state.

Under a ``Type=notify`` unit systemd sets ``$NOTIFY_SOCKET``; crisp says READY=1 once it
serves CRI (so units ordered after it, such as the kubelet, start only then) and STOPPING=1
when it begins to shut down. The daemon claims the variable at start-up and removes it from
its environment: runc, given a NOTIFY_SOCKET, would hand it to the container and wait for
the container's own READY=1. Without the variable every call does nothing.
"""

from __future__ import annotations

import logging
import os
import socket

log = logging.getLogger(__name__)

_address = ""
_only_until_ready = False


def claim(*, only_until_ready: bool = False) -> None:
    """Take $NOTIFY_SOCKET out of the environment for :func:`notify`.

    ``only_until_ready``: the listener waits only for READY=1 (``crisp --daemonize``).
    """
    global _address, _only_until_ready
    _address = os.environ.pop("NOTIFY_SOCKET", "")
    _only_until_ready = only_until_ready


def notify(state: str) -> bool:
    """Send ``state`` (``KEY=value`` lines) to the claimed socket; False when there is none.

    A failure to send is logged, never raised: readiness reporting must not stop the daemon.
    """
    global _address
    address = _address
    if not address:
        return False
    if address.startswith("@"):  # an abstract socket
        address = "\0" + address[1:]
    if _only_until_ready and "READY=1" in state.splitlines():
        _address = ""
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as sock:
            sock.sendto(state.encode(), address)
    except OSError as error:
        log.warning("could not notify the service manager at %s: %s", address, error)
        return False
    return True
