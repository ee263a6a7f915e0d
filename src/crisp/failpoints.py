"""Named points inside multi-step operations where tests make the daemon die, as a crash would.

``CRISP_FAILPOINTS`` (a comma-separated list of names, read once at start) makes the daemon
SIGKILL itself on reaching one of them. Unset, as in production, a failpoint costs one set
lookup. The crash-safety tests use them to kill crisp inside each operation and check that a
restart finishes or rolls back what was half done.
"""

from __future__ import annotations

import os
import signal

_ARMED = frozenset(filter(None, os.environ.get("CRISP_FAILPOINTS", "").split(",")))


def failpoint(name: str) -> None:
    if name in _ARMED:
        os.kill(os.getpid(), signal.SIGKILL)
