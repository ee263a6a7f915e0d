"""The failpoints, re-exported where pods/ has always imported them (see crisp.failpoints)."""

from crisp.failpoints import failpoint

__all__ = ["failpoint"]
