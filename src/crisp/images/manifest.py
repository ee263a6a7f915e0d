"""Manifests, indexes and image configs: parsing, validation and platform selection.

Docker v2 schema 2 and OCI manifests name a config and layers; Docker manifest lists and OCI
indexes name one manifest per platform, of which crisp picks the one for this host. Schema 1
is refused with an explanation.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from typing import Any

from crisp.errors import InvalidArgument, NotFound, Unimplemented
from crisp.images.reference import validate_digest

OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
OCI_INDEX = "application/vnd.oci.image.index.v1+json"
DOCKER_MANIFEST = "application/vnd.docker.distribution.manifest.v2+json"
DOCKER_LIST = "application/vnd.docker.distribution.manifest.list.v2+json"
DOCKER_SCHEMA1 = "application/vnd.docker.distribution.manifest.v1+json"
DOCKER_SCHEMA1_SIGNED = "application/vnd.docker.distribution.manifest.v1+prettyjws"
OCI_CONFIG = "application/vnd.oci.image.config.v1+json"
DOCKER_CONFIG = "application/vnd.docker.container.image.v1+json"

MANIFEST_TYPES = (OCI_MANIFEST, DOCKER_MANIFEST)
INDEX_TYPES = (OCI_INDEX, DOCKER_LIST)
ACCEPT = ", ".join((*MANIFEST_TYPES, *INDEX_TYPES))

LAYER_TYPES = frozenset({
    "application/vnd.oci.image.layer.v1.tar",
    "application/vnd.oci.image.layer.v1.tar+gzip",
    "application/vnd.oci.image.layer.v1.tar+zstd",
    "application/vnd.oci.image.layer.nondistributable.v1.tar+gzip",
    "application/vnd.docker.image.rootfs.diff.tar",
    "application/vnd.docker.image.rootfs.diff.tar.gzip",
    "application/vnd.docker.image.rootfs.foreign.diff.tar.gzip",
})

MAX_MANIFEST_SIZE = 4 << 20


@dataclass(frozen=True)
class FetchedManifest:
    """A manifest or index as a registry served it, its digest computed from ``data``."""

    data: bytes
    media_type: str
    digest: str


@dataclass(frozen=True)
class Descriptor:
    """A pointer to a blob: its media type, digest and size (and for index entries, platform)."""

    media_type: str
    digest: str
    size: int
    platform: dict[str, str] | None = None

    def to_json(self) -> dict[str, Any]:
        doc: dict[str, Any] = {"mediaType": self.media_type, "digest": self.digest,
                               "size": self.size}
        if self.platform:
            doc["platform"] = self.platform
        return doc


@dataclass(frozen=True)
class Manifest:
    """An image manifest: one config and its layers, bottom first."""

    media_type: str
    config: Descriptor
    layers: list[Descriptor]


@dataclass(frozen=True)
class Index:
    """A multi-platform index or manifest list."""

    media_type: str
    manifests: list[Descriptor]


@dataclass(frozen=True)
class Platform:
    os: str
    architecture: str
    variant: str = ""

    def __str__(self) -> str:
        text = f"{self.os}/{self.architecture}"
        return f"{text}/{self.variant}" if self.variant else text


def host_platform() -> Platform:
    """This host's platform in OCI terms (Go's GOOS/GOARCH names)."""
    machine = os.uname().machine  # what platform.machine() reads, without platform's import
    arch = {"x86_64": "amd64", "aarch64": "arm64", "armv7l": "arm", "armv6l": "arm",
            "i686": "386", "i386": "386", "ppc64le": "ppc64le", "s390x": "s390x"}.get(machine,
                                                                                      machine)
    variant = {"aarch64": "v8", "armv7l": "v7", "armv6l": "v6"}.get(machine, "")
    return Platform("linux", arch, variant)


@dataclass
class ImageConfig:
    """The parts of an image config the runtime uses."""

    user: str = ""
    env: list[str] = field(default_factory=list)
    entrypoint: list[str] = field(default_factory=list)
    cmd: list[str] = field(default_factory=list)
    working_dir: str = ""
    stop_signal: str = ""
    labels: dict[str, str] = field(default_factory=dict)
    volumes: list[str] = field(default_factory=list)
    exposed_ports: list[str] = field(default_factory=list)
    diff_ids: list[str] = field(default_factory=list)
    os: str = ""
    architecture: str = ""
    created: str = ""


def _load_json(data: bytes, what: str) -> dict[str, Any]:
    try:
        doc = json.loads(data)
    except (ValueError, UnicodeDecodeError) as error:
        raise InvalidArgument(f"{what} is not valid JSON: {error}") from error
    if not isinstance(doc, dict):
        raise InvalidArgument(f"{what} is not a JSON object")
    return doc


def parse_descriptor(raw: Any, what: str) -> Descriptor:
    if not isinstance(raw, dict):
        raise InvalidArgument(f"{what} is not a descriptor object")
    try:
        digest = validate_digest(str(raw["digest"]))
        size = int(raw["size"])
        media_type = str(raw.get("mediaType", ""))
    except (KeyError, TypeError, ValueError) as error:
        raise InvalidArgument(f"{what} lacks a valid digest or size: {error}") from error
    if size < 0:
        raise InvalidArgument(f"{what} has a negative size")
    plat = raw.get("platform")
    return Descriptor(media_type, digest, size,
                      {str(k): str(v) for k, v in plat.items() if isinstance(v, str)}
                      if isinstance(plat, dict) else None)


def media_type_of(data: bytes, content_type: str | None) -> str:
    """The media type of a manifest document, from its own mediaType or the HTTP header."""
    doc = _load_json(data, "manifest")
    declared = doc.get("mediaType")
    if isinstance(declared, str) and declared:
        return declared
    if doc.get("schemaVersion") == 1:
        return DOCKER_SCHEMA1
    if "manifests" in doc:
        return OCI_INDEX
    if "config" in doc and "layers" in doc:
        return OCI_MANIFEST
    return (content_type or "").split(";")[0].strip()


def parse_manifest(data: bytes, media_type: str) -> Manifest | Index:
    """Parse a manifest or index; Unimplemented for schema 1, InvalidArgument if malformed."""
    doc = _load_json(data, "manifest")
    if media_type in (DOCKER_SCHEMA1, DOCKER_SCHEMA1_SIGNED) or doc.get("schemaVersion") == 1:
        raise Unimplemented(
            "the image uses the Docker schema 1 manifest format, which is deprecated and not "
            "supported; push it again with a current docker or skopeo to get schema 2"
        )
    if media_type in INDEX_TYPES:
        entries = doc.get("manifests")
        if not isinstance(entries, list):
            raise InvalidArgument("image index has no list of manifests")
        return Index(media_type, [parse_descriptor(e, "index entry") for e in entries])
    if media_type in MANIFEST_TYPES:
        layers = doc.get("layers")
        if not isinstance(layers, list):
            raise InvalidArgument("image manifest has no list of layers")
        manifest = Manifest(
            media_type,
            parse_descriptor(doc.get("config"), "manifest config"),
            [parse_descriptor(layer, "manifest layer") for layer in layers],
        )
        for layer in manifest.layers:
            if layer.media_type not in LAYER_TYPES:
                raise Unimplemented(
                    f"layer {layer.digest} has media type {layer.media_type!r}, which crisp "
                    "cannot unpack (it unpacks tar, tar+gzip and tar+zstd layers)"
                )
        return manifest
    raise Unimplemented(f"manifest media type {media_type!r} is not supported")


def select_platform(index: Index, want: Platform | None = None) -> Descriptor:
    """The index entry for ``want`` (this host by default); NotFound lists what there is."""
    want = want or host_platform()
    candidates = []
    for entry in index.manifests:
        plat = entry.platform or {}
        if plat.get("os", "") != want.os or plat.get("architecture", "") != want.architecture:
            continue
        variant = plat.get("variant", "")
        if want.variant and variant and variant != want.variant:
            continue
        candidates.append((variant == want.variant, entry))
    if not candidates:
        available = sorted(
            str(Platform(p.get("os", "?"), p.get("architecture", "?"), p.get("variant", "")))
            for p in (e.platform or {} for e in index.manifests)
        )
        raise NotFound(
            f"the image has no variant for this host's platform {want}; it has "
            f"{', '.join(available) or 'no platforms'}"
        )
    candidates.sort(key=lambda c: not c[0])
    return candidates[0][1]


def parse_config(data: bytes) -> ImageConfig:
    doc = _load_json(data, "image config")
    run = doc.get("config") or {}
    rootfs = doc.get("rootfs") or {}
    diff_ids = rootfs.get("diff_ids")
    if not isinstance(diff_ids, list):
        raise InvalidArgument("image config has no rootfs.diff_ids")

    def strings(value: Any) -> list[str]:
        return [str(v) for v in value] if isinstance(value, list) else []

    return ImageConfig(
        user=str(run.get("User") or ""),
        env=strings(run.get("Env")),
        entrypoint=strings(run.get("Entrypoint")),
        cmd=strings(run.get("Cmd")),
        working_dir=str(run.get("WorkingDir") or ""),
        stop_signal=str(run.get("StopSignal") or ""),
        labels={str(k): str(v) for k, v in (run.get("Labels") or {}).items()},
        volumes=sorted(str(v) for v in (run.get("Volumes") or {})),
        exposed_ports=sorted(str(p) for p in (run.get("ExposedPorts") or {})),
        diff_ids=[validate_digest(str(d)) for d in diff_ids],
        os=str(doc.get("os") or ""),
        architecture=str(doc.get("architecture") or ""),
        created=str(doc.get("created") or ""),
    )
