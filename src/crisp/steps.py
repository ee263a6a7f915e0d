"""Wall time spent in each step of pod and container starts, summed since the daemon started.

The benchmark reads the sums (Status with verbose, key ``steps``) before and after its runs
to split a pod start into namespaces, CNI ADD, runc create, runc start and the state commits,
so the next gain is visible. Keys are a fixed set of step names (and the configured CNI
plugin types): the table stays tiny.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator
from contextlib import contextmanager

log = logging.getLogger(__name__)

_seconds: dict[str, float] = {}
_counts: dict[str, int] = {}


@contextmanager
def step(name: str) -> Iterator[None]:
    """Add the time the block takes to step ``name`` (also when it raises)."""
    began = time.perf_counter()
    try:
        yield
    finally:
        took = time.perf_counter() - began
        _seconds[name] = _seconds.get(name, 0.0) + took
        _counts[name] = _counts.get(name, 0) + 1
        log.debug("step %s: %.2f ms", name, took * 1000)


def totals() -> dict[str, dict[str, float]]:
    """Each step's count and summed seconds."""
    return {name: {"count": _counts[name], "seconds": seconds}
            for name, seconds in _seconds.items()}
