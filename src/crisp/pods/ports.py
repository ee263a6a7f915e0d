"""What the pod lifecycle needs from the image, storage and network packages.

Kept as protocols so that the lifecycle code states its needs in its own terms; the
adapters in :mod:`crisp.pods.adapters` fit the real services to them.
"""

from __future__ import annotations

from pathlib import Path
from typing import Protocol

from crisp.pods.model import ImageRuntimeConfig, Sandbox, UserNamespace


class ImageSource(Protocol):
    async def runtime_config(self, reference: str) -> ImageRuntimeConfig:
        """The image's config and layer dirs; NotFound when the image is not present."""

    async def ensure(self, reference: str) -> ImageRuntimeConfig:
        """Like :meth:`runtime_config`, pulling the image first if it is not present."""


class RootfsStore(Protocol):
    async def prepare(self, key: str, lower_dirs: list[str],
                      userns: UserNamespace | None = None) -> Path:
        """Mount a writable overlay of ``lower_dirs`` for ``key``; return its path.

        With a POD ``userns`` the files are owned by the mapped ids, so the pod's root owns
        its rootfs."""

    async def unmount(self, key: str) -> None:
        """Unmount the rootfs of ``key``, keeping its upper dir; idempotent."""

    async def remove(self, key: str) -> None:
        """Unmount and delete everything of ``key``; idempotent."""

    async def keys(self) -> list[str]:
        """Every snapshot key there is."""

    async def usage(self, key: str) -> tuple[int, int]:
        """Bytes and inodes the writable layer of ``key`` holds; NotFound if it has none."""

    async def usages(self, keys: list[str], max_age: float) -> dict[str, tuple[int, int]]:
        """`usage` of many keys, figures up to ``max_age`` s old; keys without one left out."""


class PodNetwork(Protocol):
    async def setup(self, sandbox: Sandbox, netns_path: str) -> list[str]:
        """Attach the pod's network namespace; return its IPs, primary first."""

    async def teardown(self, sandbox: Sandbox, netns_path: str) -> None:
        """Detach the pod's network; idempotent, works after a restart."""
