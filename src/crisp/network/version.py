"""CNI specification versions: which crisp speaks and what each one allows.

crisp speaks the versions whose results carry the rich (0.3.0+) result type. CHECK and a
prevResult on DEL came with 0.4.0; STATUS and the ``cniVersions`` list with 1.1.0.
"""

from __future__ import annotations

from collections.abc import Iterable

Version = tuple[int, int, int]

SUPPORTED: tuple[str, ...] = ("0.3.0", "0.3.1", "0.4.0", "1.0.0", "1.1.0")
"""Versions crisp can run a network config at, oldest first."""

CHECK_SINCE: Version = (0, 4, 0)
DEL_PREV_RESULT_SINCE: Version = (0, 4, 0)
STATUS_SINCE: Version = (1, 1, 0)


def parse(text: str) -> Version:
    """"1.0.0" -> (1, 0, 0); ValueError for anything that is not major.minor.patch."""
    parts = text.split(".")
    if len(parts) != 3 or not all(part.isdigit() for part in parts):
        raise ValueError(f"{text!r} is not a CNI version (major.minor.patch)")
    return int(parts[0]), int(parts[1]), int(parts[2])


def is_supported(text: str) -> bool:
    return text in SUPPORTED


def at_least(text: str, minimum: Version) -> bool:
    return parse(text) >= minimum


def highest_common(candidates: Iterable[str], *allowed: Iterable[str]) -> str | None:
    """The highest of ``candidates`` that crisp and every ``allowed`` set support, if any."""
    usable = [v for v in candidates if is_supported(v)]
    for versions in allowed:
        accepted = set(versions)
        usable = [v for v in usable if v in accepted]
    return max(usable, key=parse, default=None)
