"""systemd's readiness protocol (sd_notify(3)) without libsystemd: one datagram per state.

Under a ``Type=notify`` unit systemd sets ``$NOTIFY_SOCKET``; crisp says READY=1 once it
serves CRI (so units ordered after it, such as the kubelet, start only then) and STOPPING=1
when it begins to shut down. Without the variable every call does nothing.
"""

from __future__ import annotations

import logging
import os
import socket

log = logging.getLogger(__name__)


def notify(state: str) -> bool:
    """Send ``state`` (``KEY=value`` lines) to $NOTIFY_SOCKET; False when there is none.

    A failure to send is logged, never raised: readiness reporting must not stop the daemon.
    """
    address = os.environ.get("NOTIFY_SOCKET", "")
    if not address:
        return False
    if address.startswith("@"):  # an abstract socket
        address = "\0" + address[1:]
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as sock:
            sock.sendto(state.encode(), address)
    except OSError as error:
        log.warning("could not notify the service manager at %s: %s", address, error)
        return False
    return True
