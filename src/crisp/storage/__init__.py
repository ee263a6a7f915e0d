"""Layer unpacking, overlay snapshots for container root filesystems, and disk usage."""

from typing import TYPE_CHECKING, Any

from crisp.storage.layers import LayerInfo, LayerStore, SourceInterrupted, chain_ids, short_name
from crisp.storage.snapshots import OwnerShift, SnapshotStore
from crisp.storage.usage import disk_usage

if TYPE_CHECKING:
    from crisp.storage.unpack import UnpackResult, UnsafeLayer, unpack_layer


def __getattr__(name: str) -> Any:
    """The unpacker (tarfile, gzip, lzma, bz2) is loaded with the first layer to unpack."""
    if name in ("UnpackResult", "UnsafeLayer", "unpack_layer"):
        from crisp.storage import unpack

        return getattr(unpack, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")

__all__ = [
    "LayerInfo",
    "LayerStore",
    "OwnerShift",
    "SnapshotStore",
    "SourceInterrupted",
    "UnpackResult",
    "UnsafeLayer",
    "chain_ids",
    "disk_usage",
    "short_name",
    "unpack_layer",
]
