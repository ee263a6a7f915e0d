"""A runtime handler's binaries and features, so Status can say what is missing and what
each handler can do."""

from __future__ import annotations

import asyncio
import json
import os
import re
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from crisp.config import RuntimeHandler
from crisp.process import run_program


def resolve_binary(name: str) -> Path | None:
    """The executable ``name`` names: an absolute path as is, else looked up on PATH."""
    if os.path.isabs(name):
        return Path(name) if os.access(name, os.X_OK) else None
    found = shutil.which(name)
    return Path(found) if found else None


def handler_problems(name: str, handler: RuntimeHandler) -> list[str]:
    """What keeps runtime handler ``name`` from running containers; empty when it can."""
    problems = []
    if resolve_binary(handler.runtime_path) is None:
        problems.append(
            f"runtime handler {name!r}: OCI runtime {handler.runtime_path!r} "
            "is not an executable file or on PATH"
        )
    if resolve_binary(handler.monitor_path) is None:
        problems.append(
            f"runtime handler {name!r}: monitor {handler.monitor_path!r} "
            "is not an executable file or on PATH"
        )
    return problems


@dataclass(frozen=True)
class HandlerFeatures:
    """What a handler can do for pods, as CRI's RuntimeHandlerFeatures reports it."""

    recursive_read_only_mounts: bool = False
    user_namespaces: bool = False


RRO_MIN_KERNEL = (5, 12)
"""mount_setattr(2) with AT_RECURSIVE, which recursive read-only mounts need, is in 5.12."""

def host_allows_pod_userns(proc_root: Path = Path("/proc"),
                           sys_root: Path = Path("/sys")) -> bool:
    """Whether this kernel gives pod user namespaces as crisp runs them: user namespaces
    allowed, and overlayfs metacopy, which shifts the rootfs owners without copying data
    (runc 1.1 has no idmapped mounts). Blocking: reads two files."""
    try:
        allowed = int((proc_root / "sys/user/max_user_namespaces").read_text().strip() or 0)
    except (OSError, ValueError):
        allowed = 0
    return allowed > 0 and (sys_root / "module/overlay/parameters/metacopy").exists()

FEATURES_TIMEOUT_S = 10.0


def kernel_version(release: str) -> tuple[int, int]:
    """(major, minor) of a kernel release string such as "6.1.0-13-amd64"; (0, 0) if odd."""
    match = re.match(r"(\d+)\.(\d+)", release)
    return (int(match.group(1)), int(match.group(2))) if match else (0, 0)


def features_of(runtime_features: dict[str, Any], kernel: tuple[int, int],
                pod_userns_host: bool = False) -> HandlerFeatures:
    """A handler's features from its ``<runtime> features`` document and the kernel;
    ``pod_userns_host`` is :func:`host_allows_pod_userns`."""
    mount_options = runtime_features.get("mountOptions") or []
    namespaces = (runtime_features.get("linux") or {}).get("namespaces") or []
    return HandlerFeatures(
        recursive_read_only_mounts="rro" in mount_options and kernel >= RRO_MIN_KERNEL,
        user_namespaces=pod_userns_host and "user" in namespaces,
    )


_features_cache: dict[str, dict[str, Any]] = {}


async def runtime_features(runtime_path: str) -> dict[str, Any]:
    """The runtime's ``features`` document (OCI runtime features), cached per binary.

    A runtime too old to have the command, or one that fails, has no features: {}.
    """
    binary = resolve_binary(runtime_path)
    if binary is None:
        return {}
    key = str(binary)
    if key in _features_cache:
        return _features_cache[key]
    try:
        result = await run_program([key, "features"], time_limit=FEATURES_TIMEOUT_S)
    except TimeoutError:
        return {}
    document: dict[str, Any] = {}
    if result.returncode == 0:
        try:
            parsed = json.loads(result.stdout)
        except ValueError:
            parsed = None
        if isinstance(parsed, dict):
            document = parsed
    _features_cache[key] = document
    return document


async def handler_features(handler: RuntimeHandler) -> HandlerFeatures:
    """The features Status reports for ``handler`` on this host."""
    document = await runtime_features(handler.runtime_path)
    userns = await asyncio.to_thread(host_allows_pod_userns)
    return features_of(document, kernel_version(os.uname().release), pod_userns_host=userns)


async def runtime_supports_rro(runtime_path: str) -> bool:
    """Whether the OCI runtime at ``runtime_path`` can make recursive read-only mounts here."""
    document = await runtime_features(runtime_path)
    return features_of(document, kernel_version(os.uname().release)).recursive_read_only_mounts
