"""Reading cgroup and /proc files that may vanish at any moment (a container just exited)."""

from __future__ import annotations

from pathlib import Path

_GONE = (FileNotFoundError, NotADirectoryError, ProcessLookupError, PermissionError)


def read_text(path: Path | None) -> str | None:
    """The file's text without surrounding white space, or None if it is not there (any more)."""
    if path is None:
        return None
    try:
        return path.read_text().strip()
    except _GONE:
        return None


def read_int(path: Path | None, *, max_as: int | None = None) -> int | None:
    """The number in a one-value file; the kernel's "max" (no limit) reads as ``max_as``."""
    text = read_text(path)
    if text is None:
        return None
    return max_as if text == "max" else int(text)
