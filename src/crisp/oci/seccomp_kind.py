"""Which seccomp profile a container asks for: all a daemon needs until it builds one.

The profiles themselves (crisp.oci.seccomp, 0.9 MiB of tables and code) load when the first
container with a filter is created.
"""

from __future__ import annotations

import enum

from crisp.errors import InvalidArgument


class SeccompKind(enum.Enum):
    """CRI's SecurityProfile.ProfileType for seccomp."""

    RUNTIME_DEFAULT = "RuntimeDefault"
    UNCONFINED = "Unconfined"
    LOCALHOST = "Localhost"


def parse_legacy_profile_path(value: str) -> tuple[SeccompKind, str]:
    """The deprecated string form (seccomp_profile_path): "runtime/default", "docker/default",
    "unconfined", "localhost/<absolute path>"; "" is Unconfined, as CRI defines it."""
    if value in ("", "unconfined"):
        return SeccompKind.UNCONFINED, ""
    if value in ("runtime/default", "docker/default"):
        return SeccompKind.RUNTIME_DEFAULT, ""
    if value.startswith("localhost/"):
        return SeccompKind.LOCALHOST, value.removeprefix("localhost/")
    raise InvalidArgument(
        f"seccomp profile {value!r} is unknown: use \"runtime/default\", \"unconfined\" or "
        '"localhost/<absolute path>"'
    )
