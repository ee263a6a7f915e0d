"""Build OCI and Docker images in Python and push them to a registry, for tests.

The standard rootfs is the one of the official busybox image: ``/bin/busybox`` with every
applet as a hard link beside it, and ``/etc/passwd`` and ``/etc/group`` with the usual system
users. Extra layers are described entry by entry with :class:`LayerBuilder`, which can also make
hostile archives (``..`` paths, absolute paths, links that escape) for the safety tests.
"""

from __future__ import annotations

import base64
import gzip
import hashlib
import io
import json
import platform
import subprocess
import tarfile
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any, Literal

import zstandard

BUSYBOX = "/bin/busybox"
DEFAULT_PATH = "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
MTIME = 1_700_000_000

Compression = Literal["gzip", "zstd", "none"]
Format = Literal["oci", "docker"]

OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
OCI_INDEX = "application/vnd.oci.image.index.v1+json"
OCI_CONFIG = "application/vnd.oci.image.config.v1+json"
DOCKER_MANIFEST = "application/vnd.docker.distribution.manifest.v2+json"
DOCKER_LIST = "application/vnd.docker.distribution.manifest.list.v2+json"
DOCKER_CONFIG = "application/vnd.docker.container.image.v1+json"
LAYER_TYPES: dict[tuple[Format, Compression], str] = {
    ("oci", "gzip"): "application/vnd.oci.image.layer.v1.tar+gzip",
    ("oci", "zstd"): "application/vnd.oci.image.layer.v1.tar+zstd",
    ("oci", "none"): "application/vnd.oci.image.layer.v1.tar",
    ("docker", "gzip"): "application/vnd.docker.image.rootfs.diff.tar.gzip",
    ("docker", "zstd"): "application/vnd.oci.image.layer.v1.tar+zstd",
    ("docker", "none"): "application/vnd.docker.image.rootfs.diff.tar",
}

PASSWD = (
    "root:x:0:0:root:/root:/bin/sh\n"
    "daemon:x:1:1:daemon:/usr/sbin:/bin/false\n"
    "bin:x:2:2:bin:/bin:/bin/false\n"
    "sys:x:3:3:sys:/dev:/bin/false\n"
    "sync:x:4:100:sync:/bin:/bin/sync\n"
    "mail:x:8:8:mail:/var/spool/mail:/bin/false\n"
    "www-data:x:33:33:www-data:/var/www:/bin/false\n"
    "operator:x:37:37:Operator:/var:/bin/false\n"
    "nobody:x:65534:65534:nobody:/home:/bin/false\n"
)
GROUP = (
    "root:x:0:\ndaemon:x:1:\nbin:x:2:\nsys:x:3:\nadm:x:4:\ntty:x:5:\ndisk:x:6:\n"
    "wheel:x:10:\nmail:x:12:\nwww-data:x:33:\noperator:x:37:\nstaff:x:50:\n"
    "users:x:100:\nnogroup:x:65533:\nnobody:x:65534:\n"
)


def sha256_digest(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def host_platform() -> dict[str, str]:
    """This host's OCI platform (os, architecture and, for arm, the variant)."""
    machine = platform.machine()
    arch = {"x86_64": "amd64", "aarch64": "arm64", "armv7l": "arm", "i686": "386"}.get(
        machine, machine
    )
    result = {"os": "linux", "architecture": arch}
    if arch == "arm64":
        result["variant"] = "v8"
    elif arch == "arm":
        result["variant"] = "v7"
    return result


class LayerBuilder:
    """The entries of one layer tar, added in order."""

    def __init__(self) -> None:
        self._entries: list[tuple[tarfile.TarInfo, bytes | None]] = []

    def _info(
        self, path: str, kind: bytes, mode: int, uid: int, gid: int, mtime: int
    ) -> tarfile.TarInfo:
        info = tarfile.TarInfo(path)
        info.type = kind
        info.mode = mode
        info.uid, info.gid = uid, gid
        info.mtime = mtime
        return info

    def dir(
        self, path: str, mode: int = 0o755, uid: int = 0, gid: int = 0, mtime: int = MTIME
    ) -> LayerBuilder:
        self._entries.append((self._info(path, tarfile.DIRTYPE, mode, uid, gid, mtime), None))
        return self

    def file(
        self,
        path: str,
        data: bytes | str = b"",
        mode: int = 0o644,
        uid: int = 0,
        gid: int = 0,
        mtime: int = MTIME,
        xattrs: dict[str, str] | None = None,
    ) -> LayerBuilder:
        payload = data.encode() if isinstance(data, str) else data
        info = self._info(path, tarfile.REGTYPE, mode, uid, gid, mtime)
        info.size = len(payload)
        if xattrs:
            info.pax_headers = {f"SCHILY.xattr.{k}": v for k, v in xattrs.items()}
        self._entries.append((info, payload))
        return self

    def symlink(self, path: str, target: str, mtime: int = MTIME) -> LayerBuilder:
        info = self._info(path, tarfile.SYMTYPE, 0o777, 0, 0, mtime)
        info.linkname = target
        self._entries.append((info, None))
        return self

    def hardlink(self, path: str, target: str, mtime: int = MTIME) -> LayerBuilder:
        info = self._info(path, tarfile.LNKTYPE, 0o644, 0, 0, mtime)
        info.linkname = target
        self._entries.append((info, None))
        return self

    def device(
        self, path: str, major: int, minor: int, kind: Literal["char", "block"] = "char",
        mode: int = 0o666,
    ) -> LayerBuilder:
        tar_type = tarfile.CHRTYPE if kind == "char" else tarfile.BLKTYPE
        info = self._info(path, tar_type, mode, 0, 0, MTIME)
        info.devmajor, info.devminor = major, minor
        self._entries.append((info, None))
        return self

    def fifo(self, path: str, mode: int = 0o644) -> LayerBuilder:
        self._entries.append((self._info(path, tarfile.FIFOTYPE, mode, 0, 0, MTIME), None))
        return self

    def whiteout(self, path: str) -> LayerBuilder:
        """Delete ``path`` of a lower layer (an AUFS-style ``.wh.`` entry)."""
        parent, _, name = path.rstrip("/").rpartition("/")
        return self.file(f"{parent}/.wh.{name}" if parent else f".wh.{name}")

    def opaque(self, directory: str) -> LayerBuilder:
        """Hide everything lower layers have in ``directory``."""
        return self.file(f"{directory.rstrip('/')}/.wh..wh..opq")

    def raw(self, info: tarfile.TarInfo, data: bytes | None = None) -> LayerBuilder:
        """Any entry at all, including hostile ones; ``info.size`` is set from ``data``."""
        if data is not None:
            info.size = len(data)
        self._entries.append((info, data))
        return self

    def tar(self) -> bytes:
        out = io.BytesIO()
        with tarfile.open(fileobj=out, mode="w", format=tarfile.PAX_FORMAT) as archive:
            for info, data in self._entries:
                archive.addfile(info, io.BytesIO(data) if data is not None else None)
        return out.getvalue()


def busybox_applets() -> list[str]:
    out = subprocess.run([BUSYBOX, "--list"], check=True, capture_output=True, text=True).stdout
    return sorted({name for name in out.split() if name and name != "busybox"})


def busybox_rootfs() -> LayerBuilder:
    """The official busybox image's rootfs: /bin/busybox, its applet links, /etc, empty dirs."""
    layer = LayerBuilder()
    for directory in ("bin", "dev", "etc", "home", "proc", "sys", "usr", "usr/sbin", "var",
                      "var/spool", "var/spool/mail", "var/www"):
        layer.dir(directory)
    layer.dir("root", mode=0o700)
    layer.dir("tmp", mode=0o1777)
    with open(BUSYBOX, "rb") as binary:
        layer.file("bin/busybox", binary.read(), mode=0o755)
    for applet in busybox_applets():
        layer.hardlink(f"bin/{applet}", "bin/busybox")
    layer.file("etc/passwd", PASSWD)
    layer.file("etc/group", GROUP)
    layer.file("etc/hostname", "busybox\n")
    return layer


@dataclass(frozen=True)
class Layer:
    """One layer blob: compressed bytes, their media type, and the uncompressed tar's digest."""

    data: bytes
    media_type: str
    diff_id: str

    @property
    def digest(self) -> str:
        return sha256_digest(self.data)


def make_layer(
    source: LayerBuilder | bytes, compression: Compression = "gzip", fmt: Format = "oci"
) -> Layer:
    """Compress a layer tar (a builder, or raw tar bytes for broken archives)."""
    tar = source.tar() if isinstance(source, LayerBuilder) else source
    if compression == "gzip":
        data = gzip.compress(tar, compresslevel=6, mtime=0)
    elif compression == "zstd":
        data = zstandard.ZstdCompressor().compress(tar)
    else:
        data = tar
    return Layer(data, LAYER_TYPES[(fmt, compression)], sha256_digest(tar))


@dataclass
class ImageConfig:
    """What the image config says about how to run the image."""

    entrypoint: list[str] | None = None
    cmd: list[str] | None = field(default_factory=lambda: ["sh"])
    env: list[str] = field(default_factory=lambda: [DEFAULT_PATH])
    user: str = ""
    working_dir: str = ""
    stop_signal: str = ""
    labels: dict[str, str] = field(default_factory=dict)
    exposed_ports: list[str] = field(default_factory=list)
    volumes: list[str] = field(default_factory=list)


@dataclass(frozen=True)
class Image:
    """A built image: its manifest, config and layers, ready to push or save."""

    manifest: bytes
    media_type: str
    config: bytes
    config_media_type: str
    layers: list[Layer]
    platform: dict[str, str]

    @property
    def digest(self) -> str:
        return sha256_digest(self.manifest)

    @property
    def id(self) -> str:
        """The image id crisp (and containerd) report: the config's digest."""
        return sha256_digest(self.config)

    def blobs(self) -> dict[str, bytes]:
        blobs = {layer.digest: layer.data for layer in self.layers}
        blobs[self.id] = self.config
        return blobs


@dataclass(frozen=True)
class Index:
    """A multi-platform image: an OCI index or Docker manifest list of images."""

    manifest: bytes
    media_type: str
    images: list[Image]

    @property
    def digest(self) -> str:
        return sha256_digest(self.manifest)

    def blobs(self) -> dict[str, bytes]:
        blobs: dict[str, bytes] = {}
        for image in self.images:
            blobs.update(image.blobs())
        return blobs


def build_image(
    layers: Iterable[Layer],
    config: ImageConfig | None = None,
    *,
    fmt: Format = "oci",
    platform_: dict[str, str] | None = None,
    created: str = "2023-11-14T22:13:20Z",
) -> Image:
    """An image of ``layers`` (bottom first) with ``config``, for this host's platform."""
    layers = list(layers)
    config = config or ImageConfig()
    plat = dict(platform_ or host_platform())
    container_config: dict[str, Any] = {"Env": config.env}
    if config.entrypoint is not None:
        container_config["Entrypoint"] = config.entrypoint
    if config.cmd is not None:
        container_config["Cmd"] = config.cmd
    if config.user:
        container_config["User"] = config.user
    if config.working_dir:
        container_config["WorkingDir"] = config.working_dir
    if config.stop_signal:
        container_config["StopSignal"] = config.stop_signal
    if config.labels:
        container_config["Labels"] = config.labels
    if config.exposed_ports:
        container_config["ExposedPorts"] = {port: {} for port in config.exposed_ports}
    if config.volumes:
        container_config["Volumes"] = {volume: {} for volume in config.volumes}
    config_doc: dict[str, Any] = {
        "created": created,
        "architecture": plat["architecture"],
        "os": plat["os"],
        "config": container_config,
        "rootfs": {"type": "layers", "diff_ids": [layer.diff_id for layer in layers]},
        "history": [{"created": created, "created_by": "crisp tests"} for _ in layers],
    }
    if "variant" in plat:
        config_doc["variant"] = plat["variant"]
    config_bytes = json.dumps(config_doc, sort_keys=True).encode()
    manifest_type = OCI_MANIFEST if fmt == "oci" else DOCKER_MANIFEST
    config_type = OCI_CONFIG if fmt == "oci" else DOCKER_CONFIG
    manifest_doc = {
        "schemaVersion": 2,
        "mediaType": manifest_type,
        "config": {
            "mediaType": config_type,
            "digest": sha256_digest(config_bytes),
            "size": len(config_bytes),
        },
        "layers": [
            {"mediaType": layer.media_type, "digest": layer.digest, "size": len(layer.data)}
            for layer in layers
        ],
    }
    manifest = json.dumps(manifest_doc, indent=2).encode()
    return Image(manifest, manifest_type, config_bytes, config_type, layers, plat)


def build_index(images: Iterable[Image], *, fmt: Format = "oci") -> Index:
    images = list(images)
    media_type = OCI_INDEX if fmt == "oci" else DOCKER_LIST
    doc = {
        "schemaVersion": 2,
        "mediaType": media_type,
        "manifests": [
            {
                "mediaType": image.media_type,
                "digest": image.digest,
                "size": len(image.manifest),
                "platform": image.platform,
            }
            for image in images
        ],
    }
    return Index(json.dumps(doc, indent=2).encode(), media_type, images)


def busybox_image(config: ImageConfig | None = None, *, fmt: Format = "oci",
                  compression: Compression = "gzip") -> Image:
    """The standard one-layer busybox image."""
    return build_image([make_layer(busybox_rootfs(), compression, fmt)], config, fmt=fmt)


class RegistryPusher:
    """Uploads blobs and manifests with plain urllib, answering basic and bearer challenges."""

    def __init__(self, base_url: str, username: str | None = None, password: str | None = None):
        self.base_url = base_url.rstrip("/")
        self.username = username
        self.password = password
        self._authorization: dict[str, str] = {}  # repository -> Authorization header

    def _basic(self) -> str:
        raw = f"{self.username}:{self.password}".encode()
        return "Basic " + base64.b64encode(raw).decode()

    def _answer(self, challenge: str, repository: str) -> str:
        scheme, _, params = challenge.partition(" ")
        if scheme.lower() == "basic":
            return self._basic()
        fields = dict(
            (k.strip(), v.strip().strip('"'))
            for k, _, v in (p.partition("=") for p in params.split(","))
        )
        query = {"service": fields.get("service", ""),
                 "scope": f"repository:{repository}:pull,push"}
        request = urllib.request.Request(fields["realm"] + "?" + urllib.parse.urlencode(query))
        if self.username is not None:
            request.add_header("Authorization", self._basic())
        with urllib.request.urlopen(request, timeout=10) as response:
            body = json.load(response)
        return "Bearer " + (body.get("token") or body["access_token"])

    def request(
        self, method: str, url: str, repository: str, data: bytes | None = None,
        headers: dict[str, str] | None = None,
    ) -> tuple[int, dict[str, str], bytes]:
        if not url.startswith("http"):
            url = self.base_url + url
        for attempt in range(2):
            request = urllib.request.Request(url, data=data, method=method,
                                             headers=dict(headers or {}))
            if repository in self._authorization:
                request.add_header("Authorization", self._authorization[repository])
            try:
                with urllib.request.urlopen(request, timeout=30) as response:
                    return response.status, dict(response.headers), response.read()
            except urllib.error.HTTPError as error:
                if error.code == 401 and attempt == 0:
                    challenge = error.headers.get("WWW-Authenticate", "")
                    self._authorization[repository] = self._answer(challenge, repository)
                    continue
                if error.code == 404 and method == "HEAD":
                    return 404, dict(error.headers), b""
                raise RuntimeError(
                    f"{method} {url}: {error.code} {error.read().decode(errors='replace')}"
                ) from error
        raise AssertionError("unreachable")

    def push_blob(self, repository: str, digest: str, data: bytes) -> None:
        status, _, _ = self.request("HEAD", f"/v2/{repository}/blobs/{digest}", repository)
        if status == 200:
            return
        _, headers, _ = self.request("POST", f"/v2/{repository}/blobs/uploads/", repository,
                                     data=b"")
        location = headers["Location"]
        if not location.startswith("http"):
            location = self.base_url + location
        separator = "&" if "?" in location else "?"
        self.request(
            "PUT", f"{location}{separator}digest={urllib.parse.quote(digest)}", repository,
            data=data, headers={"Content-Type": "application/octet-stream"},
        )

    def push_manifest(self, repository: str, reference: str, manifest: bytes,
                      media_type: str) -> None:
        self.request("PUT", f"/v2/{repository}/manifests/{reference}", repository,
                     data=manifest, headers={"Content-Type": media_type})

    def push(self, repository: str, tag: str | None, image: Image | Index) -> str:
        """Upload every blob and manifest of ``image``; tag it if ``tag``; return its digest."""
        for digest, data in image.blobs().items():
            self.push_blob(repository, digest, data)
        if isinstance(image, Index):
            for child in image.images:
                self.push_manifest(repository, child.digest, child.manifest, child.media_type)
        self.push_manifest(repository, tag or image.digest, image.manifest, image.media_type)
        return image.digest


def push_image(registry_url: str, repository: str, tag: str | None, image: Image | Index,
               username: str | None = None, password: str | None = None) -> str:
    """Push ``image`` as ``repository:tag`` (or by digest only); return its manifest digest."""
    return RegistryPusher(registry_url, username, password).push(repository, tag, image)


def tar_bytes(files: dict[str, bytes]) -> bytes:
    """An uncompressed tar of regular files, in the order given (for hand-made archives)."""
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w") as tar:
        for name, data in files.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return out.getvalue()


def docker_save_archive(image: Image, tags: list[str], *, uncompress: bool = False) -> bytes:
    """A docker-save archive of ``image``: <n>/layer.tar per layer, <hex>.json config and
    manifest.json. ``uncompress`` stores gzip layers uncompressed, as old docker save did."""
    files: dict[str, bytes] = {}
    layers = []
    for number, layer in enumerate(image.layers):
        layers.append(f"{number:064x}/layer.tar")
        files[layers[-1]] = gzip.decompress(layer.data) if uncompress else layer.data
    config = image.id.removeprefix("sha256:") + ".json"
    files[config] = image.config
    files["manifest.json"] = json.dumps(
        [{"Config": config, "RepoTags": tags, "Layers": layers}]).encode()
    return tar_bytes(files)
