"""``crispctl`` image commands: images, pull, rmi, inspecti, and images import/export.

Import and export stream archives over crisp's extension service (crisp.images.v1) on the
CRI socket: the client reads the archive or directory and sends the bytes; only the daemon
writes crisp's store. See docs/images.md.
"""

from __future__ import annotations

import argparse
import fnmatch
import os
import re
import sys
import tarfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc

from crisp.api import cri_pb2, cri_pb2_grpc, crisp_images_pb2, crisp_images_pb2_grpc
from crisp.cli.output import (
    UsageError,
    add_output_option,
    describe,
    emit,
    to_dict,
    with_info,
)
from crisp.cli.pull_progress import show_pull
from crisp.cli.tracing import open_channel

CHUNK = 1 << 20


def add_image_commands(commands: Any) -> None:
    """Add the image commands to crispctl's subparsers (``parser.add_subparsers()``)."""
    images = commands.add_parser("images", help="list images, or import/export archives")
    images.set_defaults(run=list_images, image_service=True)
    images.add_argument("-q", "--quiet", action="store_true", help="only image ids")
    images.add_argument("-f", "--filter", action="append", metavar="FILTER",
                        help="REF, reference=GLOB or REGEX, dangling=true|false, before=REF or "
                        "since=REF (repeatable; all must hold)")
    images.add_argument("--digests", action="store_true", help="show the DIGEST column")
    images.add_argument("--no-trunc", action="store_true", help="full image ids")
    images.add_argument("--pinned", action="store_true", help="show the PINNED column")
    images.add_argument("-v", "--verbose", action="store_true",
                        help="each image's details: id, names, digests, size, user, pinned")
    add_output_option(images)
    sub = images.add_subparsers(dest="images_command", metavar="SUBCOMMAND")
    importer = sub.add_parser(
        "import", help="import a docker-save or OCI archive, or a directory with --rootfs")
    importer.add_argument("source", help="archive file (- for stdin), or directory with --rootfs")
    importer.add_argument("name", nargs="?", help="NAME:TAG of the image made with --rootfs")
    importer.add_argument("--rootfs", action="store_true",
                          help="make a one-layer image of the directory SOURCE (docker import)")
    importer.add_argument("--base-name", default="",
                          help="repository for archive images that carry only a tag")
    importer.set_defaults(run=import_images, image_service=True)
    exporter = sub.add_parser("export", help="write images to an archive (OCI layout and "
                                             "docker-save in one)")
    exporter.add_argument("references", nargs="+", metavar="REF")
    exporter.add_argument("-o", "--output", required=True, help="archive file to write (- for "
                                                                "stdout)")
    exporter.set_defaults(run=export_images, image_service=True)

    pull = commands.add_parser("pull", help="pull an image")
    pull.add_argument("reference")
    pull.add_argument("--creds", help="USERNAME[:PASSWORD] for the registry")
    pull.add_argument("--auth", help="base64 of USERNAME:PASSWORD")
    pull.set_defaults(run=pull_image, image_service=True)
    rmi = commands.add_parser("rmi", help="remove images with all their tags")
    rmi.add_argument("references", nargs="*", metavar="REF")
    rmi.add_argument("-a", "--all", action="store_true",
                     help="remove every image except pinned ones")
    rmi.add_argument("-q", "--prune", action="store_true",
                     help="remove every image no container uses, except pinned ones")
    rmi.set_defaults(run=remove_images, image_service=True)
    inspect = commands.add_parser("inspecti", help="an image's status and config as JSON")
    inspect.add_argument("references", nargs="+", metavar="REF")
    add_output_option(inspect, table=False)
    inspect.set_defaults(run=inspect_image, image_service=True)


def _split(name: str) -> tuple[str, str]:
    repository, _, tag = name.rpartition(":")
    if "/" in tag or not repository:
        return name, "<none>"
    return repository, tag


def _size(size: int) -> str:
    value = float(size)
    for unit in ("B", "kB", "MB", "GB"):
        if value < 1000 or unit == "GB":
            return f"{value:.3g}{unit}"
        value /= 1000
    return f"{size}B"


def _image_filter(filters: list[str] | None,
                  images: list[cri_pb2.Image]) -> list[cri_pb2.Image]:
    """crictl's --filter: a bare reference, or reference=/dangling=/before=/since=."""
    by_created = {image.id: index for index, image in enumerate(images)}
    selected = list(images)
    for text in filters or ():
        key, separator, value = text.partition("=")
        if not separator:
            continue  # a bare reference: ListImages filtered it already
        if key == "reference":
            # crictl takes a regular expression; docker and ctr users write globs: take both
            try:
                pattern: re.Pattern[str] | None = re.compile(value)
            except re.error:
                pattern = None
            selected = [i for i in selected if any(
                fnmatch.fnmatch(name, value) or fnmatch.fnmatch(name.rpartition(":")[0], value)
                or (pattern is not None and pattern.search(name) is not None)
                for name in (*i.repo_tags, *i.repo_digests))]
        elif key == "dangling":
            if value not in ("true", "false"):
                raise UsageError(f"--filter {text!r}: dangling takes true or false")
            selected = [i for i in selected if (not i.repo_tags) == (value == "true")]
        elif key in ("before", "since"):
            anchor = [i for i in images if value in i.repo_tags or i.id.removeprefix(
                "sha256:").startswith(value.removeprefix("sha256:"))]
            if not anchor:
                raise UsageError(f"--filter {text!r}: no image {value}")
            mark = by_created[anchor[0].id]
            selected = [i for i in selected if (by_created[i.id] < mark) == (key == "before")
                        and i.id != anchor[0].id]
        else:
            raise UsageError(f"--filter {text!r}: use REF, reference=, dangling=, before= or "
                             "since=")
    return selected


def list_images(channel: grpc.Channel, args: argparse.Namespace) -> int:
    stub = cri_pb2_grpc.ImageServiceStub(channel)
    request = cri_pb2.ListImagesRequest()
    references = [f for f in args.filter or () if "=" not in f]
    if len(references) > 1:
        raise UsageError("give at most one bare reference to --filter")
    if references:
        request.filter.image.image = references[0]
    response = stub.ListImages(request, timeout=args.timeout)
    images = _image_filter(args.filter, list(response.images))
    if args.quiet:
        for image in images:
            print(image.id)
        return 0
    if args.output != "table":
        emit({"images": [to_dict(image) for image in images]}, args.output)
        return 0
    if args.verbose:
        for image in images:
            user = image.username or (str(image.uid.value) if image.HasField("uid") else "")
            describe([
                ("ID", image.id), *(("RepoTags", tag) for tag in image.repo_tags),
                *(("RepoDigests", digest) for digest in image.repo_digests),
                ("Size", str(image.size)), *([("Username", user)] if user else []),
                ("Pinned", str(image.pinned).lower()),
            ], [])
        return 0
    header = ["IMAGE", "TAG", *(["DIGEST"] if args.digests else []), "IMAGE ID", "SIZE",
              *(["PINNED"] if args.pinned else [])]
    rows = [tuple(header)]
    for image in images:
        image_id = image.id if args.no_trunc else image.id.removeprefix("sha256:")[:13]
        digests = {d.split("@")[0]: d.split("@")[-1] for d in image.repo_digests}
        names = list(image.repo_tags) or [
            d.split("@")[0] + ":<none>" for d in image.repo_digests] or ["<none>:<none>"]
        for name in names:
            repository, tag = _split(name)
            digest = digests.get(repository, "<none>")
            if not args.no_trunc and digest != "<none>":
                digest = digest.removeprefix("sha256:")[:13]
            rows.append((repository, tag, *([digest] if args.digests else []), image_id,
                         _size(image.size), *([str(image.pinned).lower()] if args.pinned
                                              else [])))
    widths = [max(len(row[i]) for row in rows) for i in range(len(header))]
    for row in rows:
        print("   ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True))
              .rstrip())
    return 0


def pull_image(channel: grpc.Channel, args: argparse.Namespace) -> int:
    stub = cri_pb2_grpc.ImageServiceStub(channel)
    request = cri_pb2.PullImageRequest(image=cri_pb2.ImageSpec(image=args.reference))
    if args.creds:
        username, _, password = args.creds.partition(":")
        request.auth.username = username
        request.auth.password = password
    if args.auth:
        request.auth.auth = args.auth
    call = stub.PullImage.future(request)
    show_pull(channel, args.reference, call)
    response = call.result()
    print(f"Image is up to date for {response.image_ref}")
    return 0


def remove_images(channel: grpc.Channel, args: argparse.Namespace) -> int:
    stub = cri_pb2_grpc.ImageServiceStub(channel)
    if (args.all or args.prune) == bool(args.references) or (args.all and args.prune):
        raise UsageError("rmi needs REF arguments, or one of --all and --prune")
    references: list[str] = list(args.references)
    if args.all or args.prune:
        used: set[str] = set()
        if args.prune:
            # which images containers use is the runtime's to say, at its own endpoint
            with open_channel(args.runtime_target, args.calls) as runtime:
                containers = cri_pb2_grpc.RuntimeServiceStub(runtime).ListContainers(
                    cri_pb2.ListContainersRequest(), timeout=args.timeout).containers
            used = {c.image_ref for c in containers} | {c.image.image for c in containers}
        for image in stub.ListImages(cri_pb2.ListImagesRequest(), timeout=args.timeout).images:
            if image.pinned:
                print(f"Kept pinned image {image.id}", file=sys.stderr)
            elif not used & {image.id, *image.repo_tags, *image.repo_digests}:
                references.append(image.id)
    for reference in references:
        stub.RemoveImage(cri_pb2.RemoveImageRequest(image=cri_pb2.ImageSpec(image=reference)),
                         timeout=args.timeout)
        print(f"Deleted: {reference}")
    return 0


def inspect_image(channel: grpc.Channel, args: argparse.Namespace) -> int:
    stub = cri_pb2_grpc.ImageServiceStub(channel)
    for reference in args.references:
        response = stub.ImageStatus(cri_pb2.ImageStatusRequest(
            image=cri_pb2.ImageSpec(image=reference), verbose=True), timeout=args.timeout)
        if not response.HasField("image"):
            print(f"crispctl: NOT_FOUND: no image {reference} (list what exists with "
                  "`crispctl images`, or pull it)", file=sys.stderr)
            return 1
        emit(with_info({"status": to_dict(response.image)}, response.info), args.output)
    return 0


def _file_chunks(path: str) -> Iterator[bytes]:
    source = sys.stdin.buffer if path == "-" else open(path, "rb")  # noqa: SIM115
    with source:
        while chunk := source.read(CHUNK):
            yield chunk


class _Collector:
    """A write-only file object that hands the tar stream out in pieces."""

    def __init__(self) -> None:
        self.parts: list[bytes] = []

    def write(self, data: bytes) -> int:
        self.parts.append(bytes(data))
        return len(data)

    def take(self) -> bytes:
        data = b"".join(self.parts)
        self.parts.clear()
        return data


def directory_tar_chunks(directory: Path) -> Iterator[bytes]:
    """A tar of ``directory``'s contents (names relative to it, owners and modes kept)."""
    collector = _Collector()
    with tarfile.open(fileobj=collector, mode="w|", format=tarfile.PAX_FORMAT) as tar:  # type: ignore[call-overload]
        for current, dirs, files in os.walk(directory):
            dirs.sort()
            for name in sorted(dirs) + sorted(files):
                path = Path(current) / name
                tar.add(path, arcname=str(path.relative_to(directory)), recursive=False)
                if sum(len(p) for p in collector.parts) >= CHUNK:
                    yield collector.take()
    yield collector.take()


def _import_requests(header: crisp_images_pb2.ImportHeader,
                     chunks: Iterator[bytes]) -> Iterator[crisp_images_pb2.ImportRequest]:
    yield crisp_images_pb2.ImportRequest(header=header)
    for chunk in chunks:
        if chunk:
            yield crisp_images_pb2.ImportRequest(data=chunk)


def import_images(channel: grpc.Channel, args: argparse.Namespace) -> int:
    stub = crisp_images_pb2_grpc.ImagesStub(channel)
    if args.rootfs:
        if not args.name:
            print("crispctl: images import --rootfs needs DIR and NAME:TAG", file=sys.stderr)
            return 2
        directory = Path(args.source)
        if not directory.is_dir():
            print(f"crispctl: {directory} is not a directory", file=sys.stderr)
            return 2
        header = crisp_images_pb2.ImportHeader(kind=crisp_images_pb2.ImportHeader.ROOTFS,
                                               name=args.name)
        chunks = directory_tar_chunks(directory)
    else:
        if args.name:
            print("crispctl: a NAME is only for --rootfs; use --base-name for archives",
                  file=sys.stderr)
            return 2
        header = crisp_images_pb2.ImportHeader(kind=crisp_images_pb2.ImportHeader.ARCHIVE,
                                               base_name=args.base_name)
        chunks = _file_chunks(args.source)
    response = stub.Import(_import_requests(header, chunks))
    for image in response.images:
        names = ", ".join(image.repo_tags) or "(no name)"
        print(f"imported {image.id} {names}")
    return 0


def export_images(channel: grpc.Channel, args: argparse.Namespace) -> int:
    stub = crisp_images_pb2_grpc.ImagesStub(channel)
    stream = stub.Export(crisp_images_pb2.ExportRequest(references=args.references))
    if args.output == "-":
        for response in stream:
            sys.stdout.buffer.write(response.data)
        sys.stdout.buffer.flush()
        return 0
    output = Path(args.output)
    partial = output.with_name(f".{output.name}.partial")
    try:
        with open(partial, "wb") as out:
            for response in stream:
                out.write(response.data)
        os.replace(partial, output)
    finally:
        partial.unlink(missing_ok=True)
    print(f"exported {len(args.references)} reference(s) to {output}")
    return 0
