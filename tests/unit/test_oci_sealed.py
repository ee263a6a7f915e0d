"""The OCI runtime run from a sealed memfd copy (oci/sealed.py): the copy itself, and crisp's
own runtime calls executing it, with the binary's path as the fallback."""

from __future__ import annotations

import asyncio
import fcntl
import json
import os
import shutil
import subprocess
from pathlib import Path

import pytest

from crisp.oci import sealed
from crisp.oci.runtime import OCIRuntime

# A stand-in runtime: ``state`` answers with the file it runs from and the name it was given.
_FAKE_RUNTIME = r"""
#include <stdio.h>
#include <unistd.h>
int main(int argc, char **argv) {
    char exe[4096] = {0};
    readlink("/proc/self/exe", exe, sizeof exe - 1);
    printf("{\"id\": \"%s\", \"status\": \"running\", \"pid\": 1, \"bundle\": \"%s\"}\n",
           exe, argv[0]);
    return 0;
}
"""


@pytest.fixture(autouse=True)
def fresh_copies() -> None:
    """Every test makes its own copies (the table is per daemon process)."""
    for copy in sealed._sealed.values():
        if copy.fd is not None:
            os.close(copy.fd)
    sealed._sealed.clear()
    sealed._making.clear()


@pytest.fixture()
def fake_runtime(tmp_path: Path) -> Path:
    if shutil.which("cc") is None:
        pytest.skip("no C compiler for the stand-in runtime")
    source = tmp_path / "runc.c"
    source.write_text(_FAKE_RUNTIME)
    binary = tmp_path / "bin" / "runc"
    binary.parent.mkdir()
    subprocess.run(["cc", "-o", str(binary), str(source)], check=True)
    return binary


def test_an_elf_runtime_runs_from_a_sealed_copy_made_once_per_version(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(sealed, "RETIRE_AFTER", 0.0)
    binary = tmp_path / "runc"
    shutil.copy("/bin/echo", binary)
    script = tmp_path / "wrapper"
    script.write_text("#!/bin/sh\necho wrapped\n")
    script.chmod(0o755)
    links = tmp_path / "links"

    async def run() -> tuple[str, str, str, str]:
        first = await sealed.sealed_executable(str(binary), links)
        copy = os.readlink(first)
        assert await sealed.sealed_executable(str(binary), links) == first
        shutil.copy("/bin/true", binary)  # an upgrade on disk: a new copy
        upgraded = await sealed.sealed_executable(str(binary), links)
        await asyncio.sleep(0.01)  # the old copy retires
        return first, copy, os.readlink(upgraded), await sealed.sealed_executable(
            str(script), links)

    first, copy, upgraded, wrapped = asyncio.run(run())
    # Named like the binary (the process's name comes from it), pointing at the memfd.
    assert os.path.basename(first) == "runc"
    assert copy.startswith(f"/proc/{os.getpid()}/fd/") and upgraded != copy
    assert not os.path.exists(copy)  # the old copy is closed
    fd = int(upgraded.rsplit("/", 1)[1])
    seals = fcntl.fcntl(fd, fcntl.F_GET_SEALS)
    assert seals == (fcntl.F_SEAL_SEAL | fcntl.F_SEAL_SHRINK | fcntl.F_SEAL_GROW
                     | fcntl.F_SEAL_WRITE)
    assert subprocess.run(["runc"], executable=first).returncode == 0  # now /bin/true
    assert wrapped == str(script)  # not ELF: run from its path


def test_a_replaced_copy_stays_executable_for_a_conmon_that_has_not_run_it_yet(
        tmp_path: Path) -> None:
    binary = tmp_path / "runc"
    shutil.copy("/bin/true", binary)

    async def run() -> tuple[str, str]:
        old = await sealed.sealed_executable(str(binary))
        shutil.copy("/bin/echo", binary)
        new = await sealed.sealed_executable(str(binary))
        return old, new

    old, new = asyncio.run(run())
    assert old != new
    assert subprocess.run([old]).returncode == 0


def test_concurrent_first_calls_share_one_copy(tmp_path: Path) -> None:
    binary = tmp_path / "runc"
    shutil.copy("/bin/true", binary)

    async def run() -> set[str]:
        return set(await asyncio.gather(
            *(sealed.sealed_executable(str(binary)) for _ in range(8))))

    paths = asyncio.run(run())
    assert len(paths) == 1
    assert subprocess.run([paths.pop()]).returncode == 0


def run_fake(runtime: OCIRuntime) -> tuple[str, str]:
    """The file the stand-in runtime ran from, and its name, executed as crisp executes
    ``runc create`` (conmon's --runtime) and ``runc exec``."""
    executable = asyncio.run(runtime.executable())
    out = subprocess.run([runtime.path], executable=executable, check=True,
                         capture_output=True).stdout
    answer = json.loads(out)
    return answer["id"], answer["bundle"]


def test_the_runtime_runs_from_the_sealed_copy(tmp_path: Path, fake_runtime: Path) -> None:
    runtime = OCIRuntime(str(fake_runtime), tmp_path / "root", tmp_path / "links")
    exe, name = run_fake(runtime)
    assert exe.startswith("/memfd:sealed:runc")  # /proc/self/exe of the runtime
    assert name == str(fake_runtime)
    # Its other commands run from the binary itself (runc copies itself only for init).
    state = asyncio.run(runtime.state("c1"))
    assert state is not None and state.id == str(fake_runtime)


def test_without_memfds_the_runtime_runs_from_its_path(
        tmp_path: Path, fake_runtime: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def no_memfd(*args: object) -> int:
        raise OSError(38, "Function not implemented")

    monkeypatch.setattr(os, "memfd_create", no_memfd)
    runtime = OCIRuntime(str(fake_runtime), tmp_path / "root", tmp_path / "links")
    assert asyncio.run(runtime.executable()) == str(fake_runtime)
    assert run_fake(runtime)[0] == str(fake_runtime)


def test_a_removed_name_link_falls_back_to_the_copys_fd(tmp_path: Path,
                                                         fake_runtime: Path) -> None:
    runtime = OCIRuntime(str(fake_runtime), tmp_path / "root", tmp_path / "links")
    link = asyncio.run(runtime.executable())
    os.unlink(link)
    fallback = asyncio.run(runtime.executable())
    assert fallback.startswith(f"/proc/{os.getpid()}/fd/")
    assert run_fake(runtime)[0].startswith("/memfd:sealed:runc")
