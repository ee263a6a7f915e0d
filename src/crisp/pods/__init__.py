"""Pod sandboxes and containers: their lifecycle on an OCI runtime watched by conmon.

The service and the adapters are loaded on first use: crisp.oci builds specs from the model
types here, and the service in turn uses crisp.oci, so importing them eagerly would make
``import crisp.oci.spec`` circular.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from crisp.pods.events import EventKind, LifecycleEvent
from crisp.pods.model import (
    Container,
    ContainerConfig,
    ContainerMetadata,
    ContainerState,
    Device,
    DNSConfig,
    ImageRuntimeConfig,
    Mount,
    NamespaceMode,
    NamespaceOptions,
    PortMapping,
    ProcessUser,
    Propagation,
    Resources,
    Sandbox,
    SandboxConfig,
    SandboxMetadata,
    SandboxState,
    SecurityContext,
)

if TYPE_CHECKING:
    from crisp.pods.adapters import ImagesForPods, NetworkForPods, SnapshotsForPods
    from crisp.pods.execsync import ExecResult
    from crisp.pods.service import PodService

_LAZY = {
    "ImagesForPods": "crisp.pods.adapters",
    "NetworkForPods": "crisp.pods.adapters",
    "SnapshotsForPods": "crisp.pods.adapters",
    "ExecResult": "crisp.pods.execsync",
    "PodService": "crisp.pods.service",
}


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'crisp.pods' has no attribute {name!r}")
    return getattr(importlib.import_module(module), name)

__all__ = [
    "Container",
    "ContainerConfig",
    "ContainerMetadata",
    "ContainerState",
    "DNSConfig",
    "Device",
    "EventKind",
    "ExecResult",
    "ImageRuntimeConfig",
    "ImagesForPods",
    "LifecycleEvent",
    "Mount",
    "NamespaceMode",
    "NamespaceOptions",
    "NetworkForPods",
    "PodService",
    "PortMapping",
    "ProcessUser",
    "Propagation",
    "Resources",
    "Sandbox",
    "SandboxConfig",
    "SandboxMetadata",
    "SandboxState",
    "SecurityContext",
    "SnapshotsForPods",
]
