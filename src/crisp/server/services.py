"""The domain services one daemon runs, built once from the config and shared by the servicers.

This is crisp's composition root: the only place that knows which domain object needs which
other one. Servicers reach the services through it and never build their own.
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
from dataclasses import dataclass
from pathlib import Path

from crisp.config import LiveConfig
from crisp.errors import InvalidArgument
from crisp.state import Database, Settings

log = logging.getLogger(__name__)


@dataclass
class Services:
    """Everything the servicers call into."""

    live: LiveConfig
    db: Database
    settings: Settings

    @classmethod
    async def open(cls, live: LiveConfig) -> Services:
        """Open the state and build the domain services of a daemon about to serve."""
        config = live.current
        root = Path(config.root_dir)
        await asyncio.to_thread(root.mkdir, parents=True, exist_ok=True, mode=0o711)
        db = await Database.open(root / "crisp.db")
        return cls(live=live, db=db, settings=Settings(db))

    async def network_status(self) -> tuple[bool, str, str]:
        """Whether pods can get networking: (ready, reason, message)."""
        return False, "NetworkPluginNotReady", "CNI support is not built into this crisp yet"

    async def update_pod_cidr(self, cidr: str) -> None:
        """Record the node's pod CIDR(s) from the kubelet, comma-separated for dual stack."""
        for part in cidr.split(","):
            try:
                ipaddress.ip_network(part.strip())
            except ValueError as error:
                raise InvalidArgument(f"pod CIDR {cidr!r} is not valid: {error}") from error
        await self.settings.set("pod_cidr", cidr)
        log.info("pod CIDR is now %s", cidr)

    async def close(self) -> None:
        await self.db.close()
