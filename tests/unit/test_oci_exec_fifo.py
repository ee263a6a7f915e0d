"""crisp's own ``runc start``: reading runc init's byte from exec.fifo, or leaving it to runc."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from crisp.oci.runtime import _release_exec_fifo

NAMED_SLEEPER = ("import ctypes, time; ctypes.CDLL(None).prctl(15, b'runc:[2:INIT]', 0, 0, 0); "
                 "time.sleep(60)")


@pytest.fixture
def init() -> Iterator[int]:
    """A process named as runc init is while it waits to be started."""
    waiting = subprocess.Popen([sys.executable, "-c", NAMED_SLEEPER])
    comm = Path(f"/proc/{waiting.pid}/comm")
    deadline = time.monotonic() + 10
    while comm.read_text().strip() != "runc:[2:INIT]" and time.monotonic() < deadline:
        time.sleep(0.01)
    yield waiting.pid
    waiting.kill()
    waiting.wait()


def _writer(fifo: Path, data: bytes) -> threading.Thread:
    def write() -> None:
        with open(fifo, "wb") as end:  # blocks until a reader opens, as runc init does
            end.write(data)

    thread = threading.Thread(target=write)
    thread.start()
    return thread


def test_the_start_byte_is_read_and_the_fifo_removed(tmp_path: Path, init: int) -> None:
    fifo = tmp_path / "exec.fifo"
    os.mkfifo(fifo)
    writer = _writer(fifo, b"0")
    assert _release_exec_fifo(fifo, init) is True
    writer.join(5)
    assert not fifo.exists()  # runc now calls the container running


def test_a_dead_init_or_no_fifo_leaves_the_start_to_runc(tmp_path: Path, init: int) -> None:
    fifo = tmp_path / "exec.fifo"
    assert _release_exec_fifo(fifo, init) is False
    os.mkfifo(fifo)
    gone = subprocess.Popen(["true"])
    gone.wait()
    assert _release_exec_fifo(fifo, gone.pid) is False
    assert fifo.exists()


def test_a_writer_that_leaves_without_its_byte_leaves_it_to_runc(tmp_path: Path,
                                                                  init: int) -> None:
    fifo = tmp_path / "exec.fifo"
    os.mkfifo(fifo)
    writer = _writer(fifo, b"")
    assert _release_exec_fifo(fifo, init) is False
    writer.join(5)
    assert fifo.exists()


def test_a_plain_file_is_not_a_fifo(tmp_path: Path, init: int) -> None:
    path = tmp_path / "exec.fifo"
    path.write_text("0")
    assert _release_exec_fifo(path, init) is False


def test_an_init_that_already_runs_its_program_only_needs_the_fifo_removed(
        tmp_path: Path) -> None:
    """The daemon died between reading the byte and removing the FIFO: no byte comes."""
    fifo = tmp_path / "exec.fifo"
    os.mkfifo(fifo)
    assert _release_exec_fifo(fifo, os.getpid()) is True
    assert not fifo.exists()
