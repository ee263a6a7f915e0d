"""Which CRI socket a client talks to, found the way crictl finds it."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import yaml

DEFAULT_ENDPOINT = "unix:///run/crisp/crisp.sock"
CRICTL_CONFIG = Path("/etc/crictl.yaml")
ENVIRONMENT_VARIABLE = "CONTAINER_RUNTIME_ENDPOINT"
IMAGE_ENVIRONMENT_VARIABLE = "IMAGE_SERVICE_ENDPOINT"
CONFIG_ENVIRONMENT_VARIABLE = "CRI_CONFIG_FILE"


def config_path(explicit: str | None) -> Path:
    """--config, else $CRI_CONFIG_FILE, else /etc/crictl.yaml (crictl's order)."""
    return Path(explicit or os.environ.get(CONFIG_ENVIRONMENT_VARIABLE) or CRICTL_CONFIG)


def load_crictl_config(path: Path) -> dict[str, Any]:
    """The settings of a crictl.yaml; empty when it is missing or unreadable as YAML.

    Clients only read it for defaults, so a broken file must not stop them: crictl warns and
    goes on with its defaults too. ``crispctl config`` reports the file's problems itself.
    """
    try:
        document = yaml.safe_load(path.read_text())
    except (OSError, UnicodeDecodeError, yaml.YAMLError):
        return {}
    return document if isinstance(document, dict) else {}


def resolve_endpoint(explicit: str | None, crictl_config: Path = CRICTL_CONFIG) -> str:
    """--runtime-endpoint, else $CONTAINER_RUNTIME_ENDPOINT, else crictl.yaml, else crisp's."""
    for candidate in (
        explicit,
        os.environ.get(ENVIRONMENT_VARIABLE),
        _setting(crictl_config, "runtime-endpoint"),
    ):
        if candidate:
            return grpc_target(candidate)
    return DEFAULT_ENDPOINT


def resolve_image_endpoint(explicit: str | None, runtime_target: str,
                           crictl_config: Path = CRICTL_CONFIG) -> str:
    """--image-endpoint, else $IMAGE_SERVICE_ENDPOINT, else crictl.yaml, else the runtime's."""
    for candidate in (
        explicit,
        os.environ.get(IMAGE_ENVIRONMENT_VARIABLE),
        _setting(crictl_config, "image-endpoint"),
    ):
        if candidate:
            return grpc_target(candidate)
    return runtime_target


def grpc_target(endpoint: str) -> str:
    """A gRPC target for an endpoint given as unix:///path, unix:path or a bare socket path."""
    if endpoint.startswith("/"):
        return f"unix://{endpoint}"
    return endpoint


def _setting(path: Path, key: str) -> str | None:
    value = load_crictl_config(path).get(key)
    return str(value).strip() or None if value is not None else None
