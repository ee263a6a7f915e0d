"""Finding and removing a cgroup in every hierarchy it exists in.

runc removes a container's cgroup on delete; this is for what runc no longer can: a pod's
default parent cgroup, or a container cgroup left behind by a crash.
"""

from __future__ import annotations

import errno
import os
from pathlib import Path

from crisp.cgroups.host import CgroupHost
from crisp.errors import FailedPrecondition


def cgroup_dirs(host: CgroupHost, cgroup: str) -> list[Path]:
    """The directories of ``cgroup`` in each mounted hierarchy, whether or not they exist."""
    mounts = sorted(set(host.v1_mounts.values()))
    if host.unified_mount is not None:
        mounts.append(host.unified_mount)
    relative = cgroup.lstrip("/")
    if not cgroup.startswith("/") or not relative:
        raise ValueError(f"cgroup {cgroup!r} must be an absolute path below the root")
    return [Path(mount, relative) for mount in mounts]


def _remove_tree(directory: Path) -> None:
    """rmdir children first: cgroupfs directories can only be removed when empty."""
    try:
        children = [entry for entry in os.scandir(directory) if entry.is_dir(follow_symlinks=False)]
    except FileNotFoundError:
        return
    for child in children:
        _remove_tree(Path(child.path))
    try:
        os.rmdir(directory)
    except FileNotFoundError:
        return
    except OSError as error:
        if error.errno == errno.EBUSY:
            raise FailedPrecondition(
                f"cgroup {directory} still has processes in it; stop them before removing it"
            ) from error
        raise


def remove_cgroup(host: CgroupHost, cgroup: str) -> None:
    """Remove ``cgroup`` and its children from every hierarchy (blocking; a few rmdirs).

    Missing directories are fine; one that still holds processes raises FailedPrecondition.
    """
    for directory in cgroup_dirs(host, cgroup):
        _remove_tree(directory)
