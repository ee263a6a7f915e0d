"""A pod's network, IPC and UTS namespaces, created by a helper process and pinned as files.

crisp never calls unshare or setns itself (its threads must stay in the host's namespaces):
util-linux ``unshare`` creates the namespaces, bind-mounts each onto a file under the pod's
run directory so it outlives the helper, and runs ``hostname`` inside the new UTS namespace.
Containers then join the namespaces by path.
"""

from __future__ import annotations

import asyncio
import shutil
from dataclasses import dataclass
from pathlib import Path

from crisp.errors import RuntimeFailure
from crisp.pods.host import unmount
from crisp.process import run_program

NAMESPACE_KINDS = ("net", "ipc", "uts")
_UNSHARE_FLAG = {"net": "--net", "ipc": "--ipc", "uts": "--uts"}


@dataclass(frozen=True)
class PinnedNamespaces:
    """Paths of the namespace files of one pod; a kind the pod shares with the host is absent."""

    paths: dict[str, str]


async def create_namespaces(directory: Path, kinds: list[str], hostname: str) -> PinnedNamespaces:
    """Create and pin the namespaces ``kinds`` under ``directory``; set the UTS hostname."""
    if not kinds:
        return PinnedNamespaces({})
    paths = {kind: directory / kind for kind in kinds}
    await asyncio.to_thread(_make_pin_files, directory, list(paths.values()))
    unshare = shutil.which("unshare") or "unshare"
    args = [unshare, *(f"{_UNSHARE_FLAG[kind]}={paths[kind]}" for kind in kinds), "--"]
    if "uts" in kinds and hostname:
        # "--": the name can never be read as an option, whatever validation let through.
        args += [shutil.which("hostname") or "hostname", "--", hostname]
    else:
        args += [shutil.which("true") or "true"]
    result = await run_program(args, time_limit=None)
    if result.returncode != 0:
        await release_namespaces(directory)
        raise RuntimeFailure(
            f"creating the pod's namespaces ({', '.join(kinds)}) failed: "
            f"{result.stderr.decode(errors='replace').strip()}"
        )
    return PinnedNamespaces({kind: str(path) for kind, path in paths.items()})


def _make_pin_files(directory: Path, paths: list[Path]) -> None:
    directory.mkdir(parents=True, exist_ok=True, mode=0o700)
    for path in paths:
        path.touch(exist_ok=True)


async def release_namespaces(directory: Path) -> None:
    """Unpin and delete every namespace file under ``directory``; idempotent."""
    await asyncio.to_thread(_release, directory)


def _release(directory: Path) -> None:
    if not directory.exists():
        return
    for kind in NAMESPACE_KINDS:
        path = directory / kind
        unmount(path)
        path.unlink(missing_ok=True)
    shutil.rmtree(directory, ignore_errors=True)
