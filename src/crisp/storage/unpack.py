"""Unpacking one layer archive into an overlay layer directory, safely.

A layer is a tar (gzip, zstd or uncompressed) whose AUFS-style whiteouts become overlayfs
ones: ``.wh.NAME`` a 0/0 character device, ``.wh..wh..opq`` the ``trusted.overlay.opaque``
xattr on its directory. The archive is hostile until proven otherwise: entries that climb out
with ``..``, write through a symlink, or hard-link to anything outside the layer are refused;
absolute names are taken relative to the layer root. The target directory must start empty
and nobody else writes to it while we unpack, so a set of the symlinks we made is enough to
know that no parent on the way is one.

Everything here blocks; callers run it in a worker thread.
"""

from __future__ import annotations

import contextlib
import errno
import gzip
import hashlib
import io
import os
import shutil
import stat
import sys
import tarfile
import zlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import IO, BinaryIO, cast

from crisp.errors import InvalidArgument
from crisp.filemodes import PUBLIC_DIR

WHITEOUT_PREFIX = ".wh."
OPAQUE_MARKER = ".wh..wh..opq"
OPAQUE_XATTR = "trusted.overlay.opaque"
_CHUNK = 1 << 20
_GZIP_MAGIC = b"\x1f\x8b"
_ZSTD_MAGIC = b"\x28\xb5\x2f\xfd"


class UnsafeLayer(InvalidArgument):
    """The archive tries to write outside its layer directory, or is not a valid layer."""


@dataclass(frozen=True)
class UnpackResult:
    """What unpacking found: the uncompressed tar's digest (the diff id) and the layer's size."""

    diff_id: str
    size: int
    inodes: int


class _HashingReader(io.RawIOBase):
    """Passes a stream through while hashing and counting it (the diff id is of the raw tar)."""

    def __init__(self, source: IO[bytes]):
        self._source = source
        self.hash = hashlib.sha256()
        self.count = 0

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: memoryview) -> int:  # type: ignore[override]
        n: int = self._source.readinto(buffer)  # type: ignore[attr-defined]
        self.hash.update(memoryview(buffer)[:n])
        self.count += n
        return n


class _Prefixed(io.RawIOBase):
    """A stream whose first bytes were read already (to sniff the compression) and go first."""

    def __init__(self, head: bytes, rest: IO[bytes]):
        self._head = head
        self._rest = rest

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: memoryview) -> int:  # type: ignore[override]
        if self._head:
            n = min(len(buffer), len(self._head))
            buffer[:n] = self._head[:n]
            self._head = self._head[n:]
            return n
        return self._rest.readinto(buffer)  # type: ignore[attr-defined, no-any-return]


class _Gunzip(io.RawIOBase):
    """gzip decompression in big steps, for one or more concatenated members.

    zlib itself checks each member's CRC-32 and length (wbits 31). The gzip module feeds
    zlib 8 KiB at a time (Python 3.11), and each call hands the GIL over twice: with the
    download's threads and the event loop busy, every handover can wait a switch interval,
    and a layer that unpacks in 0.1 s alone took over a second. A megabyte per call avoids
    that convoy. Output per call is bounded, so a small bomb cannot fill memory.
    """

    def __init__(self, source: IO[bytes]):
        self._source = source
        self._zlib = zlib.decompressobj(31)
        self._input = b""  # compressed bytes read but not yet given to zlib

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: memoryview) -> int:  # type: ignore[override]
        while True:
            if self._zlib.eof:  # a member ended: another may follow, or zero padding
                self._input = self._zlib.unused_data.lstrip(b"\0")
                while not self._input:
                    more = self._source.read(_CHUNK)
                    if not more:
                        return 0
                    self._input = more.lstrip(b"\0")
                self._zlib = zlib.decompressobj(31)
            data = self._zlib.unconsumed_tail or self._input or self._source.read(_CHUNK)
            self._input = b""
            if not data:
                raise EOFError("the gzip stream ended before its end-of-stream marker")
            out = self._zlib.decompress(data, len(buffer))
            if out:
                n = len(out)
                buffer[:n] = out
                return n


def open_decompressed(blob: BinaryIO) -> IO[bytes]:
    """The uncompressed tar stream of a layer blob, whatever its compression (by magic bytes).

    A stream that cannot seek (a download still arriving) is sniffed by reading ahead."""
    if blob.seekable():
        head = blob.read(4)
        blob.seek(0)
    else:
        head = b""
        while len(head) < 4 and (more := blob.read(4 - len(head))):
            head += more
        blob = cast(BinaryIO, _Prefixed(head, blob))
    if head.startswith(_GZIP_MAGIC):
        return cast(IO[bytes], _Gunzip(blob))
    if head == _ZSTD_MAGIC:
        import zstandard  # only zstd layers need it

        reader: IO[bytes] = zstandard.ZstdDecompressor().stream_reader(
            blob, read_across_frames=True, read_size=_CHUNK
        )
        return reader
    return blob


def _is_zstd_error(error: Exception) -> bool:
    zstandard = sys.modules.get("zstandard")  # loaded only if a zstd layer was opened
    return zstandard is not None and isinstance(error, zstandard.ZstdError)


def unpack_layer(
    source: Path | io.RawIOBase, target: Path, expected_diff_id: str | None = None,
    written: Callable[[], None] | None = None,
) -> UnpackResult:
    """Unpack the layer blob at ``source`` (a path, or a stream the caller closes) into the
    empty directory ``target``.

    ``written`` is called once every file is written and only the end of the stream is left
    to read (for a download: its verification), so that the caller's sync overlaps it.

    Raises UnsafeLayer for hostile or broken archives, and when ``expected_diff_id`` does not
    match the uncompressed content. The caller removes ``target`` on failure.
    """
    with contextlib.ExitStack() as stack:
        blob = (stack.enter_context(open(source, "rb")) if isinstance(source, Path)
                else cast(BinaryIO, source))
        stream = open_decompressed(blob)
        hashing = _HashingReader(stream)
        buffered = io.BufferedReader(hashing, buffer_size=_CHUNK)
        unpacker = _Unpacker(target)
        try:
            with tarfile.open(fileobj=buffered, mode="r|", errorlevel=2) as archive:
                for member in archive:
                    _add_entry(unpacker, member, archive)
            unpacker.finish()
            if written is not None:
                written()
            # the tar's end-of-archive padding belongs to the diff id too
            while buffered.read(_CHUNK):
                pass
        except UnsafeLayer:
            raise
        except (tarfile.TarError, EOFError, zlib.error, gzip.BadGzipFile) as e:
            raise UnsafeLayer(f"layer archive is truncated or corrupt: {e}") from e
        except Exception as e:
            if not _is_zstd_error(e):
                raise
            raise UnsafeLayer(f"layer archive is truncated or corrupt: {e}") from e
    diff_id = "sha256:" + hashing.hash.hexdigest()
    if expected_diff_id is not None and diff_id != expected_diff_id:
        raise UnsafeLayer(
            f"layer content has digest {diff_id} but the image config says {expected_diff_id}"
        )
    return UnpackResult(diff_id, unpacker.size, unpacker.inodes)


# What the kernel answers for an entry no filesystem could hold: a name or path too long, an
# xattr value it refuses (a malformed security.capability), a name it cannot encode.
_REFUSED_BY_KERNEL = frozenset({
    errno.ENAMETOOLONG, errno.EINVAL, errno.ERANGE, errno.E2BIG, errno.EILSEQ,
    errno.EOPNOTSUPP, errno.ELOOP,
})


def _add_entry(unpacker: _Unpacker, member: tarfile.TarInfo, archive: tarfile.TarFile) -> None:
    try:
        unpacker.add(member, archive)
    except OSError as error:
        if error.errno not in _REFUSED_BY_KERNEL:
            raise
        raise UnsafeLayer(
            f"layer entry {member.name[:200]!r} cannot be unpacked: {error.strerror}"
        ) from error


def _clean_name(raw: str, what: str) -> str:
    """The entry name relative to the layer root, or UnsafeLayer if it climbs out."""
    parts = [part for part in raw.replace("\\", "/").split("/") if part not in ("", ".")]
    if ".." in parts:
        raise UnsafeLayer(f"layer {what} {raw!r} refers outside the layer with '..'")
    return "/".join(parts)


class _Unpacker:
    def __init__(self, root: Path):
        self.root = str(root)
        self.symlinks: set[str] = set()
        self.dirs: set[str] = {""}
        self.created: set[str] = set()  # non-directories made so far (the target starts empty)
        self.setgid_dirs: set[str] = set()
        self.as_root = os.geteuid() == 0
        self.dir_times: list[tuple[str, int]] = []
        self.size = 0
        self.inodes = 0

    def _path(self, name: str) -> str:
        return f"{self.root}/{name}" if name else self.root

    def _check_parents(self, name: str, raw: str) -> None:
        parent = name
        while "/" in parent:
            parent = parent.rsplit("/", 1)[0]
            if parent in self.symlinks:
                raise UnsafeLayer(
                    f"layer entry {raw!r} would be written through the symlink {parent!r}"
                )

    def _ensure_parent(self, name: str) -> None:
        parent = name.rsplit("/", 1)[0] if "/" in name else ""
        if parent in self.dirs:
            return
        self._ensure_parent(parent)
        try:
            os.mkdir(self._path(parent), PUBLIC_DIR)
            # a directory the archive only implies is 0755, whatever the daemon's umask
            os.chmod(self._path(parent), PUBLIC_DIR)
            self.inodes += 1
        except FileExistsError:
            if not stat.S_ISDIR(os.lstat(self._path(parent)).st_mode):
                raise UnsafeLayer(
                    f"layer puts entries under {parent!r}, which is not a directory"
                ) from None
        self.dirs.add(parent)

    def _replace(self, name: str) -> None:
        """Remove whatever an earlier entry of this archive put at ``name``."""
        path = self._path(name)
        if name in self.dirs:
            shutil.rmtree(path)
            prefix = name + "/"
            self.dirs = {d for d in self.dirs if d != name and not d.startswith(prefix)}
            self.symlinks = {s for s in self.symlinks if not s.startswith(prefix)}
            self.created = {c for c in self.created if not c.startswith(prefix)}
        elif name in self.created:
            os.unlink(path)
            self.symlinks.discard(name)
            self.created.discard(name)

    def add(self, member: tarfile.TarInfo, archive: tarfile.TarFile) -> None:
        name = _clean_name(member.name, "entry")
        self._check_parents(name, member.name)
        base = name.rsplit("/", 1)[-1]
        if not name:
            if member.isdir():
                self._apply_metadata(self.root, member, is_dir=True)
                self.dir_times.append((self.root, int(member.mtime)))
                if member.mode & stat.S_ISGID:
                    self.setgid_dirs.add("")
            return
        if base.startswith(WHITEOUT_PREFIX):
            self._whiteout(name, base)
            return
        self._ensure_parent(name)
        path = self._path(name)
        if member.isdir():
            if name not in self.dirs:
                self._replace(name)
                os.mkdir(path, 0o700)
                self.inodes += 1
            self.dirs.add(name)
            self._apply_metadata(path, member, is_dir=True)
            if member.mode & stat.S_ISGID:
                self.setgid_dirs.add(name)
            self.dir_times.append((path, int(member.mtime)))
            return
        self._replace(name)
        self.created.add(name)
        self.inodes += 1
        if member.isreg():
            parent = name.rsplit("/", 1)[0] if "/" in name else ""
            self._write_file(path, member, archive, parent in self.setgid_dirs)
        elif member.issym():
            os.symlink(member.linkname, path)
            self.symlinks.add(name)
            self._apply_metadata(path, member, is_dir=False, follow=False)
        elif member.islnk():
            target = _clean_name(member.linkname, "hard link target")
            self._check_parents(target, member.linkname)
            target_path = self._path(target)
            if not target or not os.path.lexists(target_path) or os.path.isdir(target_path):
                raise UnsafeLayer(
                    f"layer hard link {member.name!r} points to {member.linkname!r}, which is not "
                    "a file earlier in the same layer"
                )
            os.link(target_path, path, follow_symlinks=False)
            if target in self.symlinks:
                self.symlinks.add(name)
        elif member.ischr() or member.isblk():
            kind = stat.S_IFCHR if member.ischr() else stat.S_IFBLK
            os.mknod(path, kind | 0o600, os.makedev(member.devmajor, member.devminor))
            self._apply_metadata(path, member, is_dir=False)
        elif member.isfifo():
            os.mkfifo(path, 0o600)
            self._apply_metadata(path, member, is_dir=False)
        else:
            raise UnsafeLayer(
                f"layer entry {member.name!r} has unsupported tar type {member.type!r}"
            )

    def _write_file(self, path: str, member: tarfile.TarInfo, archive: tarfile.TarFile,
                    in_setgid_dir: bool) -> None:
        source = archive.extractfile(member)
        flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
        fd = os.open(path, flags, 0o600)
        try:
            if source is not None:
                remaining = member.size
                while remaining > 0:
                    data = source.read(min(_CHUNK, remaining))
                    if not data:
                        raise UnsafeLayer(f"layer archive ends inside {member.name!r}")
                    os.write(fd, data)
                    remaining -= len(data)
            self.size += member.size
            self._apply_fd_metadata(fd, member, in_setgid_dir)
        finally:
            os.close(fd)

    def _apply_fd_metadata(self, fd: int, member: tarfile.TarInfo, in_setgid_dir: bool) -> None:
        # a file root creates is root's already, unless a setgid parent gave it its group
        if not (self.as_root and member.uid == 0 and member.gid == 0 and not in_setgid_dir):
            os.fchown(fd, member.uid, member.gid)
        os.fchmod(fd, stat.S_IMODE(member.mode))
        for key, value in _xattrs(member):
            os.setxattr(fd, key, value)
        mtime_ns = int(member.mtime * 1_000_000_000)
        os.utime(fd, ns=(mtime_ns, mtime_ns))

    def _apply_metadata(self, path: str, member: tarfile.TarInfo, *, is_dir: bool,
                        follow: bool = True) -> None:
        os.chown(path, member.uid, member.gid, follow_symlinks=False)
        if follow:
            os.chmod(path, stat.S_IMODE(member.mode))
            for key, value in _xattrs(member):
                os.setxattr(path, key, value)
        if not is_dir:
            mtime_ns = int(member.mtime * 1_000_000_000)
            os.utime(path, ns=(mtime_ns, mtime_ns), follow_symlinks=False)

    def _whiteout(self, name: str, base: str) -> None:
        parent = name.rsplit("/", 1)[0] if "/" in name else ""
        if base == OPAQUE_MARKER:
            self._ensure_parent(name)
            os.setxattr(self._path(parent), OPAQUE_XATTR, b"y")
            return
        hidden = base[len(WHITEOUT_PREFIX):]
        if not hidden or hidden in (".", ".."):
            raise UnsafeLayer(f"layer whiteout {name!r} names nothing")
        target = f"{parent}/{hidden}" if parent else hidden
        self._ensure_parent(target)
        self._replace(target)
        os.mknod(self._path(target), stat.S_IFCHR | 0o600, os.makedev(0, 0))
        self.created.add(target)
        self.inodes += 1

    def finish(self) -> None:
        """Set directory times last: creating their children changed them."""
        for path, mtime in reversed(self.dir_times):
            os.utime(path, (mtime, mtime), follow_symlinks=False)


def _xattrs(member: tarfile.TarInfo) -> list[tuple[str, bytes]]:
    result = []
    for key, value in member.pax_headers.items():
        if not key.startswith("SCHILY.xattr."):
            continue
        name = key[len("SCHILY.xattr."):]
        if name.startswith("trusted.overlay."):
            continue  # overlay's own markers come only from whiteouts we translate
        result.append((name, value.encode("utf-8", "surrogateescape")))
    return result

