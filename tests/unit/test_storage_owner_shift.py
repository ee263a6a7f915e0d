"""Shifting a snapshot's owners into a pod's user namespace mapping (the pure parts on a
plain directory; the overlay with metacopy is test_user_namespaces.py's)."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

from crisp.storage.snapshots import OwnerShift, shift_owners, shifted

SHIFT = OwnerShift(uids=((0, 200000, 65536),), gids=((0, 300000, 65536),))


def test_ids_in_the_mapping_move_and_others_stay() -> None:
    assert shifted(0, SHIFT.uids) == 200000
    assert shifted(65535, SHIFT.uids) == 265535
    assert shifted(65536, SHIFT.uids) == 65536  # unmapped: shows as the overflow id inside
    assert OwnerShift.from_document(SHIFT.as_document()) == SHIFT


@pytest.mark.skipif(os.geteuid() != 0, reason="chown needs root")
def test_every_entry_is_shifted_once_and_setuid_bits_survive(tmp_path: Path) -> None:
    root = tmp_path / "rootfs"
    (root / "bin").mkdir(parents=True)
    tool = root / "bin" / "tool"
    tool.write_text("#!/bin/sh\n")
    os.chown(tool, 0, 0)
    os.chmod(tool, 0o4755)  # (after the chown, which would clear it)
    (root / "bin" / "link").symlink_to("tool")
    os.lchown(root / "bin" / "link", 1000, 1000)
    (root / "home").mkdir()
    os.chown(root / "home", 70000, 0)
    shift_owners(root, SHIFT)
    assert (root.stat().st_uid, root.stat().st_gid) == (200000, 300000)
    info = tool.stat()
    assert (info.st_uid, info.st_gid) == (200000, 300000)
    assert stat.S_IMODE(info.st_mode) == 0o4755
    link = (root / "bin" / "link").lstat()
    assert (link.st_uid, link.st_gid) == (201000, 301000)
    assert (root / "home").stat().st_uid == 70000  # outside the mapping: left alone
