"""Interactive exec: ``runc exec`` of a command whose stdio the streaming server relays.

Without a terminal the command gets pipes (stdin only if asked for), so stdout and stderr stay
apart. With one, runc makes the terminal in the container and, staying in the foreground,
proxies it to its own stdio; crisp gives runc a pseudo-terminal of its own as that stdio
(runc refuses a console socket unless it detaches, and a detached exec's exit code is lost).
crisp makes that terminal raw at once (runc does too, but only once it runs, and input that
arrives earlier would be echoed a second time). A resize sets the size of crisp's terminal
and sends runc SIGWINCH, on which runc copies the size to the container's terminal. runc
exits with the command's status (128+n for a signal), which is the exit code reported. runc's
own errors go to a log file, not to the client's stderr, and a failure to start becomes an
error rather than an exit code.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import json
import logging
import os
import signal
import struct
import subprocess
import termios
import tty
from pathlib import Path
from typing import Any

from crisp.errors import FailedPrecondition, InvalidArgument
from crisp.oci.runtime import OCIRuntime, runtime_failure
from crisp.pods.execspawn import RuncExec, container_process, exec_spec, spawn
from crisp.pods.model import Container, ContainerState

log = logging.getLogger(__name__)

CONSOLE_TIMEOUT = 30.0
# The command's output pipes hold 1 MiB rather than Linux's 64 KiB: each read then moves up
# to asyncio's 256 KiB, a quarter of the reads and WebSocket messages, which is where the
# relay's time went (bench/streaming.py: exec stdout 2-3x faster).
PIPE_SIZE = 1 << 20
_READ_SIZE = 1 << 20


def interactive_process(container: dict[str, Any], argv: list[str], tty: bool
                        ) -> dict[str, Any]:
    """The container's own OCI process (user, env, cwd, capabilities) with ``argv``."""
    return exec_spec(container, argv, tty)


class ExecProcess:
    """One running exec; satisfies :class:`crisp.streaming.relay.Attachable`."""

    def __init__(self, container_id: str, runner: RuncExec, files: list[Path],
                 pid_file: Path, log_file: Path):
        self.container_id = container_id
        self.runner = runner
        self._stdin: int | None = None
        self._files = files
        self.pid_file = pid_file
        self.log_file = log_file
        self._master: int | None = None
        self._master_reader: asyncio.StreamReader | None = None
        self._master_transport: asyncio.BaseTransport | None = None
        self._settle: asyncio.Future[None] | None = None
        self._outputs: dict[int, asyncio.StreamReader] = {}
        self._output_transports: list[asyncio.BaseTransport] = []

    # Start ---------------------------------------------------------------------------------

    @classmethod
    async def start(cls, runtime: OCIRuntime, container: Container, argv: list[str], *,
                    tty: bool, stdin: bool, stdout: bool, stderr: bool,
                    ) -> ExecProcess:
        if not argv:
            raise InvalidArgument("Exec needs a command (cmd is empty)")
        if container.state != ContainerState.RUNNING:
            raise FailedPrecondition(
                f"container {container.id} is {container.state}: commands run only in a "
                "running container")
        bundle = Path(container.bundle)
        token = os.urandom(8).hex()
        pid_file = bundle / f"exec-{token}.pid"
        log_file = bundle / f"exec-{token}.log"
        process_spec = interactive_process(await container_process(bundle), argv, tty)
        files = [pid_file, log_file]
        master = slave = stdin_write = -1
        ends: dict[int, tuple[int, int]] = {}
        stdin_read = -1
        runner: RuncExec | None = None
        try:
            if tty:
                # runc in the foreground proxies the container's terminal to its own stdio,
                # which is a terminal crisp holds the other side of (see the module doc).
                master, slave = os.openpty()
                raw_terminal(slave)
                runner = await spawn(runtime, container.id, process_spec, pid_file=pid_file,
                                     log_file=log_file, stdin=slave, stdout=slave,
                                     stderr=slave, new_session=True)
            else:
                ends = {fd: os.pipe() for fd, wanted in ((1, stdout), (2, stderr)) if wanted}
                if stdin:
                    stdin_read, stdin_write = os.pipe()
                try:
                    for read_end, _ in ends.values():
                        widen_pipe(read_end)
                    devnull = subprocess.DEVNULL
                    runner = await spawn(
                        runtime, container.id, process_spec, pid_file=pid_file,
                        log_file=log_file, stdin=stdin_read if stdin else devnull,
                        stdout=ends[1][1] if 1 in ends else devnull,
                        stderr=ends[2][1] if 2 in ends else devnull,
                        # In the daemon's session: a session of its own is a new scheduler
                        # autogroup, and that doubled runc exec's time on a busy machine
                        # (docs/streaming.md, benchmark).
                    )
                except BaseException:
                    for read_end, _ in ends.values():
                        os.close(read_end)
                    raise
                finally:
                    for _, write_end in ends.values():
                        os.close(write_end)
                    if stdin_read >= 0:
                        os.close(stdin_read)
            process = cls(container.id, runner, files, pid_file, log_file)
            if stdin_write >= 0:
                os.set_blocking(stdin_write, False)
                process._stdin = stdin_write
                stdin_write = -1
            if not tty:
                await process._use_outputs({fd: pair[0] for fd, pair in ends.items()})
            if tty:
                await process._use_terminal(master)
                master = -1
        except BaseException:
            if runner is not None:
                runner.kill()
                runner.reap()
            for path in files:
                path.unlink(missing_ok=True)
            for fd in (master, stdin_write):
                if fd >= 0:
                    os.close(fd)
            raise
        finally:
            if slave >= 0:
                os.close(slave)
        return process

    async def _use_terminal(self, master: int) -> None:
        loop = asyncio.get_running_loop()
        os.set_blocking(master, False)
        self._master = master
        reader = asyncio.StreamReader(limit=1 << 20)
        self._master_reader = reader
        # A dup for the read transport, so closing it never closes the fd writes use.
        reading = os.fdopen(os.dup(master), "rb", buffering=0)
        self._master_transport, _ = await loop.connect_read_pipe(
            lambda: asyncio.StreamReaderProtocol(reader), reading)
        self._settle = asyncio.ensure_future(self._resize_once_started())

    async def _use_outputs(self, read_ends: dict[int, int]) -> None:
        loop = asyncio.get_running_loop()
        for fd, read_end in read_ends.items():
            reader = asyncio.StreamReader(limit=PIPE_SIZE)
            self._outputs[fd] = reader
            transport, _ = await loop.connect_read_pipe(
                lambda reader=reader: asyncio.StreamReaderProtocol(reader),  # type: ignore[misc]
                os.fdopen(read_end, "rb", buffering=0))
            self._output_transports.append(transport)

    async def _resize_once_started(self) -> None:
        """runc reads the size on SIGWINCH; one sent before it listens is lost, so repeat it."""
        for _ in range(100):
            if await asyncio.to_thread(self.pid_file.exists):
                break
            await asyncio.sleep(0.05)
        await asyncio.sleep(0.1)
        self._signal_runc()

    def _signal_runc(self) -> None:
        if self.runner.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.runner.pid, signal.SIGWINCH)

    # Attachable ----------------------------------------------------------------------------

    async def write_stdin(self, data: bytes) -> None:
        if self._master is not None:
            await _write_fd(self._master, data)
        elif self._stdin is not None:
            await _write_fd(self._stdin, data)

    async def close_stdin(self) -> None:
        if self._master is not None:
            return  # a terminal stays open: closing it would hang up the command
        if self._stdin is not None:
            os.close(self._stdin)
            self._stdin = None

    async def read_output(self, fd: int) -> bytes:
        if self._master_reader is not None:
            if fd != 1:
                return b""
            try:
                return await self._master_reader.read(_READ_SIZE)
            except OSError:  # EIO: the terminal's last user is gone
                return b""
        stream = self._outputs.get(fd)
        if stream is None:
            return b""
        return await stream.read(_READ_SIZE)

    async def resize(self, size: Any) -> None:
        if self._master is not None:
            fcntl.ioctl(self._master, termios.TIOCSWINSZ,
                        struct.pack("HHHH", size.height, size.width, 0, 0))
            self._signal_runc()

    async def wait(self) -> int:
        code = await self.runner.wait()
        # Only a failure asks whether the command ever started (one thread hop less per exec).
        if code != 0 and not await asyncio.to_thread(self.pid_file.exists):
            message = await self.runtime_error()
            raise runtime_failure(f"exec in container {self.container_id} failed: {message}")
        return code

    async def close(self) -> None:
        """Release the terminal and the exec's files (the relay is done with the output)."""
        self._cleanup()

    async def abandon(self) -> None:
        """Kill the command (by the pid runc wrote, waiting for it if need be) and runc with
        it."""
        await self.runner.kill_command()
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
        if self._settle is not None:
            self._settle.cancel()
        if self._stdin is not None:
            os.close(self._stdin)
            self._stdin = None
        for transport in self._output_transports:
            transport.close()
        self._output_transports.clear()
        if self._master_transport is not None:
            self._master_transport.close()
            self._master_transport = None
        if self._master is not None:
            with contextlib.suppress(OSError):
                os.close(self._master)
            self._master = None
        for path in self._files:
            path.unlink(missing_ok=True)


def raw_terminal(fd: int) -> None:
    """Put crisp's terminal in raw mode before runc starts: runc makes it raw only once it
    runs, and until then the line discipline echoed what the client typed (a second echo
    beside the container's own) and could turn it into signals or edit it."""
    tty.setraw(fd, termios.TCSANOW)


def widen_pipe(fd: int, size: int = PIPE_SIZE) -> None:
    """Make a pipe hold ``size`` bytes; at Linux's default where the kernel refuses."""
    with contextlib.suppress(OSError):
        fcntl.fcntl(fd, fcntl.F_SETPIPE_SZ, size)


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
