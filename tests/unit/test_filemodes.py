"""public_dir and make_private give the modes they promise under the daemon's umask."""

from __future__ import annotations

import os
import stat
from collections.abc import Iterator
from pathlib import Path

import pytest

from crisp.filemodes import DAEMON_UMASK, make_private, public_dir
from crisp.state import DATABASE_FILES


@pytest.fixture(autouse=True)
def daemon_umask() -> Iterator[None]:
    previous = os.umask(DAEMON_UMASK)
    yield
    os.umask(previous)


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_public_dir_makes_every_missing_parent_public(tmp_path: Path) -> None:
    existing = tmp_path / "existing"
    existing.mkdir(mode=0o700)
    public_dir(existing / "a" / "b" / "c")
    assert [mode(existing / p) for p in ("a", "a/b", "a/b/c")] == [0o755] * 3
    assert mode(existing) == 0o700  # a parent it did not create is left alone


def test_public_dir_on_an_existing_directory_opens_it(tmp_path: Path) -> None:
    target = tmp_path / "target"
    target.mkdir(mode=0o700)
    public_dir(target)
    assert mode(target) == 0o755


def test_a_new_file_is_private_under_the_daemon_umask(tmp_path: Path) -> None:
    (tmp_path / "new").write_text("x")
    (tmp_path / "dir").mkdir()
    assert (mode(tmp_path / "new"), mode(tmp_path / "dir")) == (0o600, 0o700)


def test_make_private_fixes_an_older_install(tmp_path: Path) -> None:
    root = tmp_path / "root"
    root.mkdir()
    os.chmod(root, 0o711)
    for name in DATABASE_FILES[:2]:  # no -shm: absent files are fine
        (root / name).write_text("")
        os.chmod(root / name, 0o644)
    (root / "other").write_text("")
    os.chmod(root / "other", 0o644)
    make_private(root, DATABASE_FILES)
    assert mode(root) == 0o700
    assert [mode(root / name) for name in DATABASE_FILES[:2]] == [0o600, 0o600]
    assert not (root / DATABASE_FILES[2]).exists()
    assert mode(root / "other") == 0o644  # only the files named
