"""Unpacking layer archives: metadata, whiteouts, compression, and hostile archives.

These run as root (owners, device nodes and trusted.* xattrs need it), like the daemon.
"""

from __future__ import annotations

import gzip
import io
import os
import stat
import tarfile
from pathlib import Path

import pytest

from crisp.filemodes import DAEMON_UMASK
from crisp.storage.unpack import OPAQUE_XATTR, UnsafeLayer, unpack_layer
from tests.support.image_builder import MTIME, LayerBuilder, make_layer

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="unpacking layers needs root")


def unpack(tmp_path: Path, layer: LayerBuilder | bytes, compression: str = "gzip") -> Path:
    built = make_layer(layer, compression)  # type: ignore[arg-type]
    blob = tmp_path / "blob"
    blob.write_bytes(built.data)
    target = tmp_path / "layer"
    target.mkdir()
    result = unpack_layer(blob, target, built.diff_id)
    assert result.diff_id == built.diff_id
    return target


@pytest.mark.parametrize("compression", ["gzip", "zstd", "none"])
def test_files_keep_content_and_metadata(tmp_path: Path, compression: str) -> None:
    layer = (LayerBuilder()
             .dir("etc", mode=0o750, uid=1, gid=2, mtime=1000)
             .file("etc/conf", "hello", mode=0o640, uid=33, gid=44, mtime=2000,
                   xattrs={"user.note": "kept"})
             .file("bin/tool", b"\x7fELF", mode=0o4755)
             .symlink("etc/link", "/etc/conf", mtime=3000)
             .hardlink("etc/hard", "etc/conf")
             .device("dev/null", 1, 3)
             .device("dev/loop0", 7, 0, kind="block")
             .fifo("run/pipe"))
    root = unpack(tmp_path, layer, compression)
    conf = root / "etc" / "conf"
    assert conf.read_text() == "hello"
    st = conf.lstat()
    assert (stat.S_IMODE(st.st_mode), st.st_uid, st.st_gid) == (0o640, 33, 44)
    assert int(st.st_mtime) == 2000
    assert os.getxattr(conf, "user.note") == b"kept"
    assert stat.S_IMODE((root / "bin" / "tool").stat().st_mode) == 0o4755
    etc = (root / "etc").stat()
    assert (stat.S_IMODE(etc.st_mode), etc.st_uid, etc.st_gid) == (0o750, 1, 2)
    assert int(etc.st_mtime) == 1000  # set after its children were made
    link = root / "etc" / "link"
    assert os.readlink(link) == "/etc/conf"
    assert int(link.lstat().st_mtime) == 3000
    assert (root / "etc" / "hard").stat().st_ino == st.st_ino
    null = (root / "dev" / "null").lstat()
    assert stat.S_ISCHR(null.st_mode) and os.major(null.st_rdev) == 1
    assert stat.S_ISBLK((root / "dev" / "loop0").lstat().st_mode)
    assert stat.S_ISFIFO((root / "run" / "pipe").lstat().st_mode)


def test_modes_are_the_archive_s_under_the_daemon_s_private_umask(tmp_path: Path) -> None:
    """The daemon runs under umask 077; a layer must unpack as it would under any umask."""
    layer = (LayerBuilder()
             .file("usr/lib/implied/data", "x", mode=0o644)  # parents only implied
             .dir("opt", mode=0o755)
             .file("opt/tool", b"x", mode=0o755)
             .device("dev/null", 1, 3, mode=0o666)
             .fifo("run/pipe", mode=0o644))
    previous = os.umask(DAEMON_UMASK)
    try:
        root = unpack(tmp_path, layer, "none")
    finally:
        os.umask(previous)
    modes = {path: stat.S_IMODE((root / path).lstat().st_mode)
             for path in ("usr", "usr/lib", "usr/lib/implied", "usr/lib/implied/data", "opt",
                          "opt/tool", "dev", "dev/null", "run/pipe")}
    assert modes == {"usr": 0o755, "usr/lib": 0o755, "usr/lib/implied": 0o755,
                     "usr/lib/implied/data": 0o644, "opt": 0o755, "opt/tool": 0o755,
                     "dev": 0o755, "dev/null": 0o666, "run/pipe": 0o644}


def test_whiteouts_become_overlay_whiteouts(tmp_path: Path) -> None:
    layer = LayerBuilder().dir("a").whiteout("a/gone").opaque("b").file("b/new", "x")
    root = unpack(tmp_path, layer)
    gone = (root / "a" / "gone").lstat()
    assert stat.S_ISCHR(gone.st_mode) and gone.st_rdev == os.makedev(0, 0)
    assert not (root / "a" / ".wh.gone").exists()
    assert os.getxattr(root / "b", OPAQUE_XATTR) == b"y"
    assert not (root / "b" / ".wh..wh..opq").exists()
    assert (root / "b" / "new").read_text() == "x"


def test_overlay_xattrs_in_the_archive_are_dropped(tmp_path: Path) -> None:
    layer = LayerBuilder().file("f", "x", xattrs={"trusted.overlay.opaque": "y"})
    root = unpack(tmp_path, layer)
    assert "trusted.overlay.opaque" not in os.listxattr(root / "f")


def test_later_entries_replace_earlier_ones(tmp_path: Path) -> None:
    layer = LayerBuilder().file("x", "first").file("x", "second").dir("d").file("d/f").file("d")
    root = unpack(tmp_path, layer)
    assert (root / "x").read_text() == "second"
    assert (root / "d").is_file()


def test_absolute_names_stay_inside(tmp_path: Path) -> None:
    info = tarfile.TarInfo("/etc/abs")
    root = unpack(tmp_path, LayerBuilder().raw(info, b"inside"))
    assert (root / "etc" / "abs").read_text() == "inside"


def hostile(tmp_path: Path, layer: LayerBuilder) -> None:
    built = make_layer(layer)
    blob = tmp_path / "blob"
    blob.write_bytes(built.data)
    target = tmp_path / "layer"
    target.mkdir()
    with pytest.raises(UnsafeLayer):
        unpack_layer(blob, target, built.diff_id)


def test_dotdot_is_refused(tmp_path: Path) -> None:
    hostile(tmp_path, LayerBuilder().raw(tarfile.TarInfo("../escape"), b"x"))
    assert not (tmp_path / "escape").exists()


def test_writing_through_a_symlink_is_refused(tmp_path: Path) -> None:
    outside = tmp_path / "outside"
    outside.mkdir()
    hostile(tmp_path, LayerBuilder().symlink("evil", str(outside)).file("evil/pwned", "x"))
    assert not (outside / "pwned").exists()


def test_relative_symlink_escape_is_refused(tmp_path: Path) -> None:
    hostile(tmp_path, LayerBuilder().symlink("up", "../..").file("up/pwned", "x"))
    assert not (tmp_path / "pwned").exists()


def test_hardlink_outside_is_refused(tmp_path: Path) -> None:
    secret = tmp_path / "secret"
    secret.write_text("s")
    hostile(tmp_path, LayerBuilder().hardlink("steal", "../secret"))
    hostile_dir = tmp_path / "h"
    hostile_dir.mkdir()
    hostile(hostile_dir, LayerBuilder().hardlink("steal", str(secret)))


def test_hardlink_through_symlink_is_refused(tmp_path: Path) -> None:
    (tmp_path / "secret").write_text("s")
    hostile(tmp_path, LayerBuilder().symlink("l", "..").hardlink("steal", "l/secret"))


def test_whiteout_with_dotdot_is_refused(tmp_path: Path) -> None:
    hostile(tmp_path, LayerBuilder().raw(tarfile.TarInfo("../.wh.victim"), b""))


def test_truncated_archive_fails_cleanly(tmp_path: Path) -> None:
    tar = LayerBuilder().file("big", os.urandom(200_000)).tar()
    blob = tmp_path / "blob"
    blob.write_bytes(gzip.compress(tar)[:50_000])
    target = tmp_path / "layer"
    target.mkdir()
    with pytest.raises(UnsafeLayer, match="truncated or corrupt"):
        unpack_layer(blob, target)


def test_garbage_fails_cleanly(tmp_path: Path) -> None:
    blob = tmp_path / "blob"
    blob.write_bytes(b"\x1f\x8b" + os.urandom(4000))
    target = tmp_path / "layer"
    target.mkdir()
    with pytest.raises(UnsafeLayer):
        unpack_layer(blob, target)


def test_diff_id_mismatch_is_refused(tmp_path: Path) -> None:
    built = make_layer(LayerBuilder().file("f", "x"))
    blob = tmp_path / "blob"
    blob.write_bytes(built.data)
    target = tmp_path / "layer"
    target.mkdir()
    with pytest.raises(UnsafeLayer, match="image config says"):
        unpack_layer(blob, target, "sha256:" + "0" * 64)


def test_root_entry_and_mtime_default(tmp_path: Path) -> None:
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w") as archive:
        root_info = tarfile.TarInfo("./")
        root_info.type = tarfile.DIRTYPE
        root_info.mode = 0o755
        archive.addfile(root_info)
        info = tarfile.TarInfo("./file")
        info.mtime = MTIME
        archive.addfile(info, io.BytesIO(b""))
    root = unpack(tmp_path, out.getvalue(), "none")
    assert (root / "file").exists()


@pytest.mark.parametrize(("layer", "reason"), [
    (LayerBuilder().file("n" * 300, "x"), "File name too long"),
    (LayerBuilder().file("/".join(["d" * 200] * 21) + "/f", "x"), "File name too long"),
    (LayerBuilder().file("f", "x", xattrs={"security.capability": "not a capability"}),
     "Invalid argument"),
])
def test_entries_the_kernel_refuses_are_refused_as_unsafe_layers(
        tmp_path: Path, layer: LayerBuilder, reason: str) -> None:
    with pytest.raises(UnsafeLayer, match=f"layer entry .* cannot be unpacked: {reason}"):
        unpack(tmp_path, layer)


def unpack_blob(tmp_path: Path, data: bytes | io.RawIOBase, diff_id: str | None = None) -> Path:
    target = tmp_path / "layer"
    target.mkdir()
    if isinstance(data, bytes):
        blob = tmp_path / "blob"
        blob.write_bytes(data)
        unpack_layer(blob, target, diff_id)
    else:
        unpack_layer(data, target, diff_id)
    return target


def big_text_layer() -> tuple[bytes, str]:
    layer = make_layer(LayerBuilder().file("a/text", b"line of text\n" * 400_000)
                       .file("a/random", os.urandom(3 << 20)), "none")
    return layer.data, layer.diff_id


def test_gzip_of_several_members_and_zero_padding(tmp_path: Path) -> None:
    tar, diff_id = big_text_layer()
    cut = 1_234_567  # members may split the tar anywhere, even inside a file
    blob = gzip.compress(tar[:cut]) + gzip.compress(tar[cut:]) + b"\0" * 1000
    root = unpack_blob(tmp_path, blob, diff_id)
    assert (root / "a" / "text").read_bytes() == b"line of text\n" * 400_000


@pytest.mark.parametrize("where", ["crc", "length"])
def test_gzip_trailer_that_does_not_match_is_refused(tmp_path: Path, where: str) -> None:
    tar, _ = big_text_layer()
    blob = bytearray(gzip.compress(tar))
    blob[-8 if where == "crc" else -2] ^= 0x55  # the CRC-32 and the length of the trailer
    with pytest.raises(UnsafeLayer, match="truncated or corrupt"):
        unpack_blob(tmp_path, bytes(blob))


def test_gzip_with_garbage_after_a_member_is_refused(tmp_path: Path) -> None:
    tar, _ = big_text_layer()
    with pytest.raises(UnsafeLayer, match="truncated or corrupt"):
        unpack_blob(tmp_path, gzip.compress(tar) + b"not gzip at all")


class Trickle(io.RawIOBase):
    """A stream that cannot seek and gives few bytes per read, as a slow download does."""

    def __init__(self, data: bytes, step: int):
        self.data = memoryview(data)
        self.step = step

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: memoryview) -> int:  # type: ignore[override]
        n = min(len(buffer), self.step, len(self.data))
        buffer[:n] = self.data[:n]
        self.data = self.data[n:]
        return n


@pytest.mark.parametrize("compression", ["gzip", "zstd", "none"])
def test_unpack_from_a_stream_that_trickles(tmp_path: Path, compression: str) -> None:
    built = make_layer(LayerBuilder().file("etc/conf", "hello" * 10_000, mode=0o640)
                       .whiteout("etc/gone"), compression)  # type: ignore[arg-type]
    root = unpack_blob(tmp_path, Trickle(built.data, 3), built.diff_id)
    assert (root / "etc" / "conf").read_text() == "hello" * 10_000
    assert stat.S_ISCHR((root / "etc" / "gone").lstat().st_mode)


def test_written_is_called_before_the_end_of_the_stream(tmp_path: Path) -> None:
    """The layer's sync runs while the end of a download (its verification) is awaited."""
    built = make_layer(LayerBuilder().file("etc/conf", "hello" * 10_000), "gzip")
    calls: list[str] = []

    class EndWatcher(Trickle):
        def readinto(self, buffer: memoryview) -> int:  # type: ignore[override]
            n = super().readinto(buffer)
            if n == 0:
                calls.append("end of stream")
            return n

    def written() -> None:
        assert (tmp_path / "layer" / "etc" / "conf").read_text() == "hello" * 10_000
        calls.append("written")

    target = tmp_path / "layer"
    target.mkdir()
    unpack_layer(EndWatcher(built.data, 1 << 20), target, built.diff_id, written=written)
    assert calls[0] == "written" and "end of stream" in calls
