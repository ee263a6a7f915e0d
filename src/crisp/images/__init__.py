"""Images: references, registries, the content store, image records, pull, GC."""

from crisp.images.auth import Credentials
from crisp.images.gc import GcResult
from crisp.images.manifest import ImageConfig
from crisp.images.model import Image, LayerRef
from crisp.images.progress import LayerProgress, PullProgress
from crisp.images.reference import Reference, parse_reference
from crisp.images.service import FilesystemUsage, ImageFsUsage, ImageService

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
