"""The Image domain type and its JSON form in the ``images`` table."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

from crisp.errors import CrispError
from crisp.images.manifest import ImageConfig


class NameUnresolved(Exception):
    """A pull failed before its registry resolved the name (not found, unreachable, refused,
    blocked, TLS): nothing of the image came from there, so a short name's search may go on to
    the next registry. ``error`` is what to report."""

    def __init__(self, error: CrispError):
        super().__init__(str(error))
        self.error = error


@dataclass(frozen=True)
class LayerRef:
    """One layer of an image: its blob, the uncompressed digest, and its chain id."""

    digest: str
    media_type: str
    size: int
    diff_id: str
    chain_id: str


@dataclass
class Image:
    """An image crisp has: its id is the config digest, as in containerd and CRI-O."""

    id: str
    repo_tags: list[str]
    repo_digests: list[str]
    size: int
    config: ImageConfig
    manifest_digest: str
    manifest_media_type: str
    layers: list[LayerRef]
    index_digest: str | None = None
    pinned: bool = False
    created_at: float = 0.0
    extra_blobs: list[str] = field(default_factory=list)

    @property
    def chain_ids(self) -> list[str]:
        return [layer.chain_id for layer in self.layers]

    def blobs(self) -> set[str]:
        """Every blob this image needs kept: manifests, config and layers."""
        result = {self.id, self.manifest_digest, *(layer.digest for layer in self.layers)}
        if self.index_digest:
            result.add(self.index_digest)
        result.update(self.extra_blobs)
        return result

    def uid_and_username(self) -> tuple[int | None, str]:
        """CRI's split of the config's User: a numeric uid, or else a user name."""
        user = self.config.user.split(":", 1)[0]
        if not user:
            return None, ""
        if user.isdigit():
            return int(user), ""
        return None, user

    def to_document(self) -> dict[str, Any]:
        doc = dataclasses.asdict(self)
        doc.pop("repo_tags")
        doc.pop("repo_digests")
        doc.pop("pinned")
        return doc

    @classmethod
    def from_document(cls, doc: dict[str, Any], names: list[str], pinned: bool) -> Image:
        return cls(
            id=doc["id"],
            repo_tags=sorted(n for n in names if "@" not in n),
            repo_digests=sorted(n for n in names if "@" in n),
            size=doc["size"],
            config=ImageConfig(**doc["config"]),
            manifest_digest=doc["manifest_digest"],
            manifest_media_type=doc["manifest_media_type"],
            layers=[LayerRef(**layer) for layer in doc["layers"]],
            index_digest=doc.get("index_digest"),
            pinned=pinned,
            created_at=doc.get("created_at", 0.0),
            extra_blobs=list(doc.get("extra_blobs", [])),
        )
