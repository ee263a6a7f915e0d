"""Attach: the running container's own stdio, through conmon's attach socket.

conmon holds the container's stdio and serves it on ``<bundle>/attach``, a SOCK_SEQPACKET
socket (reached through ``/proc/self/fd`` of the directory, since bundle paths can outgrow
sun_path). Each packet conmon sends is one byte naming the stream (2 stdout, 3 stderr) and
the data; what a client sends goes to the container's stdin, if it was created with one. A
client that shuts down its sending side ends that stdin when the container is
``stdin_once``. Resizes go through conmon's ``ctl`` fifo as ``1 <height> <width>``. Output
ends when conmon closes the socket, which it does when the container exits.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import os
import socket
from pathlib import Path
from typing import Any

from crisp.errors import FailedPrecondition
from crisp.oci.conmon import ContainerFiles

_PACKET = 8192 + 1
_STDOUT, _STDERR = 1, 2
_PIPE_STDOUT, _PIPE_STDERR = 2, 3  # conmon's stream bytes


class ConmonAttach:
    """One attach connection; satisfies :class:`crisp.streaming.relay.Attachable`."""

    def __init__(self, files: ContainerFiles, connection: socket.socket, stdin: bool):
        self.files = files
        self.connection = connection
        self.stdin = stdin
        self._queues: dict[int, asyncio.Queue[bytes]] = {
            _STDOUT: asyncio.Queue(64), _STDERR: asyncio.Queue(64)}
        self._by_pipe = {_PIPE_STDOUT: self._queues[_STDOUT], _PIPE_STDERR: self._queues[_STDERR]}
        self._ended = asyncio.Event()
        self._reader = asyncio.ensure_future(self._read())

    @classmethod
    async def connect(cls, files: ContainerFiles, *, stdin: bool) -> ConmonAttach:
        connection = await asyncio.to_thread(_connect, files)
        connection.setblocking(False)
        return cls(files, connection, stdin)

    async def _read(self) -> None:
        loop = asyncio.get_running_loop()
        try:
            while True:
                packet = await loop.sock_recv(self.connection, _PACKET)
                if not packet:
                    break
                queue = self._by_pipe.get(packet[0])
                if queue is not None and len(packet) > 1:
                    await queue.put(packet[1:])
        except OSError:
            pass
        finally:
            self._ended.set()
            for queue in self._queues.values():
                with contextlib.suppress(asyncio.QueueFull):
                    queue.put_nowait(b"")

    async def write_stdin(self, data: bytes) -> None:
        if not self.stdin:
            return
        loop = asyncio.get_running_loop()
        view = memoryview(data)
        for start in range(0, len(view), _PACKET - 1):
            await loop.sock_sendall(self.connection, view[start:start + _PACKET - 1])

    async def close_stdin(self) -> None:
        if self.stdin:
            with contextlib.suppress(OSError):
                self.connection.shutdown(socket.SHUT_WR)

    async def read_output(self, fd: int) -> bytes:
        queue = self._queues[fd]
        if self._ended.is_set() and queue.empty():
            return b""
        return await queue.get()

    async def resize(self, size: Any) -> None:
        await asyncio.to_thread(_write_ctl, self.files.ctl_fifo,
                                f"1 {size.height} {size.width}\n".encode())

    async def wait(self) -> int:
        await self._ended.wait()
        return 0

    async def abandon(self) -> None:
        """Detach: the container runs on."""
        await self.close()

    async def close(self) -> None:
        self._reader.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._reader
        self.connection.close()


def _connect(files: ContainerFiles) -> socket.socket:
    link = files.socket_dir / files.container_id
    directory = os.open(link if link.exists() else files.bundle, os.O_PATH | os.O_DIRECTORY)
    connection = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET | socket.SOCK_CLOEXEC)
    try:
        connection.connect(f"/proc/self/fd/{directory}/attach")
    except OSError as error:
        connection.close()
        if error.errno in (errno.ENOENT, errno.ECONNREFUSED):
            raise FailedPrecondition(
                f"container {files.container_id} has no running monitor to attach to"
            ) from None
        raise
    finally:
        os.close(directory)
    return connection


def _write_ctl(fifo: Path, message: bytes) -> None:
    try:
        fd = os.open(fifo, os.O_WRONLY | os.O_NONBLOCK)
    except OSError as error:
        if error.errno in (errno.ENXIO, errno.ENOENT):
            return  # the monitor is gone; so is the terminal
        raise
    try:
        os.write(fd, message)
    finally:
        os.close(fd)
