"""crisp: a Kubernetes container runtime speaking CRI v1."""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("crisp")
except PackageNotFoundError:  # running from a source tree that was never installed
    __version__ = "0.0.0+unknown"
