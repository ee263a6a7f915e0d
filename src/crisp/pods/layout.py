"""Where crisp keeps each pod's and container's files, under the configured roots."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from crisp.oci.conmon import ContainerFiles


@dataclass(frozen=True)
class Layout:
    root_dir: Path
    run_dir: Path

    def pod_dir(self, sandbox_id: str) -> Path:
        """Persistent: hostname, hosts, resolv.conf and the shm mount point."""
        return self.root_dir / "pods" / sandbox_id

    def pod_run_dir(self, sandbox_id: str) -> Path:
        return self.run_dir / "pods" / sandbox_id

    def namespace_dir(self, sandbox_id: str) -> Path:
        return self.pod_run_dir(sandbox_id) / "ns"

    def bundle(self, container_id: str) -> Path:
        return self.run_dir / "containers" / container_id

    @property
    def exit_dir(self) -> Path:
        return self.run_dir / "exits"

    @property
    def socket_dir(self) -> Path:
        return self.run_dir / "attach"

    def files(self, container_id: str) -> ContainerFiles:
        bundle = self.bundle(container_id)
        return ContainerFiles(
            bundle=bundle, exit_dir=self.exit_dir, persist_dir=bundle / "persist",
            socket_dir=self.socket_dir, container_id=container_id,
        )
