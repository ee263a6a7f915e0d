"""PortForward's connections: TCP to a port inside a pod's network namespace.

The daemon never switches a thread's namespaces. A short-lived helper process joins the pod's
network namespace, connects to the port on localhost there, and hands the connected socket
back over a socket pair (SCM_RIGHTS); the daemon then relays it with asyncio. Host-network
pods have no namespace of their own, and the daemon connects directly.
"""

from __future__ import annotations

import asyncio
import socket
import sys

from crisp.errors import FailedPrecondition

HELPER_TIMEOUT = 10.0

# Runs in the helper: join the namespace, connect, send the socket or the error text back.
_HELPER = r"""
import ctypes, os, socket, sys
path, port, fd = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
channel = socket.socket(fileno=fd)
try:
    ns = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.setns(ns, 0x40000000) != 0:
        raise OSError(ctypes.get_errno(), "setns " + path)
    conn = socket.create_connection(("localhost", port), timeout=5)
    socket.send_fds(channel, [b"ok"], [conn.fileno()])
except OSError as error:
    channel.sendall(("error " + (error.strerror or str(error))).encode())
"""


async def connect_in_namespace(netns: str, port: int) -> tuple[asyncio.StreamReader,
                                                                asyncio.StreamWriter]:
    """A connection to localhost:``port`` in ``netns`` (the host's when empty)."""
    if not netns:
        try:
            return await asyncio.wait_for(asyncio.open_connection("localhost", port),
                                          HELPER_TIMEOUT)
        except OSError as error:
            raise FailedPrecondition(
                f"cannot connect to port {port}: {error.strerror or error}") from None
    ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        helper = await asyncio.create_subprocess_exec(
            sys.executable, "-I", "-c", _HELPER, netns, str(port), str(theirs.fileno()),
            pass_fds=(theirs.fileno(),), stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.PIPE)
        theirs.close()
        message, fds = await asyncio.wait_for(
            asyncio.to_thread(_receive, ours), HELPER_TIMEOUT)
        _, stderr = await helper.communicate()
    finally:
        theirs.close()
        ours.close()
    if not fds:
        text = message.decode(errors="replace").removeprefix("error ").strip()
        text = text or stderr.decode(errors="replace").strip()[-500:]
        raise FailedPrecondition(f"cannot connect to port {port} in the pod: {text}")
    connection = socket.socket(fileno=fds[0])
    for extra in fds[1:]:
        socket.socket(fileno=extra).close()
    connection.setblocking(False)
    return await asyncio.open_connection(sock=connection)


def _receive(channel: socket.socket) -> tuple[bytes, list[int]]:
    channel.settimeout(HELPER_TIMEOUT)
    message, fds, _, _ = socket.recv_fds(channel, 4096, 4)
    return message, list(fds)
