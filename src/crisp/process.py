"""Running a helper program to completion: runtimes, plugins, nsenter, unshare.

One place for what every such call needs: the output collected, a time limit, and the
child killed when the limit passes or the caller is cancelled, so that no helper keeps
running with nobody waiting for it.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from crisp.filemodes import CHILD_UMASK


@dataclass(frozen=True)
class Completed:
    """How a program ended and what it wrote."""

    returncode: int
    stdout: bytes
    stderr: bytes


async def run_program(
    argv: Sequence[str],
    *,
    time_limit: float | None,
    stdin: bytes | None = None,
    env: Mapping[str, str] | None = None,
    cwd: str | None = None,
) -> Completed:
    """Run ``argv`` and wait for it; TimeoutError (the program killed) after ``time_limit`` s.

    OSError means the program could not be started at all. The program runs under the
    usual umask, not the daemon's private one: what it creates may be a container's.
    """
    process = await asyncio.create_subprocess_exec(
        *argv,
        stdin=asyncio.subprocess.DEVNULL if stdin is None else asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        env=env,
        cwd=cwd,
        umask=CHILD_UMASK,
    )
    try:
        stdout, stderr = await asyncio.wait_for(process.communicate(stdin), time_limit)
    except BaseException:  # the time limit, or the caller was cancelled
        with contextlib.suppress(ProcessLookupError):
            process.kill()
        with contextlib.suppress(Exception):
            await asyncio.shield(process.wait())
        raise
    assert process.returncode is not None
    return Completed(process.returncode, stdout, stderr)
