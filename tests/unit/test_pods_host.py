"""pods/host.py's unmount: every stacked mount goes, and nothing mounted is no error."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from crisp.pods.host import mount_points, mount_tmpfs, unmount

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="mounts need root")


def test_unmount_detaches_every_stacked_mount(tmp_path: Path) -> None:
    target = tmp_path / "shm"
    target.mkdir()
    mount_tmpfs(target, "size=1m")
    mount_tmpfs(target, "size=1m")
    assert str(target) in mount_points()
    unmount(target)
    assert str(target) not in mount_points()


def test_unmount_of_nothing_mounted_or_nothing_there_is_fine(tmp_path: Path) -> None:
    unmount(tmp_path)  # a directory, not a mount point
    unmount(tmp_path / "missing")


def test_unmount_does_not_follow_a_symlink(tmp_path: Path) -> None:
    target = tmp_path / "shm"
    target.mkdir()
    mount_tmpfs(target, "size=1m")
    try:
        (tmp_path / "link").symlink_to(target)
        unmount(tmp_path / "link")
        assert str(target) in mount_points()
    finally:
        unmount(target)
