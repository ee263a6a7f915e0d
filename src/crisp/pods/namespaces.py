"""A pod's network, IPC and UTS namespaces, created by a helper process and pinned as files.

crisp never calls unshare or setns itself (its threads must stay in the host's namespaces):
util-linux ``unshare`` creates the namespaces, bind-mounts each onto a file under the pod's
run directory so it outlives the helper, and runs ``hostname`` inside the new UTS namespace.
Containers then join the namespaces by path.

A pod in its own user namespace (CRI's POD mode) gets that namespace first, with the network,
IPC and UTS namespaces created together with it, so the pod's root owns them (sysfs,
mqueue and the hostname work inside). ``unshare`` cannot write a mapping without
newuidmap(1), so crisp writes /proc/<pid>/uid_map and gid_map of the waiting helper itself,
as host root, and pins the four namespaces from the host's mount namespace.
"""

from __future__ import annotations

import asyncio
import shutil
from dataclasses import dataclass
from pathlib import Path

from crisp.errors import RuntimeFailure
from crisp.filemodes import CHILD_UMASK
from crisp.pods.host import bind_mount, unmount
from crisp.pods.model import IDMapping
from crisp.process import run_program

NAMESPACE_KINDS = ("user", "net", "ipc", "uts")
_UNSHARE_FLAG = {"net": "--net", "ipc": "--ipc", "uts": "--uts"}
HELPER_TIMEOUT_S = 30.0


@dataclass(frozen=True)
class PinnedNamespaces:
    """Paths of the namespace files of one pod; a kind the pod shares with the host is absent."""

    paths: dict[str, str]


async def create_namespaces(directory: Path, kinds: list[str], hostname: str,
                            uids: list[IDMapping] | None = None,
                            gids: list[IDMapping] | None = None) -> PinnedNamespaces:
    """Create and pin the namespaces ``kinds`` under ``directory``; set the UTS hostname.

    With ``uids`` and ``gids`` a user namespace with those mappings comes first and owns the
    others (``kinds`` must then hold "user").
    """
    if "user" in kinds:
        return await _create_with_userns(directory, kinds, hostname, uids or [], gids or [])
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


def id_map_text(mappings: list[IDMapping]) -> str:
    """uid_map(5)/gid_map text: "inside outside length" per line."""
    return "".join(f"{m.container_id} {m.host_id} {m.length}\n" for m in mappings)


async def _create_with_userns(directory: Path, kinds: list[str], hostname: str,
                              uids: list[IDMapping], gids: list[IDMapping]) -> PinnedNamespaces:
    paths = {kind: directory / kind for kind in kinds}
    await asyncio.to_thread(_make_pin_files, directory, list(paths.values()))
    unshare = shutil.which("unshare") or "unshare"
    flags = ["--user", *(_UNSHARE_FLAG[kind] for kind in kinds if kind != "user")]
    # The helper is cat: what it echoes back shows it runs in its namespaces; it ends when
    # its stdin closes.
    helper = await asyncio.create_subprocess_exec(
        unshare, *flags, "--", shutil.which("cat") or "cat",
        stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE, umask=CHILD_UMASK)
    assert helper.stdin is not None and helper.stdout is not None
    helper.stdin.write(b"ready\n")
    try:
        line = await asyncio.wait_for(helper.stdout.readline(), HELPER_TIMEOUT_S)
        if line != b"ready\n":
            await helper.wait()
            assert helper.stderr is not None
            stderr = (await helper.stderr.read()).decode(errors="replace").strip()
            raise RuntimeFailure(f"creating the pod's user namespace failed: {stderr}")
        await asyncio.to_thread(_map_and_pin, helper.pid, paths, id_map_text(uids),
                                id_map_text(gids))
    except BaseException:
        if helper.returncode is None:
            helper.kill()
        await helper.wait()
        await release_namespaces(directory)
        raise
    helper.stdin.close()
    await helper.wait()
    if "uts" in kinds and hostname:
        # Host root may enter a UTS namespace its child user namespace owns.
        nsenter = shutil.which("nsenter") or "nsenter"
        result = await run_program(
            [nsenter, f"--uts={paths['uts']}", "--", shutil.which("hostname") or "hostname",
             "--", hostname], time_limit=HELPER_TIMEOUT_S)
        if result.returncode != 0:
            await release_namespaces(directory)
            raise RuntimeFailure(f"setting the pod's hostname failed: "
                                 f"{result.stderr.decode(errors='replace').strip()}")
    return PinnedNamespaces({kind: str(path) for kind, path in paths.items()})


def _map_and_pin(pid: int, paths: dict[str, Path], uid_map: str, gid_map: str) -> None:
    try:
        Path(f"/proc/{pid}/uid_map").write_text(uid_map)
        Path(f"/proc/{pid}/gid_map").write_text(gid_map)
    except OSError as error:
        raise RuntimeFailure(f"writing the pod's user namespace mappings failed: {error}"
                             ) from error
    for kind, path in paths.items():  # crisp's kind names are /proc/<pid>/ns/ names
        bind_mount(Path(f"/proc/{pid}/ns/{kind}"), path)


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
