"""The streamed exec's plumbing: wide output pipes, the process spec through a pipe, the umask.

A stand-in runtime (a shell script taking runc's place) writes 1 MiB to stdout and exits:
with Linux's 64 KiB pipes it would block until read, so it exiting on its own shows the pipe
holds 1 MiB, and reads move more than 64 KiB at a time (bench/streaming.py's throughput).
"""

from __future__ import annotations

import asyncio
import fcntl
import json
import os
from pathlib import Path
from types import SimpleNamespace

from crisp.oci.runtime import OCIRuntime
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


def fake_runtime(tmp_path: Path, script: str) -> OCIRuntime:
    """A shell script in runc's place (its arguments are runc's)."""
    runc = tmp_path / "runc"
    runc.write_text("#!/bin/sh\n" + script)
    runc.chmod(0o755)
    root = tmp_path / "root"
    return OCIRuntime(str(runc), root)


def fake_container(tmp_path: Path, process: dict[str, object]) -> SimpleNamespace:
    bundle = tmp_path / "bundle"
    bundle.mkdir()
    (bundle / "config.json").write_text(json.dumps({"process": process}))
    return SimpleNamespace(id="c1", state=ContainerState.RUNNING, bundle=str(bundle))


def test_the_process_spec_reaches_runc_through_a_pipe_under_the_child_umask(
        tmp_path: Path) -> None:
    # The script prints its umask, then the --process "file" it was given.
    runtime = fake_runtime(tmp_path, 'umask\nwhile [ "$1" != --process ]; do shift; done\n'
                                     'cat "$2"\n')
    container = fake_container(tmp_path, {"args": ["sh"], "env": ["A=1"], "consoleSize": {}})

    async def run() -> tuple[int, bytes]:
        old = os.umask(0o077)
        try:
            process = await execstream.ExecProcess.start(
                runtime, container, ["ls", "-l"],  # type: ignore[arg-type]
                tty=False, stdin=False, stdout=True, stderr=False)
        finally:
            os.umask(old)
        try:
            code = await asyncio.wait_for(process.wait(), 10)
            return code, b"".join([part async for part in _drain(process, 1)])
        finally:
            await process.close()

    code, out = asyncio.run(run())
    assert code == 0
    umask, spec = out.split(b"\n", 1)
    assert umask == b"0022"
    assert json.loads(spec) == {"args": ["ls", "-l"], "env": ["A=1"], "terminal": False}
    assert sorted(p.name for p in Path(container.bundle).iterdir()) == ["config.json"]


def test_exec_sync_gets_the_same_umask_and_spec(tmp_path: Path) -> None:
    runtime = fake_runtime(tmp_path, 'umask\nwhile [ "$1" != --process ]; do shift; done\n'
                                     'cat "$2"\necho oops >&2\nexit 3\n')
    container = fake_container(tmp_path, {"args": ["sh"], "cwd": "/w"})
    old = os.umask(0o077)
    try:
        result = asyncio.run(execsync.exec_sync(runtime, container,  # type: ignore[arg-type]
                                                ["id"], 10))
    finally:
        os.umask(old)
    umask, spec = result.stdout.split(b"\n", 1)
    assert umask == b"0022"
    assert json.loads(spec) == {"args": ["id"], "cwd": "/w", "terminal": False}
    assert (result.stderr, result.exit_code) == (b"oops\n", 3)


def test_a_large_process_spec_is_fed_as_runc_reads(tmp_path: Path) -> None:
    runtime = fake_runtime(tmp_path, 'while [ "$1" != --process ]; do shift; done\n'
                                     'sleep 0.2; cat "$2"\n')
    env = [f"V{i}={'x' * 100}" for i in range(3000)]  # about 330 KB, more than a pipe holds
    container = fake_container(tmp_path, {"args": ["sh"], "env": env})
    result = asyncio.run(execsync.exec_sync(runtime, container,  # type: ignore[arg-type]
                                            ["true"], 10))
    assert json.loads(result.stdout)["env"] == env


def test_exec_output_pipe_takes_a_mebibyte_without_a_reader(tmp_path: Path) -> None:
    runtime = fake_runtime(tmp_path, f"head -c {MIB} /dev/zero\necho done >&2\n")
    container = fake_container(tmp_path, {"args": ["sh"]})

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
    runtime = fake_runtime(tmp_path, "exec cat\n")
    container = fake_container(tmp_path, {"args": ["sh"]})

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
