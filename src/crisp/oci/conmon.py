"""conmon, the per-container monitor: it creates the container through the OCI runtime, holds
its stdio, writes the CRI log, records the exit code and outlives crisp restarts.

crisp talks to conmon through files: the sync pipe it answers the container's pid (or the
runtime's error) on, its pid file, the exit file it writes when the container ends, the
``oom`` file it leaves when the kernel OOM-killed the container, and the ``ctl`` fifo in the
bundle that asks it to reopen the log file.
"""

from __future__ import annotations

import asyncio
import errno
import json
import logging
import os
from dataclasses import dataclass
from pathlib import Path

from crisp.errors import FailedPrecondition, RuntimeFailure
from crisp.filemodes import CHILD_UMASK
from crisp.oci.runtime import OCIRuntime, runtime_failure
from crisp.steps import step

log = logging.getLogger(__name__)

# conmon's ctl fifo understands "<type> <height> <width>\n"; type 2 reopens the log.
_REOPEN_LOG_MESSAGE = b"2 0 0\n"
CREATE_TIMEOUT = 120.0


@dataclass(frozen=True)
class ContainerFiles:
    """Where conmon keeps what it knows about one container."""

    bundle: Path
    exit_dir: Path
    persist_dir: Path
    socket_dir: Path
    container_id: str

    @property
    def pid_file(self) -> Path:
        return self.bundle / "pidfile"

    @property
    def monitor_pid_file(self) -> Path:
        return self.bundle / "conmon.pid"

    @property
    def monitor_log(self) -> Path:
        return self.bundle / "conmon.log"

    @property
    def exit_file(self) -> Path:
        return self.exit_dir / self.container_id

    @property
    def oom_file(self) -> Path:
        return self.persist_dir / "oom"

    @property
    def ctl_fifo(self) -> Path:
        return self.bundle / "ctl"


@dataclass(frozen=True)
class MonitorOptions:
    name: str
    log_path: str
    tty: bool = False
    stdin: bool = False
    stdin_once: bool = False
    log_size_max: int = -1


@dataclass(frozen=True)
class Created:
    pid: int
    monitor_pid: int


class Conmon:
    """Launches conmon for containers of one OCI runtime."""

    def __init__(self, monitor_path: str, runtime: OCIRuntime):
        self.monitor_path = monitor_path
        self.runtime = runtime

    def command(self, files: ContainerFiles, options: MonitorOptions,
                runtime_executable: str | None = None) -> list[str]:
        """conmon's command line; ``runtime_executable`` is what conmon executes for the
        runtime (its sealed copy: conmon runs it for ``create`` only, while the daemon waits
        for the answer, so the copy's path is valid then)."""
        args = [
            self.monitor_path, "--api-version", "1",
            "--cid", files.container_id, "--cuuid", files.container_id,
            "--name", options.name,
            "--runtime", runtime_executable or self.runtime.path,
            "--runtime-arg", f"--root={self.runtime.root}",
            "--bundle", str(files.bundle),
            "--container-pidfile", str(files.pid_file),
            "--conmon-pidfile", str(files.monitor_pid_file),
            "--exit-dir", str(files.exit_dir),
            "--persist-dir", str(files.persist_dir),
            "--socket-dir-path", str(files.socket_dir),
            "--log-path", f"k8s-file:{options.log_path}",
            "--log-size-max", str(options.log_size_max),
            "--log-level", "info",
        ]
        if options.tty:
            args.append("--terminal")
        if options.stdin:
            args.append("--stdin")
            if not options.stdin_once:
                args.append("--leave-stdin-open")
        return args

    async def create(self, files: ContainerFiles, options: MonitorOptions) -> Created:
        """Have conmon run ``runtime create``; return the container's and conmon's pids."""
        for directory in (files.exit_dir, files.persist_dir, files.socket_dir):
            directory.mkdir(parents=True, exist_ok=True)
        files.exit_file.unlink(missing_ok=True)
        read_end, write_end = os.pipe()
        env = {"PATH": os.environ.get("PATH", "/usr/sbin:/usr/bin:/sbin:/bin"),
               "_OCI_SYNCPIPE": str(write_end)}
        command = self.command(files, options, await self.runtime.executable())
        monitor_log = os.open(files.monitor_log, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
        try:
            # conmon forks itself at once and its parent exits: the wait is conmon's own
            # start; the answer on the sync pipe comes when ``runtime create`` is done.
            with step("conmon: spawn"):
                try:
                    process = await asyncio.create_subprocess_exec(
                        *command,
                        stdin=asyncio.subprocess.DEVNULL,
                        stdout=monitor_log,
                        stderr=monitor_log,
                        env=env,
                        pass_fds=(write_end,),
                        cwd=str(files.bundle),
                        # runc inherits it: the container's mount points, /dev and its own
                        # processes get the usual umask, not the daemon's private one.
                        umask=CHILD_UMASK,
                    )
                finally:
                    os.close(monitor_log)
                os.close(write_end)
                write_end = -1
                await process.wait()
            owned, read_end = read_end, -1  # _read_answer closes it
            with step("conmon: runc create"):
                answer = await _read_answer(owned, CREATE_TIMEOUT)
        finally:
            for fd in (write_end, read_end):
                if fd >= 0:
                    os.close(fd)
        monitor_pid = _read_pid(files.monitor_pid_file)
        if not answer:
            raise RuntimeFailure(
                f"conmon exited with status {process.returncode} before creating the "
                f"container: {_tail(files.monitor_log)}"
            )
        message = json.loads(answer)
        pid = int(message.get("data", -1))
        if pid <= 0:
            raise runtime_failure(
                f"{Path(self.runtime.path).name} create failed: "
                f"{message.get('message') or _tail(files.monitor_log)}"
            )
        if monitor_pid <= 0:
            # Without conmon's pid crisp could not notice the container's exit.
            raise RuntimeFailure(
                f"conmon created the container but wrote no pid to {files.monitor_pid_file}"
            )
        return Created(pid=pid, monitor_pid=monitor_pid)

    @staticmethod
    def reopen_log(files: ContainerFiles) -> None:
        """Ask conmon to reopen the log file (the kubelet rotated it)."""
        try:
            fd = os.open(files.ctl_fifo, os.O_WRONLY | os.O_NONBLOCK)
        except OSError as error:
            if error.errno in (errno.ENXIO, errno.ENOENT):
                raise FailedPrecondition(
                    f"container {files.container_id} has no running monitor to reopen its log"
                ) from None
            raise
        try:
            os.write(fd, _REOPEN_LOG_MESSAGE)
        finally:
            os.close(fd)


def read_exit_code(files: ContainerFiles) -> int | None:
    """The exit code conmon recorded, or None if it has recorded none."""
    try:
        text = files.exit_file.read_text().strip()
    except FileNotFoundError:
        return None
    try:
        return int(text)
    except ValueError:
        return None


async def _read_answer(fd: int, seconds: float) -> bytes:
    """conmon's one-line answer on the sync pipe (empty if it closed the pipe without one)."""
    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader()
    pipe = os.fdopen(fd, "rb", buffering=0)
    transport, _ = await loop.connect_read_pipe(
        lambda: asyncio.StreamReaderProtocol(reader), pipe
    )
    try:
        line = await asyncio.wait_for(reader.readline(), seconds)
    except TimeoutError:
        raise RuntimeFailure(f"conmon gave no answer in {seconds:.0f}s") from None
    finally:
        transport.close()
    return line.strip()


def _read_pid(path: Path) -> int:
    try:
        return int(path.read_text().strip() or 0)
    except (FileNotFoundError, ValueError):
        return 0


def _tail(path: Path, limit: int = 2000) -> str:
    try:
        text = path.read_text(errors="replace").strip()
    except FileNotFoundError:
        return "(no monitor log)"
    return text[-limit:] or "(empty monitor log)"
