"""Clear UNIMPLEMENTED answers for every RPC crisp does not serve yet.

The generated servicer base classes answer "Method not implemented!", which tells an operator
nothing. :func:`fill_unimplemented` gives each missing method of a servicer class one that
names the RPC instead.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

from google.protobuf.descriptor import MethodDescriptor, ServiceDescriptor

from crisp.errors import Unimplemented

_CRIU = (
    "checkpoint/restore needs a working CRIU (runc checkpoint and restore drive it), and this "
    "host has none: `criu check` fails or criu is not installed"
)
REASONS = {
    "CheckpointContainer": _CRIU,
    "CheckpointPod": _CRIU,
    "RestorePod": _CRIU,
}
"""Why an RPC stays unimplemented, where there is more to say than its name."""


def fill_unimplemented(servicer: type, base: type, service: ServiceDescriptor) -> None:
    """Give ``servicer`` an UNIMPLEMENTED method for each RPC only ``base`` (generated) has."""
    for method in service.methods:
        implementation = getattr(servicer, method.name, None)
        if implementation is None or implementation is getattr(base, method.name, None):
            setattr(servicer, method.name, _unimplemented(service.name, method))


def _unimplemented(service: str, method: MethodDescriptor) -> Any:
    message = f"crisp does not implement {service}/{method.name}"
    if (reason := REASONS.get(method.name)) is not None:
        message = f"{message}: {reason}"

    if method.server_streaming:

        async def streaming(self: Any, request: Any, context: Any) -> AsyncIterator[Any]:
            raise Unimplemented(message)
            yield  # pragma: no cover - makes this an async generator like real streams

        return streaming

    async def unary(self: Any, request: Any, context: Any) -> Any:
        raise Unimplemented(message)

    return unary
