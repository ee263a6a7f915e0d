"""The OCI runtime command line (runc and compatible runtimes): state, start, kill, delete, exec.

Every call is a subprocess; its stderr becomes the message of the error a client sees.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import re
import select
import signal
import stat
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from crisp.errors import CrispError, InvalidArgument, RuntimeFailure
from crisp.oci.sealed import sealed_executable
from crisp.process import Completed, run_program

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class RuntimeState:
    """What ``runc state`` says about one container."""

    id: str
    status: str  # creating, created, running, stopped, paused
    pid: int
    bundle: str


class OCIRuntime:
    """One OCI runtime binary with its own state root."""

    def __init__(self, path: str, root: Path, private_dir: Path | None = None):
        self.path = path
        self.root = root
        # The daemon's own directory for what it keeps about this binary (the names of its
        # sealed copy, oci/sealed.py); None: nowhere, the copy runs unnamed.
        self.private_dir = private_dir

    def base_args(self) -> list[str]:
        return [self.path, "--root", str(self.root)]

    async def executable(self) -> str:
        """What to execute for a runtime call that starts ``runc init`` (create, exec): its
        sealed copy (oci/sealed.py), or its path when there is none. Valid while the daemon
        lives: ask again for every call.

        The other calls (state, start, kill, delete, update) run the binary from its path:
        runc makes its safe copy only for ``runc init``, and a memfd binary starts about
        1 ms slower than one in the page cache (``runc state``: 8.5 against 7.4 ms here).
        """
        return await sealed_executable(self.path, self.private_dir)

    async def _call(self, *args: str, seconds: float = 60.0, stdin: bytes | None = None
                    ) -> Completed:
        try:
            return await run_program([*self.base_args(), *args], time_limit=seconds, stdin=stdin)
        except TimeoutError:
            raise RuntimeFailure(
                f"{self.path} {' '.join(args)} did not finish in {seconds:.0f}s"
            ) from None

    async def _checked(self, *args: str) -> bytes:
        result = await self._call(*args)
        if result.returncode != 0:
            raise RuntimeFailure(
                f"{Path(self.path).name} {args[0]} failed: {_message(result.stderr)}"
            )
        return result.stdout

    async def state(self, container_id: str) -> RuntimeState | None:
        """The runtime's view of the container, or None when it does not know it."""
        result = await self._call("state", container_id)
        if result.returncode != 0:
            text = _message(result.stderr)
            if "does not exist" in text or "not exist" in text or "no such" in text.lower():
                return None
            raise RuntimeFailure(f"{Path(self.path).name} state failed: {text}")
        data: dict[str, Any] = json.loads(result.stdout)
        return RuntimeState(
            id=data["id"], status=data["status"], pid=int(data.get("pid") or 0),
            bundle=data.get("bundle", ""),
        )

    async def list_ids(self) -> list[str]:
        if not self.root.exists():
            return []
        out = await self._checked("list", "--format", "json")
        entries = json.loads(out or b"null") or []
        return [entry["id"] for entry in entries]

    async def start(self, container_id: str, pid: int = 0) -> None:
        """Let the created container's process run (``pid``: its ``runc init``, if known).

        All ``runc start`` does is read the byte ``runc init`` waits to write into the
        FIFO ``<root>/<id>/exec.fifo`` and then remove the FIFO (which is how runc tells a
        created container from a running one). For runc crisp does that itself: a Go
        process less per start (10-20 ms here, more under load). Anything unusual (no
        FIFO, another runtime, the init gone) goes to ``runc start``, which says why.
        """
        if pid > 0 and Path(self.path).name == "runc":
            fifo = self.root / container_id / "exec.fifo"
            if await asyncio.to_thread(_release_exec_fifo, fifo, pid):
                return
        await self._checked("start", container_id)

    async def kill(self, container_id: str, sig: int, *, all_processes: bool = False) -> None:
        """Send ``sig``; a container that has already stopped is not an error."""
        args = ["kill", *(["--all"] if all_processes else []), container_id,
                signal.Signals(sig).name.removeprefix("SIG")]
        result = await self._call(*args)
        if result.returncode != 0:
            text = _message(result.stderr)
            if any(gone in text for gone in _GONE):
                return
            raise RuntimeFailure(f"{Path(self.path).name} kill failed: {text}")

    async def delete(self, container_id: str) -> None:
        """Forget the container (killing what is left of it); an unknown id is not an error."""
        result = await self._call("delete", "--force", container_id)
        if result.returncode != 0:
            text = _message(result.stderr)
            if "does not exist" in text or "not exist" in text:
                return
            raise RuntimeFailure(f"{Path(self.path).name} delete failed: {text}")

    async def update(self, container_id: str, resources: dict[str, Any]) -> None:
        """Change the cgroup limits of a created or running container."""
        result = await self._call("update", "--resources", "-", container_id,
                                  stdin=json.dumps(resources).encode())
        if result.returncode != 0:
            raise RuntimeFailure(
                f"{Path(self.path).name} update failed: {_message(result.stderr)}"
            )

    def exec_args(self, container_id: str, process_file: Path, pid_file: Path) -> list[str]:
        """The command line that runs the process described by ``process_file`` in the container."""
        return [*self.base_args(), "exec", "--process", str(process_file),
                "--pid-file", str(pid_file), container_id]


_GONE = ("not running", "does not exist", "process already finished", "container not found")


_BAD_COMMAND = re.compile(
    # runc's logrus text escapes the quotes around the command: exec: \"/bin/x\": ...
    r'exec: \\?".*?\\?": (?:executable file not found|stat [^:]*: no such file or directory'
    r'|permission denied)'
)


def runtime_failure(message: str) -> CrispError:
    """The error for a failed runc create or exec whose message is ``message``.

    A command the container cannot run (no such file, not on $PATH, not executable) is the
    request's to fix: INVALID_ARGUMENT. Anything else is the node's runtime failing: INTERNAL.
    """
    if _BAD_COMMAND.search(message):
        return InvalidArgument(message)
    return RuntimeFailure(message)


def _release_exec_fifo(fifo: Path, pid: int, seconds: float = 10.0) -> bool:
    """Read runc init's start byte from ``fifo`` and remove it; False: leave it to runc.

    The FIFO is opened without blocking, so a reader exists for ``runc init`` to open it
    against; its byte arrives once it has. While none comes ``pid`` must still be runc
    init: one that already runs another program got its byte earlier (a daemon that died
    between reading it and removing the FIFO), so only the removal is left to do.
    """
    try:
        fd = os.open(fifo, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    except OSError:
        return False
    try:
        if not stat.S_ISFIFO(os.fstat(fd).st_mode):
            return False
        poller = select.poll()
        poller.register(fd, select.POLLIN)
        deadline = time.monotonic() + seconds
        while not poller.poll(50):
            state = _init_state(pid)
            if state == "gone" or time.monotonic() > deadline:
                return False
            if state == "running":
                break
        else:
            if os.read(fd, 1) != b"0":
                return False  # the writer went away without its byte
    finally:
        os.close(fd)
    fifo.unlink(missing_ok=True)
    return True


_RUNC_INIT_COMM = b"runc:[2:INIT]"  # runc init's name until it executes the container's


def _init_state(pid: int) -> str:
    """"waiting" (still runc init), "running" (another program) or "gone" (or a zombie)."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as file:
            text = file.read()
        comm = text[text.index(b"(") + 1:text.rindex(b")")]
        state = text.rsplit(b")", 1)[1].split()[0]
    except (OSError, ValueError, IndexError):
        return "gone"
    if state == b"Z":
        return "gone"
    return "waiting" if comm == _RUNC_INIT_COMM else "running"


def _message(stderr: bytes) -> str:
    """runc's last error line, without its logrus decoration."""
    text = stderr.decode(errors="replace").strip()
    lines = [line for line in text.splitlines() if line.strip()]
    for line in reversed(lines):
        if line.startswith("{"):
            try:
                return str(json.loads(line).get("msg", line))
            except ValueError:
                return line
        if 'msg="' in line:
            return line.split('msg="', 1)[1].rsplit('"', 1)[0]
    return lines[-1] if lines else "(no output)"
