"""Images: references, registries, the content store, image records, pull, GC.

The names below load on first use (PEP 562): the registry helper process imports
``crisp.images.registry`` and would otherwise pay for the image service, the layer store and
the database (about 0.2 s of its start, which a cold pull waits for).
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from crisp.images.auth import Credentials
    from crisp.images.gc import GcResult
    from crisp.images.manifest import ImageConfig
    from crisp.images.model import Image, LayerRef
    from crisp.images.progress import LayerProgress, PullProgress
    from crisp.images.reference import Reference, parse_reference
    from crisp.images.service import FilesystemUsage, ImageFsUsage, ImageService

_WHERE = {
    "Credentials": "auth",
    "FilesystemUsage": "service",
    "GcResult": "gc",
    "Image": "model",
    "ImageConfig": "manifest",
    "ImageFsUsage": "service",
    "ImageService": "service",
    "LayerProgress": "progress",
    "LayerRef": "model",
    "PullProgress": "progress",
    "Reference": "reference",
    "parse_reference": "reference",
}

__all__ = [
    "Credentials",
    "FilesystemUsage",
    "GcResult",
    "Image",
    "ImageConfig",
    "ImageFsUsage",
    "ImageService",
    "LayerProgress",
    "LayerRef",
    "PullProgress",
    "Reference",
    "parse_reference",
]


def __getattr__(name: str) -> Any:
    module = _WHERE.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f"{__name__}.{module}"), name)
    globals()[name] = value
    return value
