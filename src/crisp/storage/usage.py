"""Disk usage of a directory tree, counting hard-linked files once (blocking)."""

from __future__ import annotations

import os
from pathlib import Path


def disk_usage(root: Path) -> tuple[int, int]:
    """Bytes allocated and inodes used under ``root`` (including ``root``)."""
    seen: set[tuple[int, int]] = set()
    total = 0
    try:
        first = os.lstat(root)
    except FileNotFoundError:
        return 0, 0
    total += first.st_blocks * 512
    seen.add((first.st_dev, first.st_ino))
    stack = [str(root)]
    while stack:
        current = stack.pop()
        try:
            entries = os.scandir(current)
        except (FileNotFoundError, NotADirectoryError, PermissionError):
            continue
        with entries:
            for entry in entries:
                try:
                    st = entry.stat(follow_symlinks=False)
                except FileNotFoundError:
                    continue
                key = (st.st_dev, st.st_ino)
                if key in seen:
                    continue
                seen.add(key)
                total += st.st_blocks * 512
                if entry.is_dir(follow_symlinks=False):
                    stack.append(entry.path)
    return total, len(seen)
