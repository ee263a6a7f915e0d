"""The filesystem that holds a container's writable layer: its device, size and inodes.

cAdvisor's container_fs_limit_bytes and container_fs_inodes_{total,free} describe the
filesystem the container writes to, labelled with its device. A running container's rootfs is
an overlay mount whose statfs is the upper directory's filesystem, but whose device number is
an anonymous one; so the upper directory is found from the overlay's mount options and the
device named from the mount table. One read of mountinfo serves every container of a call.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass

MOUNTINFO = "/proc/self/mountinfo"
_ESCAPE = re.compile(r"\\([0-7]{3})")


@dataclass(frozen=True)
class FilesystemInfo:
    """Device name, capacity and inodes of one filesystem (statvfs, as root sees it)."""

    device: str
    capacity_bytes: int
    inodes_total: int
    inodes_free: int


@dataclass(frozen=True)
class _Mount:
    device_number: str
    mount_point: str
    fs_type: str
    source: str
    super_options: tuple[str, ...]


def _unescape(text: str) -> str:
    return _ESCAPE.sub(lambda match: chr(int(match.group(1), 8)), text)


def parse_mountinfo(text: str) -> list[_Mount]:
    """The lines of a mountinfo text (proc(5)) as mounts."""
    mounts: list[_Mount] = []
    for line in text.splitlines():
        fields = line.split()
        try:
            separator = fields.index("-")
        except ValueError:
            continue
        if separator < 5 or len(fields) < separator + 4:
            continue
        mounts.append(_Mount(device_number=fields[2], mount_point=_unescape(fields[4]),
                             fs_type=fields[separator + 1],
                             source=_unescape(fields[separator + 2]),
                             super_options=tuple(fields[separator + 3].split(","))))
    return mounts


def writable_directory(rootfs: str, mounts: list[_Mount]) -> str:
    """Where writes to ``rootfs`` land: an overlay's upperdir, else the path itself."""
    for mount in reversed(mounts):  # the last mount on a point is the visible one
        if mount.mount_point == rootfs:
            if mount.fs_type == "overlay":
                for option in mount.super_options:
                    if option.startswith("upperdir="):
                        return option.removeprefix("upperdir=")
            break
    return rootfs


def device_name(major: int, minor: int, mounts: list[_Mount]) -> str:
    """The mount source of device MAJOR:MINOR ("/dev/vda1", "tmpfs"), or the number."""
    number = f"{major}:{minor}"
    return next((m.source for m in mounts if m.device_number == number), number)


def filesystem_of(rootfs: str, mounts: list[_Mount]) -> FilesystemInfo | None:
    """The filesystem holding the writable layer of ``rootfs`` (blocking); None if gone."""
    directory = writable_directory(rootfs, mounts)
    try:
        device = os.stat(directory).st_dev
        vfs = os.statvfs(directory)
    except (FileNotFoundError, NotADirectoryError):
        return None
    return FilesystemInfo(
        device=device_name(os.major(device), os.minor(device), mounts),
        capacity_bytes=vfs.f_blocks * vfs.f_frsize,
        inodes_total=vfs.f_files,
        inodes_free=vfs.f_ffree,
    )


def filesystems_of(
    rootfs_paths: list[str], mountinfo: str = MOUNTINFO
) -> dict[str, FilesystemInfo]:
    """`filesystem_of` for many rootfs paths with one read of the mount table (blocking)."""
    with open(mountinfo) as file:
        mounts = parse_mountinfo(file.read())
    result: dict[str, FilesystemInfo] = {}
    for rootfs in rootfs_paths:
        if rootfs and (info := filesystem_of(rootfs, mounts)) is not None:
            result[rootfs] = info
    return result
