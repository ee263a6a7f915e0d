"""The CRI ImageService and crisp's image extension service: validate, call, translate."""

from __future__ import annotations

import json
import time
from collections.abc import AsyncIterator, Callable
from typing import Any

import grpc

from crisp.api import cri_pb2, cri_pb2_grpc, crisp_images_pb2, crisp_images_pb2_grpc
from crisp.errors import FailedPrecondition, InvalidArgument
from crisp.images import Credentials, Image, ImageService, PullProgress
from crisp.images.service import FilesystemUsage
from crisp.server.unimplemented import fill_unimplemented

Context = grpc.aio.ServicerContext[Any, Any]


def _spec_image(spec: cri_pb2.ImageSpec | None, rpc: str) -> str:
    if spec is None or not spec.image:
        raise InvalidArgument(f"{rpc} needs image.image (the image reference)")
    return str(spec.image)


def _credentials(auth: cri_pb2.AuthConfig) -> Credentials | None:
    credentials = Credentials(
        username=auth.username, password=auth.password, auth=auth.auth,
        identity_token=auth.identity_token, registry_token=auth.registry_token,
        server_address=auth.server_address,
    )
    return None if credentials.secrets() == Credentials() else credentials


def to_cri_image(image: Image) -> cri_pb2.Image:
    uid, username = image.uid_and_username()
    message = cri_pb2.Image(
        id=image.id,
        repo_tags=image.repo_tags,
        repo_digests=image.repo_digests,
        size=image.size,
        username=username,
        spec=cri_pb2.ImageSpec(image=image.id),
        pinned=image.pinned,
    )
    if uid is not None:
        message.uid.value = uid
    return message


def _fs_usage(usage: FilesystemUsage) -> cri_pb2.FilesystemUsage:
    return cri_pb2.FilesystemUsage(
        timestamp=usage.timestamp_ns,
        fs_id=cri_pb2.FilesystemIdentifier(mountpoint=usage.mountpoint),
        used_bytes=cri_pb2.UInt64Value(value=usage.used_bytes),
        inodes_used=cri_pb2.UInt64Value(value=usage.inodes_used),
    )


class ImageServicer(cri_pb2_grpc.ImageServiceServicer):
    """CRI v1 ImageService over :class:`crisp.images.ImageService`."""

    def __init__(self, images: ImageService,
                 volume_users: Callable[[str], list[str]] | None = None):
        self.images = images
        self.volume_users = volume_users

    async def ListImages(
        self, request: cri_pb2.ListImagesRequest, context: Context
    ) -> cri_pb2.ListImagesResponse:
        wanted = request.filter.image.image if request.HasField("filter") else ""
        images = await self.images.list(wanted or None)
        return cri_pb2.ListImagesResponse(images=[to_cri_image(i) for i in images])

    async def ImageStatus(
        self, request: cri_pb2.ImageStatusRequest, context: Context
    ) -> cri_pb2.ImageStatusResponse:
        reference = _spec_image(request.image if request.HasField("image") else None,
                                "ImageStatus")
        image = await self.images.status(reference)
        if image is None:
            return cri_pb2.ImageStatusResponse()
        info: dict[str, str] = {}
        if request.verbose:
            details = {
                "id": image.id,
                "manifestDigest": image.manifest_digest,
                "indexDigest": image.index_digest,
                "chainID": image.chain_ids[-1] if image.chain_ids else "",
                "imageSpec": await self.images.config_document(image),
            }
            info["info"] = json.dumps(details)
        return cri_pb2.ImageStatusResponse(image=to_cri_image(image), info=info)

    async def PullImage(
        self, request: cri_pb2.PullImageRequest, context: Context
    ) -> cri_pb2.PullImageResponse:
        reference = _spec_image(request.image if request.HasField("image") else None,
                                "PullImage")
        credentials = _credentials(request.auth) if request.HasField("auth") else None
        image = await self.images.pull(reference, credentials)
        return cri_pb2.PullImageResponse(image_ref=image.id)

    async def RemoveImage(
        self, request: cri_pb2.RemoveImageRequest, context: Context
    ) -> cri_pb2.RemoveImageResponse:
        reference = _spec_image(request.image if request.HasField("image") else None,
                                "RemoveImage")
        image = await self.images.status(reference) if self.volume_users else None
        users = self.volume_users(image.id) if image and self.volume_users else []
        if image is not None and users:
            raise FailedPrecondition(
                f"image {reference!r} ({image.id}) is mounted as an image volume by "
                f"container(s) {', '.join(users)}: remove those containers first"
            )
        await self.images.remove(reference)
        return cri_pb2.RemoveImageResponse()

    async def ImageFsInfo(
        self, request: cri_pb2.ImageFsInfoRequest, context: Context
    ) -> cri_pb2.ImageFsInfoResponse:
        usage = await self.images.filesystem_usage()
        return cri_pb2.ImageFsInfoResponse(
            image_filesystems=[_fs_usage(usage.images)],
            container_filesystems=[_fs_usage(usage.containers)],
        )


class CrispImagesServicer(crisp_images_pb2_grpc.ImagesServicer):
    """crisp's image extension service (crisp.images.v1): import, export, pull progress."""

    def __init__(self, images: ImageService,
                 volume_users: Callable[[str], list[str]] | None = None):
        self.images = images
        self.volume_users = volume_users

    async def Import(
        self, request_iterator: AsyncIterator[crisp_images_pb2.ImportRequest], context: Context
    ) -> crisp_images_pb2.ImportResponse:
        first = await anext(aiter(request_iterator), None)
        if first is None or not first.HasField("header"):
            raise InvalidArgument("Import's first message must carry the header")
        header = first.header
        rootfs_name = ""
        if header.kind == crisp_images_pb2.ImportHeader.ROOTFS:
            if not header.name:
                raise InvalidArgument("a rootfs import needs header.name, e.g. example.com/x:1")
            rootfs_name = header.name

        async def chunks() -> AsyncIterator[bytes]:
            if first.data:
                yield bytes(first.data)
            async for request in request_iterator:
                if request.HasField("header"):
                    raise InvalidArgument("only Import's first message may carry a header")
                yield bytes(request.data)

        imported = await self.images.import_stream(chunks(), rootfs_name=rootfs_name,
                                                   base_name=header.base_name)
        return crisp_images_pb2.ImportResponse(images=[
            crisp_images_pb2.ImportedImage(id=i.id, repo_tags=i.repo_tags,
                                           repo_digests=i.repo_digests)
            for i in imported
        ])

    async def Export(
        self, request: crisp_images_pb2.ExportRequest, context: Context
    ) -> AsyncIterator[crisp_images_pb2.ExportResponse]:
        async for chunk in self.images.export_stream(list(request.references)):
            yield crisp_images_pb2.ExportResponse(data=chunk)

    async def PullProgress(
        self, request: crisp_images_pb2.PullProgressRequest, context: Context
    ) -> crisp_images_pb2.PullProgressResponse:
        return crisp_images_pb2.PullProgressResponse(
            pulls=[_progress(pull) for pull in self.images.progress()])

    async def WatchPull(
        self, request: crisp_images_pb2.WatchPullRequest, context: Context
    ) -> AsyncIterator[crisp_images_pb2.PullProgress]:
        if not request.reference:
            raise InvalidArgument("WatchPull needs reference (the image PullImage is given)")
        async for pull in self.images.watch_pull(request.reference):
            yield _progress(pull)


def _progress(pull: PullProgress) -> crisp_images_pb2.PullProgress:
    return crisp_images_pb2.PullProgress(
        reference=pull.reference,
        seconds=time.monotonic() - pull.started,
        layers=[crisp_images_pb2.LayerProgress(digest=layer.digest, total_bytes=layer.total,
                                               done_bytes=layer.done, state=layer.state)
                for layer in pull.layers.values()],
    )

fill_unimplemented(
    ImageServicer, cri_pb2_grpc.ImageServiceServicer,
    cri_pb2.DESCRIPTOR.services_by_name["ImageService"],
)
fill_unimplemented(
    CrispImagesServicer, crisp_images_pb2_grpc.ImagesServicer,
    crisp_images_pb2.DESCRIPTOR.services_by_name["Images"],
)
