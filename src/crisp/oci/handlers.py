"""Finding the binaries a runtime handler needs, so Status can say what is missing."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

from crisp.config import RuntimeHandler


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
