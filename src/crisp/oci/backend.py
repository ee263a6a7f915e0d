"""One runtime handler as crisp drives it: an OCI runtime CLI watched by conmon.

A runtime of a different kind (another monitor, a sandboxed runtime) would be another class
with the same methods, chosen in :func:`backend_for`, not a branch in the pod code.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from crisp.config import Config
from crisp.errors import InvalidArgument
from crisp.oci.conmon import Conmon
from crisp.oci.handlers import resolve_binary
from crisp.oci.runtime import OCIRuntime


@dataclass(frozen=True)
class RuntimeBackend:
    """The OCI runtime and monitor of one named handler."""

    name: str
    runtime: OCIRuntime
    conmon: Conmon


def backend_for(config: Config, name: str) -> RuntimeBackend:
    """The backend of handler ``name`` ("" is the default); InvalidArgument if unknown."""
    try:
        handler = config.runtime(name)
    except KeyError as error:
        raise InvalidArgument(str(error.args[0])) from None
    resolved = name or config.default_runtime
    runtime_path = resolve_binary(handler.runtime_path)
    monitor_path = resolve_binary(handler.monitor_path)
    if runtime_path is None:
        raise InvalidArgument(
            f"runtime handler {resolved!r}: OCI runtime {handler.runtime_path!r} is not an "
            "executable file or on PATH"
        )
    if monitor_path is None:
        raise InvalidArgument(
            f"runtime handler {resolved!r}: monitor {handler.monitor_path!r} is not an "
            "executable file or on PATH"
        )
    root = Path(handler.runtime_root or Path(config.run_dir) / "runtimes" / resolved)
    runtime = OCIRuntime(str(runtime_path), root, Path(config.run_dir) / "runtimes" / ".sealed")
    return RuntimeBackend(resolved, runtime, Conmon(str(monitor_path), runtime))
