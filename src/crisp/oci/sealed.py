"""The OCI runtime run from a sealed memfd copy of its binary, made once per binary.

runc protects itself from a container overwriting its binary (CVE-2019-5736) by making
``runc init`` a safe copy of ``/proc/self/exe`` on every invocation: a bind mount, a remount
read-only, an unmount and a re-exec, about 14 ms of each ``runc create`` and ``runc exec``
measured here. A binary that already is a fully sealed memfd is one runc (1.1) trusts as it
is, so the daemon makes that copy once and the calls that start ``runc init`` run from it:
conmon's ``runc create`` and crisp's ``runc exec`` (runc's other commands never copy
themselves, and run from the binary's path). The container can no more write to it than to
runc's own copy.

The copy lives as a file descriptor of the daemon, so its path (``/proc/<daemon>/fd/N``, or
the named link to it) is valid while the daemon lives: conmon runs the runtime only while
the daemon waits for ``create`` (conmon 2.1 runs it again only for ``--exec`` and
``--restore``, which crisp does not use, and its ``--exit-command`` is another program), and
a restarted daemon makes a new copy before its first call.
"""

from __future__ import annotations

import asyncio
import fcntl
import os
from pathlib import Path

from crisp.digest import sha256


class _SealedCopy:
    """A runtime binary copied into a sealed memfd, and what the file looked like then."""

    def __init__(self, signature: tuple[int, ...], fd: int | None, link: str | None = None):
        self.signature = signature
        self.fd = fd  # None: not an ELF binary (a wrapper script), run from its path
        self.link = link

    def executable(self, path: str) -> str:
        if self.fd is None:
            return path
        fd_path = f"/proc/{os.getpid()}/fd/{self.fd}"
        if self.link is not None and os.path.exists(self.link):
            return self.link
        return fd_path  # the named link was removed under us: still the sealed copy


def _name_link(fd: int, path: str, links: Path | None) -> str | None:
    """A symlink named like the binary to the copy: the process's name (comm) comes from
    the path executed, so ``ps`` and ``pgrep`` show ``runc`` rather than a fd number."""
    if links is None:
        return None
    folder = links / sha256(path.encode()).hexdigest()[:16]
    link = folder / os.path.basename(path)
    try:
        folder.mkdir(parents=True, exist_ok=True, mode=0o700)
        staged = folder / f".{link.name}.{os.getpid()}"
        staged.unlink(missing_ok=True)
        staged.symlink_to(f"/proc/{os.getpid()}/fd/{fd}")
        staged.replace(link)
    except OSError:
        return None
    return str(link)


_sealed: dict[str, _SealedCopy] = {}
_making: dict[str, asyncio.Lock] = {}
# How long a replaced copy stays open: longer than conmon takes to run ``runtime create``.
RETIRE_AFTER = 150.0
# runc's own test for "this binary is already a safe copy" (libcontainer/nsenter/cloned_binary.c)
_RUNC_SEALS = (fcntl.F_SEAL_SEAL | fcntl.F_SEAL_SHRINK | fcntl.F_SEAL_GROW
               | fcntl.F_SEAL_WRITE)


def _signature(path: str) -> tuple[int, ...]:
    info = os.stat(path)
    return (info.st_dev, info.st_ino, info.st_size, info.st_mtime_ns)


def _seal_copy(path: str, links: Path | None) -> _SealedCopy:
    signature = _signature(path)
    with open(path, "rb") as binary:
        content = binary.read()
    if not content.startswith(b"\x7fELF"):
        return _SealedCopy(signature, None)
    fd = os.memfd_create(f"sealed:{os.path.basename(path)}",
                         os.MFD_CLOEXEC | os.MFD_ALLOW_SEALING)
    try:
        view = memoryview(content)
        while view:
            view = view[os.write(fd, view):]
        os.fchmod(fd, 0o555)
        fcntl.fcntl(fd, fcntl.F_ADD_SEALS, _RUNC_SEALS)
    except BaseException:
        os.close(fd)
        raise
    return _SealedCopy(signature, fd, _name_link(fd, path, links))


async def sealed_executable(path: str, links: Path | None = None) -> str:
    """What to execute for the runtime at ``path``: a sealed memfd copy of it, made once per
    binary (and again when the file changes on disk, an upgrade); ``path`` itself when no
    copy can be made (not an ELF binary, no memfd). ``links`` is a private directory for the
    symlinks that give the processes their name.
    """
    cached = _sealed.get(path)
    try:
        signature = _signature(path)
    except OSError:
        return path  # let the exec itself report the missing binary
    if cached is not None and cached.signature == signature:
        return cached.executable(path)
    lock = _making.setdefault(path, asyncio.Lock())
    async with lock:  # concurrent first calls share one copy
        cached = _sealed.get(path)
        if cached is not None and cached.signature == signature:
            return cached.executable(path)
        try:
            fresh = await asyncio.to_thread(_seal_copy, path, links)
        except OSError:
            return path
        previous = _sealed.pop(path, None)
        _sealed[path] = fresh
    if previous is not None and previous.fd is not None:
        # A conmon started a moment ago may not have executed the old copy yet: it goes
        # once conmon's create would have given up anyway.
        asyncio.get_running_loop().call_later(RETIRE_AFTER, os.close, previous.fd)
    return fresh.executable(path)
