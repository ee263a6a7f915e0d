"""Which CRI socket a client talks to, found the way crictl finds it."""

from __future__ import annotations

import os
from pathlib import Path

DEFAULT_ENDPOINT = "unix:///run/crisp/crisp.sock"
CRICTL_CONFIG = Path("/etc/crictl.yaml")
ENVIRONMENT_VARIABLE = "CONTAINER_RUNTIME_ENDPOINT"


def resolve_endpoint(explicit: str | None, crictl_config: Path = CRICTL_CONFIG) -> str:
    """--runtime-endpoint, else $CONTAINER_RUNTIME_ENDPOINT, else crictl.yaml, else crisp's."""
    for candidate in (
        explicit,
        os.environ.get(ENVIRONMENT_VARIABLE),
        _from_crictl_config(crictl_config),
    ):
        if candidate:
            return grpc_target(candidate)
    return DEFAULT_ENDPOINT


def grpc_target(endpoint: str) -> str:
    """A gRPC target for an endpoint given as unix:///path, unix:path or a bare socket path."""
    if endpoint.startswith("/"):
        return f"unix://{endpoint}"
    return endpoint


def _from_crictl_config(path: Path) -> str | None:
    """The runtime-endpoint of a crictl.yaml (a flat "key: value" file)."""
    try:
        text = path.read_text()
    except OSError:
        return None
    for line in text.splitlines():
        key, separator, value = line.partition(":")
        if separator and key.strip() == "runtime-endpoint":
            return value.split("#", 1)[0].strip().strip("'\"") or None
    return None
