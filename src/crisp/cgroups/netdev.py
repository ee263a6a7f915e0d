"""Network interface counters of a pod's network namespace, read without entering it.

The daemon never calls setns itself (its threads serve grpc). /proc/<pid>/net/dev shows the
namespace of that process, which is one small read when the pod has a process; a pinned
namespace with no process in it is read by a short-lived ``nsenter --net=PATH cat`` instead.
"""

from __future__ import annotations

import asyncio
import logging
import os
from dataclasses import dataclass
from pathlib import Path

from crisp.cgroups.files import read_text
from crisp.errors import CrispError, DeadlineExceeded, NotFound, RuntimeFailure
from crisp.process import run_program

log = logging.getLogger(__name__)

NSENTER = "nsenter"
READ_TIMEOUT_S = 10.0


@dataclass(frozen=True)
class InterfaceStats:
    """Cumulative counters of one interface since it was created."""

    name: str
    rx_bytes: int
    rx_packets: int
    rx_errors: int
    rx_dropped: int
    tx_bytes: int
    tx_packets: int
    tx_errors: int
    tx_dropped: int


def parse_net_dev(text: str) -> list[InterfaceStats]:
    """Parse /proc/net/dev: two header lines, then "name: 8 receive and 8 transmit fields"."""
    interfaces: list[InterfaceStats] = []
    for line in text.splitlines():
        name, colon, counters = line.partition(":")
        if not colon or "|" in line:
            continue
        fields = counters.split()
        if len(fields) < 16:
            continue
        values = [int(value) for value in fields[:16]]
        interfaces.append(
            InterfaceStats(
                name=name.strip(),
                rx_bytes=values[0],
                rx_packets=values[1],
                rx_errors=values[2],
                rx_dropped=values[3],
                tx_bytes=values[8],
                tx_packets=values[9],
                tx_errors=values[10],
                tx_dropped=values[11],
            )
        )
    return interfaces


def _read_pid_net_dev(pid: int) -> str:
    text = read_text(f"/proc/{pid}/net/dev")
    if text is None:
        raise NotFound(f"process {pid} is gone, so its network namespace cannot be read")
    return text


async def interfaces_of_pid(pid: int) -> list[InterfaceStats]:
    """The interfaces in the network namespace of process ``pid``."""
    return parse_net_dev(await asyncio.to_thread(_read_pid_net_dev, pid))


def _same_netns(netns_path: str, pid: int) -> bool:
    """Whether process ``pid`` lives in the network namespace pinned at ``netns_path``."""
    try:
        pinned = os.stat(netns_path)
        joined = os.stat(f"/proc/{pid}/ns/net")
    except OSError:
        return False
    return (pinned.st_dev, pinned.st_ino) == (joined.st_dev, joined.st_ino)


def _read_through_pids(
    members: dict[str, tuple[str, list[int]]]
) -> dict[str, list[InterfaceStats]]:
    """Read and parse (both in the worker thread) the namespaces a pid shows."""
    found: dict[str, list[InterfaceStats]] = {}
    for key, (netns_path, pids) in members.items():
        for pid in pids:
            if _same_netns(netns_path, pid) and (text := read_text(f"/proc/{pid}/net/dev")):
                found[key] = parse_net_dev(text)
                break
    return found


async def interfaces_of_netns_many(
    namespaces: dict[str, tuple[str, list[int]]]
) -> dict[str, list[InterfaceStats]]:
    """Interfaces of many pinned namespaces: key -> (netns path, pids that may be in it).

    A namespace with one of its pids still in it is read through /proc/<pid>/net/dev, all of
    them in one worker thread: on a node with a hundred pods, one ``nsenter`` per pod and
    call cost more than the rest of ListPodSandboxStats. The others take the ``nsenter``
    path; keys whose namespace is gone are left out.
    """
    result = await asyncio.to_thread(_read_through_pids, namespaces)
    rest = [key for key in namespaces if key not in result]

    async def pinned(key: str) -> None:
        try:
            result[key] = await interfaces_of_netns(namespaces[key][0])
        except NotFound:
            pass
        except CrispError as error:  # one pod's failure leaves the others' counters
            log.warning("cannot read the network counters of %s: %s", key, error)

    await asyncio.gather(*(pinned(key) for key in rest))
    return result


async def interfaces_of_netns(netns_path: str) -> list[InterfaceStats]:
    """The interfaces in the network namespace pinned at ``netns_path`` (a bind mount)."""
    if not await asyncio.to_thread(Path(netns_path).exists):
        raise NotFound(f"network namespace {netns_path} does not exist")
    try:
        result = await run_program(
            [NSENTER, f"--net={netns_path}", "--", "cat", "/proc/net/dev"],
            time_limit=READ_TIMEOUT_S,
        )
    except TimeoutError as error:
        raise DeadlineExceeded(
            f"reading interfaces of {netns_path} took more than {READ_TIMEOUT_S}s"
        ) from error
    if result.returncode != 0:
        raise RuntimeFailure(
            f"nsenter --net={netns_path} cat /proc/net/dev failed "
            f"(exit {result.returncode}): {result.stderr.decode(errors='replace').strip()}"
        )
    return parse_net_dev(result.stdout.decode())
