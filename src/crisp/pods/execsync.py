"""ExecSync: run a command in a running container through the OCI runtime and collect its output.

The command runs as ``runc exec`` with the container's own process settings (user, env, cwd,
capabilities) and the given argv, started as streamed exec starts it (``execspawn``: the
process spec through a pipe, ``CHILD_UMASK``, the end seen through a pidfd). On timeout the
exec'd process is killed by the pid runc wrote, and the caller gets DEADLINE_EXCEEDED. Each
stream keeps at most :data:`OUTPUT_LIMIT` bytes; the rest is read and dropped so the process
never blocks on a full pipe.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from crisp.errors import DeadlineExceeded, FailedPrecondition, InvalidArgument
from crisp.oci.runtime import OCIRuntime, runtime_failure
from crisp.pods.execspawn import container_process, spawn
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
    pid_file = bundle / f"exec-{os.urandom(8).hex()}.pid"
    spec = exec_process({"process": await container_process(bundle)}, argv)
    loop = asyncio.get_running_loop()
    out_read, out_write = os.pipe()
    err_read, err_write = os.pipe()
    try:
        try:
            runner = await spawn(runtime, container.id, spec, pid_file=pid_file, log_file=None,
                           stdin=subprocess.DEVNULL, stdout=out_write, stderr=err_write)
        finally:
            os.close(out_write)
            os.close(err_write)
        outputs = []
        for fd in (out_read, err_read):
            stream = asyncio.StreamReader(limit=1 << 20)
            transport, _ = await loop.connect_read_pipe(
                lambda stream=stream: asyncio.StreamReaderProtocol(stream),  # type: ignore[misc]
                os.fdopen(fd, "rb", buffering=0))
            outputs.append((stream, transport))
        out_read = err_read = -1
        readers = asyncio.gather(*(_read_capped(stream, limit) for stream, _ in outputs))
        try:
            stdout, stderr = await asyncio.wait_for(
                asyncio.shield(readers), seconds if seconds > 0 else None
            )
        except TimeoutError:
            await runner.kill_command()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(readers, 5)
            runner.kill()
            await runner.wait()
            raise DeadlineExceeded(
                f"command {argv!r} in container {container.id} did not finish within "
                f"{seconds}s and was killed"
            ) from None
        except asyncio.CancelledError:
            # The caller went away: the command must not live on with nobody reading it.
            await asyncio.shield(runner.kill_command())
            runner.kill()
            runner.reap()
            raise
        finally:
            for _, transport in outputs:
                transport.close()
        code = await runner.wait()
        started = runner.started_pid() is not None or await asyncio.to_thread(pid_file.exists)
    finally:
        for fd in (out_read, err_read):
            if fd >= 0:
                os.close(fd)
        pid_file.unlink(missing_ok=True)
    if code != 0 and not started and _runc_failed(stderr):
        raise runtime_failure(f"exec in container {container.id} failed: "
                              f"{stderr.decode(errors='replace').strip()}")
    return ExecResult(stdout=stdout, stderr=stderr, exit_code=code)


def _runc_failed(stderr: bytes) -> bool:
    """runc itself (not the command) failed: it reports with its own prefix."""
    text = stderr.decode(errors="replace")
    return "runc exec failed" in text or text.startswith("time=") or '"level":"error"' in text


async def _read_capped(stream: asyncio.StreamReader, limit: int) -> bytes:
    kept = bytearray()
    while True:
        chunk = await stream.read(65536)
        if not chunk:
            return bytes(kept)
        room = limit - len(kept)
        if room > 0:
            kept += chunk[:room]
