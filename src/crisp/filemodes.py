"""File modes: crisp's state is root's alone; only what a container must see is public.

The daemon runs under ``DAEMON_UMASK``, so every file and directory it makes is private
unless made public on purpose: the database, bundles and the image store hold container
configs with their environment (where Kubernetes puts secrets) and private images. Helper
programs (runc, conmon, CNI plugins, mount) run under ``CHILD_UMASK``, the usual one, because
what they create is what a container sees (its /dev, mount points, the files it writes).
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterable
from pathlib import Path

DAEMON_UMASK = 0o077
CHILD_UMASK = 0o022
PRIVATE_DIR = 0o700
PRIVATE_FILE = 0o600
PUBLIC_DIR = 0o755
PUBLIC_FILE = 0o644


def private_dir(path: Path) -> None:
    """Create ``path`` (and missing parents) and make it root's alone, whatever it was."""
    path.mkdir(parents=True, exist_ok=True, mode=PRIVATE_DIR)
    os.chmod(path, PRIVATE_DIR)


def public_dir(path: Path) -> None:
    """Create ``path`` as 0755, with each parent it creates 0755 too, and make it 0755.

    For directories a container's processes must traverse whatever their user: overlay
    upper, work and lower directories, the rootfs mount point, a bind mount's host directory
    created for it. A plain ``mkdir`` under the daemon's umask would make them 0700.
    """
    missing: list[Path] = []
    current = path
    while not current.exists():
        missing.append(current)
        if current.parent == current:
            break
        current = current.parent
    for directory in reversed(missing):
        with contextlib.suppress(FileExistsError):
            directory.mkdir(mode=PUBLIC_DIR)
        os.chmod(directory, PUBLIC_DIR)
    if not missing:
        os.chmod(path, PUBLIC_DIR)


def make_private(directory: Path, files: Iterable[str]) -> None:
    """Make ``directory`` 0700 and those of ``files`` in it that exist 0600.

    Start-up calls this to fix installs from before crisp kept its state private.
    """
    private_dir(directory)
    for name in files:
        with contextlib.suppress(FileNotFoundError):
            os.chmod(directory / name, PRIVATE_FILE)
