"""Layer unpacking, overlay snapshots for container root filesystems, and disk usage."""

from crisp.storage.layers import LayerInfo, LayerStore, chain_ids, short_name
from crisp.storage.snapshots import SnapshotStore
from crisp.storage.unpack import UnpackResult, UnsafeLayer, unpack_layer
from crisp.storage.usage import disk_usage

__all__ = [
    "LayerInfo",
    "LayerStore",
    "SnapshotStore",
    "UnpackResult",
    "UnsafeLayer",
    "chain_ids",
    "disk_usage",
    "short_name",
    "unpack_layer",
]
