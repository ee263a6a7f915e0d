"""``crisp --daemonize``: crisp in the background on systems without systemd.

The caller forks twice (the daemon is no session leader and has no terminal) and returns
only once the daemon serves CRI (it says READY=1 on a notify socket of the caller's, as it
would to systemd) or has died; its exit code says which. The daemon writes its pid file and
removes it when it exits (crisp.cli.daemon writes it once the daemon holds its lock).
"""

from __future__ import annotations

import atexit
import contextlib
import os
import select
import socket
import sys
import tempfile
import time
from pathlib import Path

READY_TIMEOUT_S = 120.0


def daemonize(log_file: Path) -> None:
    """Fork into the background; returns in the daemon, exits in the caller."""
    directory = tempfile.mkdtemp(prefix="crisp-start-")
    address = os.path.join(directory, "notify")
    ready = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    ready.bind(address)
    alive_read, alive_write = os.pipe()  # EOF for the caller when the daemon dies
    if os.fork() > 0:
        os.close(alive_write)
        code = _wait_ready(ready, alive_read, log_file)
        ready.close()
        with contextlib.suppress(OSError):
            os.unlink(address)
            os.rmdir(directory)
        sys.stdout.flush()  # os._exit skips it, and a pipe's stdout is block-buffered
        sys.stderr.flush()
        os._exit(code)
    os.setsid()
    if os.fork() > 0:
        os._exit(0)
    ready.close()
    os.close(alive_read)
    os.environ["NOTIFY_SOCKET"] = address
    os.chdir("/")
    log = os.open(log_file, os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_CLOEXEC, 0o600)
    null = os.open(os.devnull, os.O_RDONLY)
    os.dup2(null, 0)
    os.dup2(log, 1)
    os.dup2(log, 2)
    os.close(null)
    os.close(log)
    sys.stdout = os.fdopen(1, "w", buffering=1)
    sys.stderr = os.fdopen(2, "w", buffering=1)
    # alive_write stays open (and non-inheritable) for the daemon's whole life.


def write_pid_file(path: Path) -> None:
    """Write this process's pid to ``path``, removed again when the process exits."""
    pid = os.getpid()
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(f"{pid}\n")

    def remove() -> None:
        with contextlib.suppress(OSError):
            if path.read_text().strip() == str(pid):
                path.unlink()

    atexit.register(remove)


def _wait_ready(ready: socket.socket, alive: int, log_file: Path) -> int:
    deadline = time.monotonic() + READY_TIMEOUT_S
    while (left := deadline - time.monotonic()) > 0:
        readable, _, _ = select.select([ready.fileno(), alive], [], [], left)
        if ready.fileno() in readable:
            message = ready.recv(4096).decode(errors="replace")
            if "READY=1" in message.splitlines():
                status = [m for m in message.splitlines() if m.startswith("STATUS=")]
                print(f"crisp started in the background ({status[0][7:] if status else 'ready'})")
                return 0
        elif alive in readable:
            print(f"crisp exited before it served CRI; see {log_file}", file=sys.stderr)
            return 1
    print(f"crisp did not serve CRI within {READY_TIMEOUT_S:.0f}s; see {log_file}",
          file=sys.stderr)
    return 1
