"""crisp: a Kubernetes container runtime speaking CRI v1."""

import os
import sys


def _installed_version() -> str:
    """The version of the installed distribution, from its ``crisp-<version>.dist-info``.

    importlib.metadata would do the same but brings email, zipfile and csv along: about 3 MiB
    of the daemon's RSS for one string.
    """
    for entry in sys.path:
        try:
            names = os.listdir(entry or ".")
        except OSError:
            continue
        for name in names:
            if name.startswith("crisp-") and name.endswith(".dist-info"):
                return name[len("crisp-"):-len(".dist-info")]
    return "0.0.0+unknown"  # running from a source tree that was never installed


__version__ = _installed_version()
