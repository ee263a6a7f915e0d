"""Image archives for offline installs: import docker-save and OCI layout tars, export both.

An export is one tar that is at the same time an OCI image layout (``oci-layout``,
``index.json``, ``blobs/sha256/...``) and a docker-save archive (``manifest.json`` naming the
same blobs), so ``docker load``, ``ctr images import`` and crisp itself all read it. Import
reads either kind, verifies every blob against its digest while copying it into the content
store, and never touches the filesystem outside it: archive paths are only looked up inside
the archive. Everything here blocks; the image service runs it in worker threads.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import tarfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

from crisp.errors import InvalidArgument, NotFound
from crisp.images.content import ContentStore
from crisp.images.manifest import (
    DOCKER_CONFIG,
    DOCKER_MANIFEST,
    INDEX_TYPES,
    OCI_CONFIG,
    OCI_INDEX,
    OCI_MANIFEST,
    Descriptor,
    Index,
    Manifest,
    host_platform,
    media_type_of,
    parse_descriptor,
    parse_manifest,
    select_platform,
)
from crisp.images.model import Image
from crisp.images.reference import parse_reference

REF_NAME = "org.opencontainers.image.ref.name"
CONTAINERD_NAME = "io.containerd.image.name"
_GZIP_MAGIC = b"\x1f\x8b"
_ZSTD_MAGIC = b"\x28\xb5\x2f\xfd"
_CHUNK = 1 << 20


@dataclass(frozen=True)
class ImportedManifest:
    """One image found in an archive, its blobs already in the content store."""

    names: list[str]
    manifest_digest: str
    manifest_media_type: str
    manifest: Manifest
    index_digest: str | None
    manifest_size: int


class _Archive:
    """Members of a tar by normalized name (no extraction to disk, ever)."""

    def __init__(self, path: Path):
        try:
            self.tar = tarfile.open(path, "r:*")  # noqa: SIM115 - closed by close()
            self.members = {
                m.name.lstrip("./").lstrip("/"): m for m in self.tar.getmembers() if m.isreg()
            }
        except (tarfile.TarError, EOFError, OSError) as error:
            raise InvalidArgument(f"the archive is not a readable tar: {error}") from error

    def has(self, name: str) -> bool:
        return name in self.members

    def open(self, name: str) -> BinaryIO:
        member = self.members.get(name.lstrip("./").lstrip("/"))
        if member is None:
            raise InvalidArgument(f"the archive lacks {name!r}, which its index refers to")
        stream = self.tar.extractfile(member)
        if stream is None:
            raise InvalidArgument(f"archive entry {name!r} is not a file")
        return stream  # type: ignore[return-value]

    def read(self, name: str, limit: int = 16 << 20) -> bytes:
        data = self.open(name).read(limit + 1)
        if len(data) > limit:
            raise InvalidArgument(f"archive entry {name!r} is too large for a manifest or config")
        return data

    def close(self) -> None:
        self.tar.close()


def _blob_name(digest: str) -> str:
    return "blobs/" + digest.replace(":", "/", 1)


def _normalize_name(raw: str, base_name: str) -> str | None:
    """A full ``name:tag`` for an archive's image name, or None if it names no repository."""
    if not raw:
        return None
    if ":" not in raw and "/" not in raw:  # a bare tag, as OCI layouts allow
        if not base_name:
            return None
        raw = f"{base_name}:{raw}"
    reference = parse_reference(raw)
    return str(reference)


def read_archive(path: Path, content: ContentStore, base_name: str = "") -> list[ImportedManifest]:
    """Copy the images of a docker-save or OCI layout archive into ``content`` (blocking)."""
    archive = _Archive(path)
    try:
        if archive.has("index.json"):
            found = _read_oci(archive, content, base_name)
            if not archive.has("manifest.json") or any(image.names for image in found):
                return found
        if archive.has("manifest.json"):
            return _read_docker(archive, content, base_name)
        raise InvalidArgument(
            "the archive is neither an OCI image layout (index.json) nor a docker-save "
            "archive (manifest.json)"
        )
    finally:
        archive.close()


def _store(archive: _Archive, content: ContentStore, digest: str, size: int | None) -> None:
    if content.has(digest):
        return
    content.put_file_blocking(archive.open(_blob_name(digest)), digest, size)


def _read_oci(archive: _Archive, content: ContentStore, base_name: str) -> list[ImportedManifest]:
    index = _json(archive, "index.json")
    entries = index.get("manifests", []) if isinstance(index, dict) else None
    if not isinstance(entries, list):
        raise InvalidArgument("index.json of the OCI layout is not an object with a manifests list")
    results = []
    for number, entry in enumerate(entries):
        descriptor = parse_descriptor(entry, f"index.json manifests[{number}]")
        annotations = entry.get("annotations")
        annotations = annotations if isinstance(annotations, dict) else {}
        raw_name = annotations.get(CONTAINERD_NAME) or annotations.get(REF_NAME, "")
        name = _normalize_name(raw_name if isinstance(raw_name, str) else "", base_name)
        digest, size = descriptor.digest, descriptor.size
        _store(archive, content, digest, size)
        data = content.path(digest).read_bytes()
        media_type = descriptor.media_type or media_type_of(data, None)
        document = parse_manifest(data, media_type)
        index_digest = None
        if isinstance(document, Index):
            index_digest = digest
            chosen = select_platform(document)
            _store(archive, content, chosen.digest, chosen.size)
            data = content.path(chosen.digest).read_bytes()
            digest, media_type = chosen.digest, chosen.media_type or media_type_of(data, None)
            document = parse_manifest(data, media_type)
        if not isinstance(document, Manifest):
            raise InvalidArgument(f"archive entry {digest} is not an image manifest")
        _store(archive, content, document.config.digest, document.config.size)
        for layer in document.layers:
            _store(archive, content, layer.digest, layer.size)
        results.append(ImportedManifest([name] if name else [], digest, media_type, document,
                                        index_digest, len(data)))
    return results


def _layer_media_type(head: bytes) -> str:
    if head.startswith(_GZIP_MAGIC):
        return "application/vnd.docker.image.rootfs.diff.tar.gzip"
    if head.startswith(_ZSTD_MAGIC):
        return "application/vnd.oci.image.layer.v1.tar+zstd"
    return "application/vnd.docker.image.rootfs.diff.tar"


def _read_docker(archive: _Archive, content: ContentStore,
                 base_name: str) -> list[ImportedManifest]:
    entries = _json(archive, "manifest.json")
    if not isinstance(entries, list):
        raise InvalidArgument("manifest.json of the docker-save archive is not a list")
    results = []
    for number, entry in enumerate(entries):
        what = f"manifest.json entry {number}"
        if not isinstance(entry, dict):
            raise InvalidArgument(f"{what} is not an object")
        config_path = entry.get("Config")
        if not isinstance(config_path, str) or not config_path:
            raise InvalidArgument(f"{what} has no Config (the path of the image config)")
        config_data = archive.read(config_path)
        config_digest, config_size = content.put_file_blocking(io.BytesIO(config_data))
        layers = []
        for layer_path in _strings(entry, "Layers", what):
            head = archive.open(layer_path).read(4)
            digest, size = content.put_file_blocking(archive.open(layer_path))
            layers.append(Descriptor(_layer_media_type(head), digest, size))
        manifest = Manifest(DOCKER_MANIFEST, Descriptor(DOCKER_CONFIG, config_digest, config_size),
                            layers)
        manifest_data = _manifest_bytes(manifest)
        manifest_digest, _ = content.put_file_blocking(io.BytesIO(manifest_data))
        names = [n for n in (_normalize_name(t, base_name)
                             for t in _strings(entry, "RepoTags", what)) if n]
        results.append(ImportedManifest(names, manifest_digest, DOCKER_MANIFEST, manifest, None,
                                        len(manifest_data)))
    return results


def _json(archive: _Archive, name: str) -> Any:
    try:
        return json.loads(archive.read(name))
    except (ValueError, UnicodeDecodeError) as error:
        raise InvalidArgument(f"{name} in the archive is not valid JSON: {error}") from error


def _strings(entry: dict[str, Any], key: str, what: str) -> list[str]:
    values = entry.get(key) or []
    if not isinstance(values, list) or not all(isinstance(v, str) for v in values):
        raise InvalidArgument(f"{what}: {key} must be a list of strings")
    return values


def _manifest_bytes(manifest: Manifest) -> bytes:
    document = {
        "schemaVersion": 2,
        "mediaType": manifest.media_type,
        "config": manifest.config.to_json(),
        "layers": [layer.to_json() for layer in manifest.layers],
    }
    return json.dumps(document, indent=2).encode()


@dataclass(frozen=True)
class RootfsLayer:
    """A directory tar made into a one-layer image's blobs."""

    manifest_digest: str
    manifest: Manifest
    manifest_size: int


def build_rootfs_image(tar_path: Path, content: ContentStore) -> RootfsLayer:
    """Compress a directory tar into a layer and write config and manifest blobs (blocking)."""
    raw_hash = hashlib.sha256()
    gz_path = content.temp_path("rootfs-")
    try:
        with (
            open(tar_path, "rb") as source,
            open(gz_path, "wb") as out,
            gzip.GzipFile(fileobj=out, mode="wb", compresslevel=6, mtime=0) as gz,
        ):
            while chunk := source.read(_CHUNK):
                raw_hash.update(chunk)
                gz.write(chunk)
        with open(gz_path, "rb") as compressed:
            layer_digest, layer_size = content.put_file_blocking(compressed)
    finally:
        gz_path.unlink(missing_ok=True)
    diff_id = "sha256:" + raw_hash.hexdigest()
    now = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    plat = host_platform()
    config: dict[str, Any] = {
        "created": now,
        "architecture": plat.architecture,
        "os": plat.os,
        "config": {},
        "rootfs": {"type": "layers", "diff_ids": [diff_id]},
        "history": [{"created": now, "created_by": "crispctl images import --rootfs"}],
    }
    if plat.variant:
        config["variant"] = plat.variant
    config_data = json.dumps(config, sort_keys=True).encode()
    config_digest, config_size = content.put_file_blocking(io.BytesIO(config_data))
    manifest = Manifest(
        OCI_MANIFEST,
        Descriptor(OCI_CONFIG, config_digest, config_size),
        [Descriptor("application/vnd.oci.image.layer.v1.tar+gzip", layer_digest, layer_size)],
    )
    data = _manifest_bytes(manifest)
    digest, _ = content.put_file_blocking(io.BytesIO(data))
    return RootfsLayer(digest, manifest, len(data))


def write_archive(out_path: Path, images: list[tuple[Image, list[str]]],
                  content: ContentStore) -> None:
    """Write ``images`` (each with the names to record) as an OCI layout + docker-save tar."""
    index_entries: list[dict[str, Any]] = []
    docker_entries: list[dict[str, Any]] = []
    blobs: list[str] = []
    for image, names in images:
        manifest_data = content.path(image.manifest_digest).read_bytes()
        document = parse_manifest(manifest_data, image.manifest_media_type)
        if not isinstance(document, Manifest) or image.manifest_media_type in INDEX_TYPES:
            raise InvalidArgument(f"image {image.id} has no single-platform manifest to export")
        needed = [image.manifest_digest, image.id, *(layer.digest for layer in image.layers)]
        for digest in needed:
            if not content.has(digest):
                raise NotFound(
                    f"blob {digest} of image {image.id} is not in the content store; pull the "
                    "image again before exporting it"
                )
            if digest not in blobs:
                blobs.append(digest)
        base = {"mediaType": image.manifest_media_type, "digest": image.manifest_digest,
                "size": len(manifest_data)}
        for name in names or [""]:
            entry = dict(base)
            if name:
                entry["annotations"] = {CONTAINERD_NAME: name,
                                        REF_NAME: name.rsplit(":", 1)[-1]}
            index_entries.append(entry)
        docker_entries.append({
            "Config": _blob_name(image.id),
            "RepoTags": names,
            "Layers": [_blob_name(layer.digest) for layer in image.layers],
        })
    with tarfile.open(out_path, "w", format=tarfile.PAX_FORMAT) as tar:
        _add_bytes(tar, "oci-layout", json.dumps({"imageLayoutVersion": "1.0.0"}).encode())
        index = {"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": index_entries}
        _add_bytes(tar, "index.json", json.dumps(index).encode())
        _add_bytes(tar, "manifest.json", json.dumps(docker_entries).encode())
        for directory in ("blobs", "blobs/sha256"):
            info = tarfile.TarInfo(directory)
            info.type = tarfile.DIRTYPE
            info.mode = 0o755
            tar.addfile(info)
        for digest in blobs:
            path = content.path(digest)
            info = tarfile.TarInfo(_blob_name(digest))
            info.size = path.stat().st_size
            info.mode = 0o444
            with open(path, "rb") as blob:
                tar.addfile(info, blob)


def _add_bytes(tar: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    info.mode = 0o444
    tar.addfile(info, io.BytesIO(data))
