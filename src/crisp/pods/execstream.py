"""Interactive exec: ``runc exec`` of a command whose stdio the streaming server relays.

Without a terminal the command gets pipes (stdin only if asked for), so stdout and stderr stay
apart. With one, runc makes the terminal in the container and hands its master side back
over a console socket (SCM_RIGHTS); crisp reads and writes the master and resizes it with
TIOCSWINSZ. runc stays in the foreground either way and exits with the command's status
(128+n for a signal), which is the exit code reported. runc's own errors go to a log file,
not to the client's stderr, and a failure to start becomes an error rather than an exit code.
"""

from __future__ import annotations

import array
import asyncio
import contextlib
import fcntl
import json
import logging
import os
import secrets
import signal
import socket
import struct
import termios
from pathlib import Path
from typing import Any

from crisp.durable import write_atomic
from crisp.errors import FailedPrecondition, InvalidArgument, RuntimeFailure
from crisp.oci.runtime import OCIRuntime
from crisp.pods.model import Container, ContainerState

log = logging.getLogger(__name__)

CONSOLE_TIMEOUT = 30.0
_READ_SIZE = 65536


def interactive_process(container_spec: dict[str, Any], argv: list[str], tty: bool
                        ) -> dict[str, Any]:
    """The container's own OCI process (user, env, cwd, capabilities) with ``argv``."""
    process = dict(container_spec.get("process", {}))
    process["args"] = list(argv)
    process["terminal"] = tty
    process.pop("consoleSize", None)
    return process


class ExecProcess:
    """One running exec; satisfies :class:`crisp.streaming.relay.Attachable`."""

    def __init__(self, container_id: str, runner: asyncio.subprocess.Process, files: list[Path],
                 pid_file: Path, log_file: Path):
        self.container_id = container_id
        self.runner = runner
        self._files = files
        self.pid_file = pid_file
        self.log_file = log_file
        self._master: int | None = None
        self._master_reader: asyncio.StreamReader | None = None
        self._master_transport: asyncio.BaseTransport | None = None

    # Start ---------------------------------------------------------------------------------

    @classmethod
    async def start(cls, runtime: OCIRuntime, container: Container, argv: list[str], *,
                    tty: bool, stdin: bool, stdout: bool, stderr: bool,
                    console_dir: Path) -> ExecProcess:
        if not argv:
            raise InvalidArgument("Exec needs a command (cmd is empty)")
        if container.state != ContainerState.RUNNING:
            raise FailedPrecondition(
                f"container {container.id} is {container.state}: commands run only in a "
                "running container")
        bundle = Path(container.bundle)
        token = secrets.token_hex(8)
        process_file = bundle / f"exec-{token}.json"
        pid_file = bundle / f"exec-{token}.pid"
        log_file = bundle / f"exec-{token}.log"
        spec = json.loads(await asyncio.to_thread((bundle / "config.json").read_text))
        await asyncio.to_thread(write_atomic, process_file,
                                json.dumps(interactive_process(spec, argv, tty)).encode(), 0o600)
        files = [process_file, pid_file, log_file]
        args = [runtime.path, "--root", str(runtime.root), "--log", str(log_file),
                "--log-format", "json", "exec", "--process", str(process_file),
                "--pid-file", str(pid_file)]
        console: socket.socket | None = None
        try:
            if tty:
                await asyncio.to_thread(console_dir.mkdir, parents=True, exist_ok=True,
                                        mode=0o700)
                console_path = console_dir / f"{token}.sock"
                files.append(console_path)
                console = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
                console.bind(str(console_path))
                console.listen(1)
                console.setblocking(False)
                args += ["--console-socket", str(console_path)]
            pipe = asyncio.subprocess.PIPE
            devnull = asyncio.subprocess.DEVNULL
            runner = await asyncio.create_subprocess_exec(
                *args, container.id,
                stdin=pipe if stdin and not tty else devnull,
                stdout=pipe if stdout and not tty else devnull,
                stderr=pipe if stderr and not tty else devnull,
                start_new_session=True,
            )
            process = cls(container.id, runner, files, pid_file, log_file)
            if console is not None:
                await process._receive_console(console)
        except BaseException:
            for path in files:
                path.unlink(missing_ok=True)
            raise
        finally:
            if console is not None:
                console.close()
        return process

    async def _receive_console(self, console: socket.socket) -> None:
        loop = asyncio.get_running_loop()
        accepting = asyncio.ensure_future(loop.sock_accept(console))
        exited = asyncio.ensure_future(self.runner.wait())
        done, _ = await asyncio.wait({accepting, exited}, timeout=CONSOLE_TIMEOUT,
                                     return_when=asyncio.FIRST_COMPLETED)
        if accepting not in done:
            accepting.cancel()
            if exited not in done:
                exited.cancel()
                await self.abandon()
                raise RuntimeFailure(f"runc gave no terminal within {CONSOLE_TIMEOUT:.0f}s")
            raise RuntimeFailure(f"exec in container {self.container_id} failed: "
                                 f"{await self.runtime_error()}")
        exited.cancel()
        connection, _ = accepting.result()
        with connection:
            master = await loop.run_in_executor(None, _receive_fd, connection)
        os.set_blocking(master, False)
        self._master = master
        reader = asyncio.StreamReader(limit=1 << 20)
        self._master_reader = reader
        # A dup for the read transport, so closing it never closes the fd writes use.
        reading = os.fdopen(os.dup(master), "rb", buffering=0)
        self._master_transport, _ = await loop.connect_read_pipe(
            lambda: asyncio.StreamReaderProtocol(reader), reading)

    # Attachable ----------------------------------------------------------------------------

    async def write_stdin(self, data: bytes) -> None:
        if self._master is not None:
            await _write_fd(self._master, data)
        elif self.runner.stdin is not None:
            self.runner.stdin.write(data)
            await self.runner.stdin.drain()

    async def close_stdin(self) -> None:
        if self._master is not None:
            return  # a terminal stays open: closing it would hang up the command
        if self.runner.stdin is not None:
            self.runner.stdin.close()
            with contextlib.suppress(ConnectionError, BrokenPipeError):
                await self.runner.stdin.wait_closed()

    async def read_output(self, fd: int) -> bytes:
        if self._master_reader is not None:
            if fd != 1:
                return b""
            try:
                return await self._master_reader.read(_READ_SIZE)
            except OSError:  # EIO: the terminal's last user is gone
                return b""
        stream = self.runner.stdout if fd == 1 else self.runner.stderr
        if stream is None:
            return b""
        return await stream.read(_READ_SIZE)

    async def resize(self, size: Any) -> None:
        if self._master is not None:
            fcntl.ioctl(self._master, termios.TIOCSWINSZ,
                        struct.pack("HHHH", size.height, size.width, 0, 0))

    async def wait(self) -> int:
        code = await self.runner.wait()
        started = await asyncio.to_thread(self.pid_file.exists)
        if code != 0 and not started:
            message = await self.runtime_error()
            raise RuntimeFailure(f"exec in container {self.container_id} failed: {message}")
        return code

    async def close(self) -> None:
        """Release the terminal and the exec's files (the relay is done with the output)."""
        self._cleanup()

    async def abandon(self) -> None:
        """Kill the command (by the pid runc wrote) and runc with it."""
        await asyncio.to_thread(_kill_pid_file, self.pid_file)
        try:
            await asyncio.wait_for(asyncio.shield(self.runner.wait()), 5)
        except TimeoutError:
            with contextlib.suppress(ProcessLookupError):
                self.runner.kill()
            await self.runner.wait()
        self._cleanup()

    async def runtime_error(self) -> str:
        return await asyncio.to_thread(_runtime_error, self.log_file)

    def _cleanup(self) -> None:
        if self._master_transport is not None:
            self._master_transport.close()
            self._master_transport = None
        if self._master is not None:
            with contextlib.suppress(OSError):
                os.close(self._master)
            self._master = None
        for path in self._files:
            path.unlink(missing_ok=True)


def _receive_fd(connection: socket.socket) -> int:
    """The terminal master runc sends over the console socket."""
    connection.setblocking(True)
    connection.settimeout(CONSOLE_TIMEOUT)
    fds = array.array("i")
    _, ancillary, _, _ = connection.recvmsg(4096, socket.CMSG_SPACE(fds.itemsize))
    for level, kind, data in ancillary:
        if level == socket.SOL_SOCKET and kind == socket.SCM_RIGHTS:
            fds.frombytes(data[:len(data) - len(data) % fds.itemsize])
    if not fds:
        raise RuntimeFailure("runc sent no terminal over the console socket")
    for extra in fds[1:]:
        os.close(extra)
    return fds[0]


async def _write_fd(fd: int, data: bytes) -> None:
    loop = asyncio.get_running_loop()
    view = memoryview(data)
    while view:
        try:
            written = os.write(fd, view)
        except BlockingIOError:
            ready = loop.create_future()
            loop.add_writer(fd, ready.set_result, None)
            try:
                await ready
            finally:
                loop.remove_writer(fd)
            continue
        view = view[written:]


def _kill_pid_file(pid_file: Path) -> None:
    try:
        pid = int(pid_file.read_text().strip())
    except (FileNotFoundError, ValueError):
        return
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGKILL)


def _runtime_error(log_file: Path) -> str:
    try:
        lines = log_file.read_text(errors="replace").splitlines()
    except FileNotFoundError:
        return "(runc left no log)"
    for line in reversed(lines):
        try:
            entry = json.loads(line)
        except ValueError:
            continue
        if entry.get("level") in ("error", "fatal"):
            return str(entry.get("msg", line))
    return lines[-1] if lines else "(empty runc log)"
