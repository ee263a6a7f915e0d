"""The streamed exec's plumbing: wide output pipes and an un-fsynced process file.

A stand-in runtime (a shell script taking runc's place) writes 1 MiB to stdout and exits:
with Linux's 64 KiB pipes it would block until read, so it exiting on its own shows the pipe
holds 1 MiB, and reads move more than 64 KiB at a time (bench/streaming.py's throughput).
"""

from __future__ import annotations

import asyncio
import fcntl
import json
import os
import stat
from pathlib import Path
from types import SimpleNamespace

import pytest

from crisp.pods import execstream, execsync
from crisp.pods.model import ContainerState

MIB = 1 << 20


def test_widen_pipe_makes_a_pipe_hold_a_mebibyte() -> None:
    read_end, write_end = os.pipe()
    try:
        execstream.widen_pipe(read_end)
        assert fcntl.fcntl(read_end, fcntl.F_GETPIPE_SZ) == MIB
    finally:
        os.close(read_end)
        os.close(write_end)


def test_process_file_is_private_and_not_fsynced(tmp_path: Path,
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    def no_fsync(fd: int) -> None:
        raise AssertionError("an exec's process file is not worth an fsync")

    monkeypatch.setattr(os, "fsync", no_fsync)
    path = tmp_path / "exec.json"
    execsync.write_process_file(path, {"args": ["true"]})
    assert json.loads(path.read_text()) == {"args": ["true"]}
    assert stat.S_IMODE(path.stat().st_mode) == 0o600


def test_exec_output_pipe_takes_a_mebibyte_without_a_reader(tmp_path: Path) -> None:
    runc = tmp_path / "runc"
    runc.write_text(f"#!/bin/sh\nhead -c {MIB} /dev/zero\necho done >&2\n")
    runc.chmod(0o755)
    bundle = tmp_path / "bundle"
    bundle.mkdir()
    (bundle / "config.json").write_text(json.dumps({"process": {"args": ["sh"]}}))
    runtime = SimpleNamespace(path=str(runc), root=str(tmp_path / "root"))
    container = SimpleNamespace(id="c1", state=ContainerState.RUNNING, bundle=str(bundle))

    async def run() -> tuple[int, list[int], bytes]:
        process = await execstream.ExecProcess.start(
            runtime, container, ["true"],  # type: ignore[arg-type]
            tty=False, stdin=False, stdout=True, stderr=True)
        try:
            code = await asyncio.wait_for(process.runner.wait(), 10)
            sizes = []
            while chunk := await process.read_output(1):
                sizes.append(len(chunk))
            stderr = b"".join([part async for part in _drain(process, 2)])
            return code, sizes, stderr
        finally:
            await process.close()

    code, sizes, stderr = asyncio.run(run())
    assert code == 0
    assert sum(sizes) == MIB
    assert max(sizes) > 64 * 1024
    assert stderr == b"done\n"


async def _drain(process: execstream.ExecProcess, fd: int):  # type: ignore[no-untyped-def]
    while chunk := await process.read_output(fd):
        yield chunk


def test_exec_without_a_tty_stays_in_the_daemons_session(tmp_path: Path) -> None:
    runc = tmp_path / "runc"
    runc.write_text("#!/bin/sh\nexec cat\n")
    runc.chmod(0o755)
    bundle = tmp_path / "bundle"
    bundle.mkdir()
    (bundle / "config.json").write_text(json.dumps({"process": {"args": ["sh"]}}))
    runtime = SimpleNamespace(path=str(runc), root=str(tmp_path / "root"))
    container = SimpleNamespace(id="c1", state=ContainerState.RUNNING, bundle=str(bundle))

    async def run() -> tuple[int, int]:
        process = await execstream.ExecProcess.start(
            runtime, container, ["cat"],  # type: ignore[arg-type]
            tty=False, stdin=True, stdout=True, stderr=False)
        try:
            session = os.getsid(process.runner.pid)
            await process.close_stdin()
            return session, await asyncio.wait_for(process.runner.wait(), 10)
        finally:
            await process.close()

    session, code = asyncio.run(run())
    assert code == 0
    assert session == os.getsid(0)
