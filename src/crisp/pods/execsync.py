"""ExecSync: run a command in a running container through the OCI runtime and collect its output.

The command runs as ``runc exec --process <file>`` with the container's own process settings
(user, env, cwd, capabilities) and the given argv. On timeout the exec'd process is killed by
the pid runc wrote, and the caller gets DEADLINE_EXCEEDED. Each stream keeps at most
:data:`OUTPUT_LIMIT` bytes; the rest is read and dropped so the process never blocks on a full
pipe.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import secrets
import signal
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from crisp.errors import DeadlineExceeded, FailedPrecondition, InvalidArgument, RuntimeFailure
from crisp.filemodes import CHILD_UMASK
from crisp.oci.runtime import OCIRuntime
from crisp.pods.model import Container, ContainerState

# Bytes kept per stream. CRI asks for at most 16 MiB; both streams together must also fit the
# 16 MiB gRPC messages the kubelet (and crisp's server) accept, so each gets half.
OUTPUT_LIMIT = 8 * 1024 * 1024


@dataclass(frozen=True)
class ExecResult:
    stdout: bytes
    stderr: bytes
    exit_code: int


def exec_process(container_spec: dict[str, Any], argv: list[str]) -> dict[str, Any]:
    """The OCI process of the exec: the container's own, with ``argv`` and no terminal."""
    process = dict(container_spec.get("process", {}))
    process["args"] = list(argv)
    process["terminal"] = False
    process.pop("consoleSize", None)
    return process


async def exec_sync(runtime: OCIRuntime, container: Container, argv: list[str],
                    seconds: float, limit: int = OUTPUT_LIMIT) -> ExecResult:
    if not argv:
        raise InvalidArgument("ExecSync needs a command (cmd is empty)")
    if container.state != ContainerState.RUNNING:
        raise FailedPrecondition(
            f"container {container.id} is {container.state}: commands run only in a running "
            "container"
        )
    bundle = Path(container.bundle)
    token = secrets.token_hex(8)
    process_file = bundle / f"exec-{token}.json"
    pid_file = bundle / f"exec-{token}.pid"
    spec = json.loads(await asyncio.to_thread((bundle / "config.json").read_text))
    await asyncio.to_thread(write_process_file, process_file, exec_process(spec, argv))
    try:
        process = await asyncio.create_subprocess_exec(
            *runtime.exec_args(container.id, process_file, pid_file),
            stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
            umask=CHILD_UMASK,  # the command inherits it from runc
        )
        assert process.stdout is not None and process.stderr is not None
        readers = asyncio.gather(_read_capped(process.stdout, limit),
                                 _read_capped(process.stderr, limit))
        try:
            stdout, stderr = await asyncio.wait_for(
                asyncio.shield(readers), seconds if seconds > 0 else None
            )
        except TimeoutError:
            await asyncio.to_thread(kill_exec, pid_file)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(readers, 5)
            if process.returncode is None:
                process.kill()
            await process.wait()
            raise DeadlineExceeded(
                f"command {argv!r} in container {container.id} did not finish within "
                f"{seconds}s and was killed"
            ) from None
        except asyncio.CancelledError:
            # The caller went away: the command must not live on with nobody reading it.
            await asyncio.shield(asyncio.to_thread(kill_exec, pid_file))
            if process.returncode is None:
                process.kill()
            raise
        code = await process.wait()
        started = await asyncio.to_thread(pid_file.exists)
    finally:
        process_file.unlink(missing_ok=True)
        pid_file.unlink(missing_ok=True)
    if code != 0 and not started and _runc_failed(stderr):
        raise RuntimeFailure(f"exec in container {container.id} failed: "
                             f"{stderr.decode(errors='replace').strip()}")
    return ExecResult(stdout=stdout, stderr=stderr, exit_code=code)


def _runc_failed(stderr: bytes) -> bool:
    """runc itself (not the command) failed: it reports with its own prefix."""
    text = stderr.decode(errors="replace")
    return "runc exec failed" in text or text.startswith("time=") or '"level":"error"' in text


def write_process_file(path: Path, process: dict[str, Any]) -> None:
    """An exec's ``--process`` file: private, and never fsynced.

    It lives only as long as its exec, which a crash ends anyway; the two fsyncs of a durable
    write were about 4 ms of each exec (more on a busy disk).
    """
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
    with os.fdopen(fd, "wb") as file:
        file.write(json.dumps(process).encode())


def kill_exec(pid_file: Path) -> None:
    """SIGKILL the exec'd process whose pid runc wrote to ``pid_file``, if it still runs."""
    try:
        pid = int(pid_file.read_text().strip())
    except (FileNotFoundError, ValueError):
        return
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGKILL)


async def _read_capped(stream: asyncio.StreamReader, limit: int) -> bytes:
    kept = bytearray()
    while True:
        chunk = await stream.read(65536)
        if not chunk:
            return bytes(kept)
        room = limit - len(kept)
        if room > 0:
            kept += chunk[:room]
