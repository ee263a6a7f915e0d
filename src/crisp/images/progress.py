"""What running pulls are doing, for logs and for clients that ask."""

from __future__ import annotations

import copy
import time
from dataclasses import dataclass, field


@dataclass
class LayerProgress:
    digest: str
    total: int
    done: int = 0
    state: str = "waiting"  # waiting, downloading, unpacking, done, exists


@dataclass
class PullProgress:
    """One pull in flight: its layers and when it last moved."""

    reference: str
    started: float = field(default_factory=time.monotonic)
    layers: dict[str, LayerProgress] = field(default_factory=dict)

    def add(self, digest: str, total: int) -> LayerProgress:
        return self.layers.setdefault(digest, LayerProgress(digest, total))

    def snapshot(self) -> PullProgress:
        """A copy that the pull no longer changes, for a client to read at its own pace."""
        return copy.deepcopy(self)

    def position(self) -> tuple[tuple[str, int, str], ...]:
        """Where the pull stands: equal positions mean nothing moved."""
        return tuple((layer.digest, layer.done, layer.state) for layer in self.layers.values())

    def summary(self) -> str:
        parts = [
            f"{layer.digest[7:19]} {layer.state} {layer.done}/{layer.total}"
            for layer in self.layers.values()
        ]
        done = sum(layer.done for layer in self.layers.values())
        total = sum(layer.total for layer in self.layers.values())
        return f"pulling {self.reference}: {done}/{total} bytes [{', '.join(parts)}]"
