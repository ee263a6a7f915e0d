"""Threads, file descriptors and sockets of the processes in a cgroup, from /proc.

cgroup files count pages and CPU time, not what processes hold open; cAdvisor's
container_threads, container_file_descriptors and container_sockets come from each
process's /proc entry. One listing per process (two for threads and fds, plus a readlink per
fd to spot sockets): cheap for containers, and read in the caller's worker thread.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from crisp.cgroups.files import list_entries, procs_files, read_text

PROC = "/proc"


@dataclass(frozen=True)
class ProcessTotals:
    """Totals over a set of processes; a process that exits mid-reading counts as gone."""

    threads: int
    file_descriptors: int
    sockets: int


def cgroup_pids(directory: Path) -> list[int]:
    """Pids in ``directory`` (a cgroup directory) and every cgroup below it."""
    pids: list[int] = []
    for procs in procs_files(directory):
        pids.extend(int(pid) for pid in (read_text(procs) or "").split())
    return pids


def process_totals(pids: list[int], proc: str = PROC) -> ProcessTotals:
    """Threads (/proc/PID/task), fds (/proc/PID/fd) and sockets among those fds."""
    threads = fds = sockets = 0
    for pid in pids:
        threads += len(list_entries(f"{proc}/{pid}/task"))
        fd_dir = f"{proc}/{pid}/fd"
        for fd in list_entries(fd_dir):
            fds += 1
            try:
                target = os.readlink(f"{fd_dir}/{fd}")
            except OSError:
                continue  # closed since the listing
            if target.startswith("socket:"):
                sockets += 1
    return ProcessTotals(threads=threads, file_descriptors=fds, sockets=sockets)


def open_files_soft_limit(pid: int, proc: str = PROC) -> int | None:
    """The soft RLIMIT_NOFILE of ``pid`` (from /proc/PID/limits); 0 means unlimited."""
    text = read_text(Path(proc, str(pid), "limits"))
    return None if text is None else parse_open_files_soft_limit(text)


def parse_open_files_soft_limit(text: str) -> int | None:
    """The soft "Max open files" value of a /proc/PID/limits text."""
    for line in text.splitlines():
        if line.startswith("Max open files"):
            soft = line[len("Max open files"):].split()[0]
            return 0 if soft == "unlimited" else int(soft)
    return None
