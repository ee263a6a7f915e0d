"""Starting ``runc exec`` with as little around it as possible: what ExecSync and streamed exec
share.

Timed step by step in the daemon (docs/streaming.md, benchmark), an exec of ``true`` spent
3-7 ms before and after runc on top of runc's own 20-30 ms: reading ``config.json`` and
writing the ``--process`` file in worker threads, and asyncio's subprocess machinery (a
watcher thread per child whose wake-up crosses threads, pipe transports set up over several
loop turns). So here:

* the container's OCI process is read once per container and kept (it never changes while
  the container lives);
* the exec's process spec goes to runc through a pipe (``--process /proc/self/fd/N``), so no
  file is written or removed;
* runc is started with :class:`subprocess.Popen` on the loop thread (which is what asyncio
  does inside too) and its end is seen through a pidfd the loop watches: no thread.

runc 1.1 ignores ``process.user.umask`` on exec, so the command's umask is the one runc is
started with: :data:`crisp.filemodes.CHILD_UMASK`, as for every helper program.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import json
import os
import signal
import subprocess
from pathlib import Path
from typing import Any

from crisp.filemodes import CHILD_UMASK
from crisp.oci.runtime import OCIRuntime

# Containers whose OCI process is kept; more than a node runs, and a stale entry is harmless
# (bundles are never reused: their path holds the container's random id).
_CACHE_SIZE = 1024
_processes: collections.OrderedDict[str, dict[str, Any]] = collections.OrderedDict()

# How long a client that left waits for runc to say which process it started.
PID_FILE_WAIT = 10.0


async def container_process(bundle: Path) -> dict[str, Any]:
    """The OCI process of the container in ``bundle``, from its ``config.json`` (kept)."""
    key = str(bundle)
    cached = _processes.get(key)
    if cached is not None:
        _processes.move_to_end(key)
        return cached
    text = await asyncio.to_thread((bundle / "config.json").read_text)
    process = dict(json.loads(text).get("process", {}))
    _processes[key] = process
    while len(_processes) > _CACHE_SIZE:
        _processes.popitem(last=False)
    return process


def forget(bundle: Path) -> None:
    """Drop what :func:`container_process` keeps for ``bundle`` (the container is gone)."""
    _processes.pop(str(bundle), None)


def exec_spec(container: dict[str, Any], argv: list[str], tty: bool) -> dict[str, Any]:
    """The container's own process (user, env, cwd, capabilities) running ``argv``."""
    process = dict(container)
    process["args"] = list(argv)
    process["terminal"] = tty
    process.pop("consoleSize", None)
    return process


class RuncExec:
    """A started ``runc exec``: its pid, and its end seen through a pidfd."""

    def __init__(self, popen: subprocess.Popen[bytes], pid_file: Path):
        self.popen = popen
        self.pid = popen.pid
        self.pid_file = pid_file
        self._ended: asyncio.Future[int] | None = None

    @property
    def returncode(self) -> int | None:
        return self.popen.returncode

    async def wait(self) -> int:
        """runc's exit code: the command's, 128+n when a signal ended it (or runc)."""
        self.reap()
        assert self._ended is not None
        code = await asyncio.shield(self._ended)
        return 128 - code if code < 0 else code

    def reap(self) -> None:
        """Make sure runc is reaped when it ends, with nobody waiting for it."""
        if self._ended is None:
            self._ended = asyncio.get_running_loop().create_future()
            self._watch(self._ended)

    def _watch(self, ended: asyncio.Future[int]) -> None:
        if self.popen.poll() is not None:
            ended.set_result(self.popen.returncode)
            return
        loop = asyncio.get_running_loop()
        try:
            pidfd = os.pidfd_open(self.pid)
        except OSError:  # no pidfds (Linux before 5.3): a thread waits instead
            future = asyncio.ensure_future(asyncio.to_thread(self.popen.wait))

            def waited(done: asyncio.Future[int]) -> None:
                if not ended.done():
                    ended.set_result(done.result())

            future.add_done_callback(waited)
            return

        def readable() -> None:
            # Popen reaps it (so it never reaps it twice, and no one else does).
            if self.popen.poll() is None:
                return
            loop.remove_reader(pidfd)
            os.close(pidfd)
            if not ended.done():
                ended.set_result(self.popen.returncode)

        loop.add_reader(pidfd, readable)

    def kill(self) -> None:
        """SIGKILL runc itself (not the command: see :meth:`kill_command`)."""
        if self.popen.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.pid, signal.SIGKILL)

    def started_pid(self) -> int | None:
        """The pid of the command, once runc has written it."""
        try:
            return int(self.pid_file.read_text().strip())
        except (FileNotFoundError, ValueError):
            return None

    async def kill_command(self, seconds: float = PID_FILE_WAIT) -> None:
        """SIGKILL the exec'd command, for sure: runc writes its pid only after starting it,
        so a client that leaves early waits for that pid (or for runc to end) first."""
        ended = asyncio.ensure_future(self.wait())
        try:
            for _ in range(int(seconds / 0.01)):
                pid = await asyncio.to_thread(self.started_pid)
                if pid is not None:
                    with contextlib.suppress(ProcessLookupError):
                        os.kill(pid, signal.SIGKILL)
                    return
                if ended.done():
                    return  # runc ended without starting anything (or it already ended)
                await asyncio.wait({ended}, timeout=0.01)
            self.kill()  # runc never said: stop it before it starts the command
        finally:
            ended.cancel()


async def spawn(runtime: OCIRuntime, container_id: str, process: dict[str, Any], *,
                pid_file: Path, log_file: Path | None, stdin: int, stdout: int, stderr: int,
                new_session: bool = False) -> RuncExec:
    """Start ``runc exec`` of ``process`` with the given stdio (fds or subprocess constants).

    Blocking for the fork and exec only, like asyncio's own subprocess start.
    """
    executable = await runtime.executable()
    return _start(executable, runtime.base_args(), container_id, process, pid_file=pid_file,
                  log_file=log_file, stdin=stdin, stdout=stdout, stderr=stderr,
                  new_session=new_session)


def _start(executable: str, base_args: list[str], container_id: str, process: dict[str, Any],
           *, pid_file: Path, log_file: Path | None, stdin: int, stdout: int, stderr: int,
           new_session: bool) -> RuncExec:
    """The fork and exec, on the loop's thread as asyncio's own subprocess start does them."""
    args = list(base_args)
    if log_file is not None:
        args += ["--log", str(log_file), "--log-format", "json"]
    spec_read, spec_write = os.pipe()
    try:
        args += ["exec", "--process", f"/proc/self/fd/{spec_read}", "--pid-file", str(pid_file),
                 container_id]
        popen = subprocess.Popen(
            args, executable=executable, stdin=stdin, stdout=stdout, stderr=stderr,
            pass_fds=(spec_read,),
            umask=CHILD_UMASK,  # the command inherits it from runc
            start_new_session=new_session)
    except BaseException:
        os.close(spec_write)
        raise
    finally:
        os.close(spec_read)
    _feed(spec_write, json.dumps(process).encode())
    return RuncExec(popen, pid_file)


def _feed(fd: int, data: bytes) -> None:
    """Write ``data`` to the pipe ``fd`` and close it; what the pipe cannot hold yet is
    written as runc reads, without blocking the loop."""
    os.set_blocking(fd, False)
    try:
        written = os.write(fd, data)
    except BlockingIOError:
        written = 0
    except BrokenPipeError:  # runc is already gone; its exit code tells the rest
        os.close(fd)
        return
    if written == len(data):
        os.close(fd)
        return
    loop = asyncio.get_running_loop()
    rest = memoryview(data)[written:]

    def writable() -> None:
        nonlocal rest
        try:
            rest = rest[os.write(fd, rest):]
        except BlockingIOError:
            return
        except OSError:
            rest = rest[:0]
        if not rest:
            loop.remove_writer(fd)
            os.close(fd)

    loop.add_writer(fd, writable)
