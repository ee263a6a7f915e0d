"""The on-disk record of each pod's network attachment.

An attachment is written before the first plugin runs (the intent) and again with the final
result after the last one; it holds the exact network config, arguments and capability
values used, so DEL runs the same plugins with the same input after a crisp restart, a
crash half-way through ADD, or a change of the config in conf_dir. Writes are atomic.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from crisp.durable import remove_durably, write_atomic
from crisp.errors import FailedPrecondition, InvalidArgument
from crisp.network.conflist import NetworkConfig

_FORMAT = "crisp-cni-attachment-v1"
_SAFE_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.\-]{0,254}$")


@dataclass(frozen=True)
class Attachment:
    """One pod's attachment to its network, as it was (or is being) set up."""

    sandbox_id: str
    netns: str
    ifname: str
    cni_args: str
    runtime_config: dict[str, Any]
    network: NetworkConfig
    result: dict[str, Any] | None = None
    """The final ADD result; None while ADD runs, or if it never finished."""
    failed_at: int | None = None
    """After a failed ADD: the index of the plugin that failed (the ones before it succeeded)."""

    def to_json(self) -> dict[str, Any]:
        return {
            "kind": _FORMAT,
            "sandboxId": self.sandbox_id,
            "netns": self.netns,
            "ifName": self.ifname,
            "cniArgs": self.cni_args,
            "runtimeConfig": self.runtime_config,
            "network": self.network.to_json(),
            "result": self.result,
            "failedAt": self.failed_at,
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Attachment:
        if data.get("kind") != _FORMAT:
            raise ValueError(f"is not a {_FORMAT} record")
        result = data.get("result")
        failed_at = data.get("failedAt")
        return cls(
            sandbox_id=str(data["sandboxId"]),
            netns=str(data["netns"]),
            ifname=str(data["ifName"]),
            cni_args=str(data["cniArgs"]),
            runtime_config=dict(data["runtimeConfig"]),
            network=NetworkConfig.from_json(data["network"]),
            result=dict(result) if isinstance(result, dict) else None,
            failed_at=failed_at if isinstance(failed_at, int) else None,
        )


def check_sandbox_id(sandbox_id: str) -> str:
    """Sandbox ids name cache files and go to plugins as CNI_CONTAINERID: keep them plain."""
    if not _SAFE_ID.match(sandbox_id):
        raise InvalidArgument(
            f"sandbox id {sandbox_id!r} must be letters, digits, '_', '.' or '-' "
            "(starting with a letter or digit)"
        )
    return sandbox_id


class AttachmentCache:
    """Attachment records, one JSON file per sandbox in ``directory``."""

    def __init__(self, directory: Path):
        self.directory = directory

    def _path(self, sandbox_id: str) -> Path:
        return self.directory / f"{check_sandbox_id(sandbox_id)}.json"

    async def save(self, attachment: Attachment) -> None:
        data = json.dumps(attachment.to_json(), indent=1, sort_keys=True).encode()
        await asyncio.to_thread(write_atomic, self._path(attachment.sandbox_id), data, 0o600)

    async def load(self, sandbox_id: str) -> Attachment | None:
        path = self._path(sandbox_id)
        try:
            raw = await asyncio.to_thread(path.read_bytes)
        except FileNotFoundError:
            return None
        try:
            return Attachment.from_json(json.loads(raw))
        except (ValueError, KeyError, TypeError) as error:
            raise FailedPrecondition(
                f"the network attachment record {path} is unreadable ({error}); inspect it, "
                "release the pod's IP by hand if needed, then delete the file"
            ) from None

    async def remove(self, sandbox_id: str) -> None:
        path = self._path(sandbox_id)
        await asyncio.to_thread(remove_durably, path)

    async def sandbox_ids(self) -> list[str]:
        """Every sandbox with a record: set up, or interrupted while being set up."""
        def scan() -> list[str]:
            try:
                names = os.listdir(self.directory)
            except FileNotFoundError:
                return []
            return sorted(n[:-5] for n in names if n.endswith(".json") and _SAFE_ID.match(n[:-5]))

        return await asyncio.to_thread(scan)
